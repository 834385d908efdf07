// Text helpers of the tokenizer: UTF-8 repair, NFC, the GPT-2 byte<->char map, char classes.
#include "data/tokenizer_text.h"

#include <utf8proc.h>

#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "data/tokenizer_unicode.h"

namespace deltatron::data::tok {

namespace {

// Length of the well-formed sequence starting at s[i], or -(length of its maximal subpart) when
// it is ill-formed (always >= 1 byte, so the caller makes progress).
int64_t sequence_length(std::string_view s, size_t i) {
  const auto b = static_cast<uint8_t>(s[i]);
  if (b < 0x80) return 1;
  int need = 0;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the next continuation byte
  if (b >= 0xC2 && b <= 0xDF) {
    need = 1;
  } else if (b == 0xE0) {
    need = 2, lo = 0xA0;  // no overlongs
  } else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) {
    need = 2;
  } else if (b == 0xED) {
    need = 2, hi = 0x9F;  // no surrogates
  } else if (b == 0xF0) {
    need = 3, lo = 0x90;  // no overlongs
  } else if (b >= 0xF1 && b <= 0xF3) {
    need = 3;
  } else if (b == 0xF4) {
    need = 3, hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return -1;  // continuation byte, C0, C1, F5..FF: never a lead byte
  }
  size_t j = i + 1;
  for (int k = 0; k < need; ++k, ++j) {
    if (j >= s.size()) return -static_cast<int64_t>(j - i);
    const auto c = static_cast<uint8_t>(s[j]);
    if (c < lo || c > hi) return -static_cast<int64_t>(j - i);
    lo = 0x80, hi = 0xBF;
  }
  return static_cast<int64_t>(j - i);
}

// Appends NFC(s) computed by utf8proc (its Unicode tables).
void append_nfc_utf8proc(std::string_view s, std::string& out) {
  if (s.empty()) return;
  utf8proc_uint8_t* dst = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(
      reinterpret_cast<const utf8proc_uint8_t*>(s.data()), static_cast<utf8proc_ssize_t>(s.size()),
      &dst, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) core::fail("tokenizer: NFC normalisation failed: ", utf8proc_errmsg(n));
  out.append(reinterpret_cast<const char*>(dst), static_cast<size_t>(n));
  std::free(dst);
}

}  // namespace

bool is_valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    if (static_cast<uint8_t>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const int64_t len = sequence_length(s, i);
    if (len < 0) return false;
    i += static_cast<size_t>(len);
  }
  return true;
}

void append_utf8_lossy(std::string_view s, std::string& out) {
  out.reserve(out.size() + s.size());
  size_t run = 0;  // start of the current run of well-formed bytes
  size_t i = 0;
  while (i < s.size()) {
    if (static_cast<uint8_t>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const int64_t len = sequence_length(s, i);
    if (len > 0) {
      i += static_cast<size_t>(len);
      continue;
    }
    out.append(s.substr(run, i - run));
    out.append("\xEF\xBF\xBD");  // U+FFFD
    i += static_cast<size_t>(-len);
    run = i;
  }
  out.append(s.substr(run));
}

char32_t next_code_point(std::string_view s, size_t& i) {
  const auto b0 = static_cast<uint8_t>(s[i]);
  if (b0 < 0x80) {
    i += 1;
    return b0;
  }
  auto cont = [&](size_t k) {
    return static_cast<char32_t>(static_cast<uint8_t>(s[i + k]) & 0x3F);
  };
  char32_t cp;
  if (b0 < 0xE0) {
    cp = (static_cast<char32_t>(b0 & 0x1F) << 6) | cont(1);
    i += 2;
  } else if (b0 < 0xF0) {
    cp = (static_cast<char32_t>(b0 & 0x0F) << 12) | (cont(1) << 6) | cont(2);
    i += 3;
  } else {
    cp = (static_cast<char32_t>(b0 & 0x07) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3);
    i += 4;
  }
  return cp;
}

void append_utf8(char32_t cp, std::string& out) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

void nfc(std::string_view s, std::string& out) {
  // Every byte below 0xCC is ASCII, a continuation byte, or the lead byte of U+0080..U+02FF.
  // Such code points are NFC_Quick_Check=Yes with combining class 0 and nothing composes with
  // them unless a combining mark (>= U+0300) follows, so the text is already normalised.
  bool below_0300 = true;
  for (char c : s) {
    if (static_cast<uint8_t>(c) >= 0xCC) {
      below_0300 = false;
      break;
    }
  }
  if (below_0300) {
    out.assign(s);
    return;
  }
  // HF's NFC knows Unicode 9.0 only: code points it treats as plain starters are copied as they
  // are, and utf8proc normalises the text between them (a starter that neither reorders nor
  // composes is a normalisation boundary, so this equals normalising with the old tables).
  out.clear();
  size_t segment = 0, i = 0;
  while (i < s.size()) {
    const size_t at = i;
    const char32_t cp = next_code_point(s, i);
    if (cp >= 0x300 && nfc_inert_in_hf(cp)) {
      append_nfc_utf8proc(s.substr(segment, at - segment), out);
      out.append(s.substr(at, i - at));
      segment = i;
    }
  }
  append_nfc_utf8proc(s.substr(segment), out);
}

const ByteLevelAlphabet& byte_level_alphabet() {
  static const ByteLevelAlphabet alphabet = [] {
    ByteLevelAlphabet a{};
    a.byte_of_char.fill(-1);
    auto printable = [](int b) {
      return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    };
    int shifted = 0;  // bytes outside the printable set take U+0100, U+0101, ... in byte order
    for (int b = 0; b < 256; ++b) {
      const char32_t cp =
          printable(b) ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + shifted++);
      a.char_of_byte[b] = cp;
      a.byte_of_char[cp] = static_cast<int16_t>(b);
      append_utf8(cp, a.utf8_of_byte[b]);
    }
    return a;
  }();
  return alphabet;
}

void append_byte_level(std::string_view s, std::string& out) {
  const ByteLevelAlphabet& a = byte_level_alphabet();
  for (char c : s) out.append(a.utf8_of_byte[static_cast<uint8_t>(c)]);
}

bool append_bytes_of_byte_level(std::string_view token, std::string& out) {
  const ByteLevelAlphabet& a = byte_level_alphabet();
  const size_t start = out.size();
  size_t i = 0;
  while (i < token.size()) {
    const char32_t cp = next_code_point(token, i);
    if (cp >= 512 || a.byte_of_char[cp] < 0) {
      out.resize(start);
      return false;
    }
    out.push_back(static_cast<char>(a.byte_of_char[cp]));
  }
  return true;
}

bool is_white_space(char32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  if (cp < 0x85) return false;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

bool is_word_char(char32_t cp) {
  if (cp < 0x80) {
    return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9') ||
           cp == '_';
  }
  if (cp == 0x200C || cp == 0x200D) return true;  // Join_Control
  if ((cp >= 0x24B6 && cp <= 0x24E9) || (cp >= 0x1F130 && cp <= 0x1F149) ||
      (cp >= 0x1F150 && cp <= 0x1F169) || (cp >= 0x1F170 && cp <= 0x1F189)) {
    return true;  // Other_Alphabetic symbols: circled / squared Latin letters
  }
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(cp))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

}  // namespace deltatron::data::tok
