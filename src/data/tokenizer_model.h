// Internal state of a loaded tokenizer (shared by tokenizer_load.cpp and tokenizer.cpp).
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "data/tokenizer_bpe.h"
#include "data/tokenizer_regex.h"

namespace deltatron::data::tok {

// One entry of tokenizer.json "added_tokens" (HF AddedToken) with the id HF assigns it.
struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

// Leftmost-longest search over a set of strings (HF builds an Aho-Corasick automaton with
// MatchKind::LeftmostLongest; a first-byte filter is enough for the few added tokens of an LLM
// tokenizer).
class AddedMatcher {
 public:
  void build(std::vector<std::pair<std::string, int32_t>> patterns);
  bool empty() const { return patterns_.empty(); }
  // Finds the leftmost position >= from where some pattern starts, and there the longest
  // pattern. Returns false when there is none.
  bool find(std::string_view text, size_t from, size_t& begin, size_t& end, int32_t& id) const;

 private:
  std::vector<std::pair<std::string, int32_t>> patterns_;  // by first byte, longest first
  std::array<uint32_t, 257> first_{};                      // patterns_ range per first byte
};

// One step of the pre-tokenizer.
struct PreTokStep {
  enum class Kind { split, byte_level };
  Kind kind = Kind::split;
  std::shared_ptr<const Regex> regex;  // Split pattern, or the GPT-2 regex of ByteLevel
  bool add_prefix_space = false;       // ByteLevel only
};

struct TokenizerModel {
  std::string path;
  std::string content_hash;
  uint64_t serial = 0;  // unique per loaded tokenizer in this process (owner of thread caches)

  bool nfc = false;                 // normalizer: NFC (or a Sequence of NFC)
  std::vector<PreTokStep> pre_tok;  // Split steps, then one ByteLevel step
  std::unique_ptr<const Bpe> bpe;

  // Added vocabulary, as HF's AddedVocabulary after deserialisation.
  std::vector<AddedToken> added;  // final token per id, by id
  Vocab added_ids;                // content -> id
  std::unordered_set<std::string, StringHash, std::equal_to<>> special_contents;
  AddedMatcher match_raw;         // tokens with normalized = false, matched before NFC
  AddedMatcher match_normalized;  // tokens with normalized = true, matched after NFC
  AddedMatcher match_raw_plain, match_normalized_plain;  // the same, non-special tokens only

  // Decoding: bytes of each id (empty and absent when the id has no token).
  std::vector<std::string> id_bytes;
  std::vector<uint8_t> id_flags;  // kHasToken | kSpecial
  static constexpr uint8_t kHasToken = 1, kSpecial = 2;

  int64_t vocab_size = 0;
};

// Parses and validates tokenizer.json (tokenizer_load.cpp).
std::shared_ptr<const TokenizerModel> load_tokenizer_model(const std::string& path);

// Per-thread work buffers of the encoder.
struct Workspace {
  RegexScratch regex;
  BpeScratch bpe;
  std::string clean;  // input after UTF-8 repair (when it needed one)
  std::string norm;   // one normalised segment
  struct Piece {
    size_t begin, end;
    int32_t id;  // added token id, or -1 for text
  };
  std::vector<Piece> raw_pieces, norm_pieces;
  std::vector<Span> spans;
  std::vector<std::string_view> cur, next;
  std::deque<std::string> owned;  // pieces created by ByteLevel's add_prefix_space
};

}  // namespace deltatron::data::tok
