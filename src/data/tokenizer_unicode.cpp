// Unicode-version corrections that make PCRE2 and utf8proc agree with HF `tokenizers`.
#include "data/tokenizer_unicode.h"

#include <utf8proc.h>

#include <cstdint>
#include <cstdio>
#include <vector>

namespace deltatron::data::tok {

namespace {

constexpr char32_t kMaxCodePoint = 0x10FFFF;

// Bit per code point: nfc_inert_in_hf.
std::vector<uint64_t> build_nfc_inert() {
  std::vector<uint64_t> bits((kMaxCodePoint + 64) / 64, 0);
  size_t r = 0;  // walks kAssignedByUnicode9 alongside cp
  for (char32_t cp = 0; cp <= kMaxCodePoint; ++cp) {
    while (r < kAssignedByUnicode9Size && kAssignedByUnicode9[r].last < cp) ++r;
    if (r < kAssignedByUnicode9Size && kAssignedByUnicode9[r].first <= cp) continue;
    const utf8proc_property_t* p = utf8proc_get_property(static_cast<utf8proc_int32_t>(cp));
    const bool canonical_decomposition = p->decomp_seqindex != UINT16_MAX && p->decomp_type == 0;
    if (p->combining_class != 0 || canonical_decomposition || p->comb_index != UINT16_MAX) {
      bits[cp / 64] |= uint64_t{1} << (cp % 64);
    }
  }
  return bits;
}

// Oniguruma-compatible replacements (see the header).
constexpr const char* kWhiteSpace = R"(\t\n\x0B\f\r\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A})"
                                    R"(\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";
constexpr const char* kHexDigit = "0-9a-fA-F";

// The extra code points of `\p{name}`, as class items ("" when there are none).
std::string category_extra(std::string_view name) {
  std::string items;
  for (size_t k = 0; k < kRegexCategoryExtraSize; ++k) {
    const CategoryExtra& e = kRegexCategoryExtra[k];
    const std::string_view cat = e.category;
    const bool match = name.size() == 1 ? cat[0] == name[0] : cat == name;
    if (!match) continue;
    for (size_t i = 0; i < e.size; ++i) {
      char buf[40];
      const auto [first, last] = e.ranges[i];
      if (first == last) {
        std::snprintf(buf, sizeof(buf), "\\x{%X}", static_cast<unsigned>(first));
      } else {
        std::snprintf(buf, sizeof(buf), "\\x{%X}-\\x{%X}", static_cast<unsigned>(first),
                      static_cast<unsigned>(last));
      }
      items += buf;
    }
  }
  return items;
}

}  // namespace

bool nfc_inert_in_hf(char32_t cp) {
  static const std::vector<uint64_t> bits = build_nfc_inert();
  return cp <= kMaxCodePoint && ((bits[cp / 64] >> (cp % 64)) & 1);
}

std::string rewrite_oniguruma_pattern(std::string_view p) {
  std::string out;
  out.reserve(p.size() * 2);
  int class_depth = 0;  // > 0 inside [...] (Oniguruma allows nesting)
  // Emits a class of `items`, or the items alone inside a class; `negate` only outside.
  auto emit = [&](const std::string& items, bool negate) {
    if (class_depth > 0) {
      out += items;
    } else {
      out += negate ? "[^" : "[";
      out += items;
      out += "]";
    }
  };
  size_t i = 0;
  while (i < p.size()) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char d = p[i + 1];
      if (d == 'p' || d == 'P') {
        // \p{Name} or \pX
        size_t end = i + 3;
        std::string_view name;
        if (i + 2 < p.size() && p[i + 2] == '{') {
          const size_t close = p.find('}', i + 3);
          end = close == std::string_view::npos ? p.size() : close + 1;
          name = p.substr(i + 3, end - i - 4);
        } else if (i + 2 < p.size()) {
          name = p.substr(i + 2, 1);
        }
        const std::string_view verbatim = p.substr(i, end - i);
        const std::string extra = name.empty() || name[0] == '^' ? "" : category_extra(name);
        if (extra.empty() || (d == 'P' && class_depth > 0)) {
          out += verbatim;
        } else {
          emit("\\p{" + std::string(name) + "}" + extra, d == 'P');
        }
        i = end;
        continue;
      }
      if (d == 's' || d == 'S') {
        if (d == 'S' && class_depth > 0) {
          out += "\\S";
        } else {
          emit(kWhiteSpace, d == 'S');
        }
        i += 2;
        continue;
      }
      if (d == 'd' || d == 'D') {
        if (d == 'D' && class_depth > 0) {
          out += "\\D";
        } else {
          emit("\\p{Nd}" + category_extra("Nd"), d == 'D');
        }
        i += 2;
        continue;
      }
      if (d == 'h' || d == 'H') {
        if (d == 'H' && class_depth > 0) {
          out += "\\H";
        } else {
          emit(kHexDigit, d == 'H');
        }
        i += 2;
        continue;
      }
      out += p.substr(i, 2);  // any other escape, including \\ \[ \]
      i += 2;
      continue;
    }
    if (c == '[') {
      if (class_depth > 0 && i + 1 < p.size() && p[i + 1] == ':') {
        const size_t close = p.find(":]", i + 2);  // POSIX class [:alpha:]
        const size_t end = close == std::string_view::npos ? p.size() : close + 2;
        out += p.substr(i, end - i);
        i = end;
        continue;
      }
      ++class_depth;
      out += c;
      ++i;
      // A ']' right after '[' or '[^' is a literal.
      if (i < p.size() && p[i] == '^') out += p[i++];
      if (i < p.size() && p[i] == ']') out += p[i++];
      continue;
    }
    if (c == ']' && class_depth > 0) --class_depth;
    out += c;
    ++i;
  }
  return out;
}

}  // namespace deltatron::data::tok
