// PCRE2 regex with the match iteration of HF `tokenizers` (Oniguruma find_iter + find_matches).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

// Opaque PCRE2 types (pcre2.h, 8-bit code units); only tokenizer_regex.cpp includes pcre2.h.
struct pcre2_real_code_8;
struct pcre2_real_match_data_8;
struct pcre2_real_match_context_8;
struct pcre2_real_jit_stack_8;

namespace deltatron::data::tok {

// A piece of a string: bytes [begin, end); is_match tells a regex match from the gap before it.
struct Span {
  size_t begin;
  size_t end;
  bool is_match;
};

// Per-thread matching state (match data, JIT stack). Not shareable between threads.
class RegexScratch {
 public:
  RegexScratch();
  ~RegexScratch();
  RegexScratch(const RegexScratch&) = delete;
  RegexScratch& operator=(const RegexScratch&) = delete;

 private:
  friend class Regex;
  pcre2_real_match_data_8* match_data_ = nullptr;
  pcre2_real_match_context_8* context_ = nullptr;
  pcre2_real_jit_stack_8* jit_stack_ = nullptr;
};

// A compiled pattern (PCRE2_UTF | PCRE2_UCP, JIT when available). Immutable after
// construction, so one instance serves all threads.
class Regex {
 public:
  // `literal`: the pattern is a plain string (HF SplitPattern::String). Throws core::Error with
  // PCRE2's message and offset when the pattern does not compile.
  Regex(std::string_view pattern, bool literal);

  // Appends to `out` the spans of HF's Pattern::find_matches over `text`: every match and every
  // non-empty gap between matches, in order, covering the whole text ({0, 0, false} for an empty
  // text). Matches are found like Oniguruma's find_iter: each search starts at the end of the
  // previous match; an empty match moves the next start one code point further, and an empty
  // match found after a non-empty one (with no empty match in between) is dropped. `text` must
  // be valid UTF-8.
  void find_matches(std::string_view text, RegexScratch& scratch, std::vector<Span>& out) const;

  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  std::shared_ptr<pcre2_real_code_8> code_;
  bool jit_ = false;
};

}  // namespace deltatron::data::tok
