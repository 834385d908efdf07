// PCRE2 regex with the match iteration of HF `tokenizers` (Oniguruma find_iter + find_matches).
#define PCRE2_CODE_UNIT_WIDTH 8
#include "data/tokenizer_regex.h"

#include <pcre2.h>

#include <new>

#include "core/error.h"
#include "data/tokenizer_unicode.h"

namespace deltatron::data::tok {

namespace {

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  const int n = pcre2_get_error_message(code, buf, sizeof(buf));
  return n < 0 ? "PCRE2 error " + std::to_string(code) : std::string(reinterpret_cast<char*>(buf));
}

// JIT matching uses 32 KiB of the machine stack; a match that needs more (deep backtracking)
// gets a private stack that may grow to kJitStackMax.
constexpr size_t kJitStackStart = 256 * 1024;
constexpr size_t kJitStackMax = 64 * 1024 * 1024;

}  // namespace

RegexScratch::RegexScratch() {
  match_data_ = pcre2_match_data_create(1, nullptr);  // only the whole match is needed
  context_ = pcre2_match_context_create(nullptr);
  if (match_data_ == nullptr || context_ == nullptr) throw std::bad_alloc();
}

RegexScratch::~RegexScratch() {
  pcre2_jit_stack_free(jit_stack_);
  pcre2_match_context_free(context_);
  pcre2_match_data_free(match_data_);
}

Regex::Regex(std::string_view pattern, bool literal) : pattern_(pattern) {
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  const uint32_t options = literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP;
  // Oniguruma's class semantics (HF's regex engine) expressed in PCRE2 syntax.
  const std::string compiled = literal ? std::string(pattern) : rewrite_oniguruma_pattern(pattern);
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(compiled.data()), compiled.size(),
                                   options, &err, &err_offset, nullptr);
  if (code == nullptr) {
    core::fail("regex /", pattern, "/ does not compile (PCRE2): ", pcre2_message(err),
               literal ? "" : " (in the rewritten pattern /" + compiled + "/ at offset ",
               err_offset, ")");
  }
  code_.reset(code, pcre2_code_free);
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

void Regex::find_matches(std::string_view text, RegexScratch& scratch,
                         std::vector<Span>& out) const {
  const size_t n = text.size();
  if (n == 0) {
    out.push_back({0, 0, false});
    return;
  }
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(scratch.match_data_);
  size_t prev = 0;     // end of the last span emitted
  size_t next_at = 0;  // where the next search starts
  bool skip_next_empty = false;
  while (next_at <= n) {
    int rc = jit_ ? pcre2_jit_match(code_.get(), subject, n, next_at, 0, scratch.match_data_,
                                    scratch.context_)
                  : pcre2_match(code_.get(), subject, n, next_at, PCRE2_NO_UTF_CHECK,
                                scratch.match_data_, scratch.context_);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT && scratch.jit_stack_ == nullptr) {
      scratch.jit_stack_ = pcre2_jit_stack_create(kJitStackStart, kJitStackMax, nullptr);
      if (scratch.jit_stack_ == nullptr) throw std::bad_alloc();
      pcre2_jit_stack_assign(scratch.context_, nullptr, scratch.jit_stack_);
      continue;  // retry the same search with the larger stack
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) core::fail("regex /", pattern_, "/: matching failed: ", pcre2_message(rc));
    const size_t s = ovector[0], e = ovector[1];
    next_at = e;
    if (s == e) {
      // Step over one code point so the search makes progress.
      size_t step = 1;
      if (e < n) {
        const auto b = static_cast<uint8_t>(text[e]);
        step = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
      }
      next_at += step;
      if (skip_next_empty) {
        skip_next_empty = false;
        continue;
      }
    } else {
      skip_next_empty = true;
    }
    if (prev != s) out.push_back({prev, s, false});
    out.push_back({s, e, true});
    prev = e;
  }
  if (prev != n) out.push_back({prev, n, false});
}

}  // namespace deltatron::data::tok
