// Byte-level BPE tokenizer read from a Hugging Face tokenizer.json, id-exact with HF `tokenizers`.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace deltatron::data {

namespace tok {
struct TokenizerModel;
}

// Supported tokenizer.json (the Qwen2/Qwen3/Qwen3.5 and GPT-2 families):
//   model          BPE (vocab, merges as "a b" strings or [a, b] pairs, ignore_merges,
//                  unk_token/fuse_unk); no dropout, byte_fallback or subword prefix/suffix
//   normalizer     null, NFC, or a Sequence of those
//   pre_tokenizer  ByteLevel (add_prefix_space, use_regex = GPT-2 regex), or a Sequence of
//                  Split (Regex or String pattern, behavior Isolated, invert false) ending in
//                  one ByteLevel
//   post_processor null or ByteLevel (no effect on ids); decoder ByteLevel
//   added_tokens   special and non-special, with single_word / lstrip / rstrip / normalized
// Anything else is rejected by load() with an error naming the component. `truncation` and
// `padding` are ignored (as transformers does unless asked to truncate or pad).
//
// Text is UTF-8; ill-formed sequences are replaced by U+FFFD first (as Python's
// bytes.decode(errors="replace") would before calling HF).
//
// Unicode tables: HF runs its regexes on Oniguruma (Unicode 16) and NFC on Unicode 9.0 tables;
// PCRE2 and utf8proc are made to agree with both through generated tables (tokenizer_unicode.h),
// checked on every code point by tools/tokenizer/check_all_codepoints.py.
//
// A Tokenizer is immutable and cheap to copy (shared state); all methods are thread-safe. Each
// thread that encodes keeps a BPE cache (a few MB at most) for the tokenizer it used last.
// A text with a run of ~10^7 chars that the split regex must backtrack over (e.g. 10M spaces)
// exceeds PCRE2's match limit: encode throws (HF panics at the same size).
class Tokenizer {
 public:
  // Reads and validates tokenizer.json. Errors are one line and name the file.
  static Tokenizer load(const std::string& tokenizer_json_path);

  // Plain text: added/special token strings are NOT recognised; "<|im_start|>" is tokenized as
  // ordinary text, so a dataset cannot inject control tokens.
  std::vector<int32_t> encode(std::string_view text) const;
  // Added tokens (special or not) are recognised like HF's default `encode`: leftmost-longest
  // match, honouring single_word / lstrip / rstrip / normalized.
  std::vector<int32_t> encode_with_special(std::string_view text) const;
  // The first stage of encode_with_special: `text` cut into added tokens and the text between
  // them (NFC-normalised when the tokenizer normalises), as HF's AddedVocabulary splits it. With
  // special = false only non-special added tokens (e.g. "<think>") are cut out; special ones
  // ("<|im_start|>") stay text. encode() of each text piece completes the encoding.
  struct AddedPiece {
    int32_t id = -1;   // >= 0: this added token
    std::string text;  // otherwise: text to encode()
  };
  std::vector<AddedPiece> split_added(std::string_view text, bool special) const;

  // encode() of many texts on all OpenMP threads; results in input order.
  std::vector<std::vector<int32_t>> encode_batch(const std::vector<std::string>& texts) const;

  // Id of any token: added tokens first, then the BPE vocabulary (byte-level spelling, e.g.
  // "Ġthe").
  std::optional<int32_t> token_to_id(std::string_view token) const;
  // HF `decode`: ids without a token are skipped; skip_special drops special added tokens;
  // byte-level chars become bytes and ill-formed UTF-8 becomes U+FFFD.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;

  int64_t vocab_size() const;  // highest id + 1 (BPE vocab and added tokens)
  // FNV-1a 64 of the tokenizer.json bytes, 16 lowercase hex digits (for dataset cache keys).
  const std::string& content_hash() const;

 private:
  explicit Tokenizer(std::shared_ptr<const tok::TokenizerModel> model);
  std::shared_ptr<const tok::TokenizerModel> model_;
};

}  // namespace deltatron::data
