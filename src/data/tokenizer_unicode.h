// Unicode-version corrections that make PCRE2 and utf8proc agree with HF `tokenizers`.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace deltatron::data::tok {

struct CodeRange {
  char32_t first, last;  // inclusive
};
struct CategoryExtra {
  const char* category;  // two-letter general category, e.g. "Lo"
  const CodeRange* ranges;
  size_t size;
};

// Generated tables (tokenizer_unicode_tables.cpp, by tools/tokenizer/make_unicode_tables.py).
extern const CodeRange kAssignedByUnicode9[];
extern const size_t kAssignedByUnicode9Size;
extern const CategoryExtra kRegexCategoryExtra[];
extern const size_t kRegexCategoryExtraSize;

// True for code points that HF's NFC (Unicode 9.0 tables) leaves alone but utf8proc would
// reorder, decompose or compose: NFC-relevant in utf8proc and assigned after Unicode 9.0.
bool nfc_inert_in_hf(char32_t cp);

// Rewrites an Oniguruma split pattern so PCRE2 (PCRE2_UTF | PCRE2_UCP) matches the same code
// points as HF's Oniguruma:
//   \p{X} / \pX (X a general category or its one-letter group) also match the code points that
//     Oniguruma's newer Unicode puts in X; \P{X} outside a class is the complement of that;
//   \s / \S are White_Space exactly (PCRE2 adds U+180E);
//   \d / \D are \p{Nd} / \P{Nd}; \h / \H are hex digits (Oniguruma), not horizontal space.
// Negated escapes (\P, \S, \D, \H) inside a character class are kept as they are. Other syntax
// is copied unchanged; \w, \b and POSIX classes keep PCRE2's meaning, which differs from
// Oniguruma's for some non-ASCII code points (no known tokenizer uses them).
std::string rewrite_oniguruma_pattern(std::string_view pattern);

}  // namespace deltatron::data::tok
