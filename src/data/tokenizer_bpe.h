// Byte-level BPE model of the tokenizer: vocabulary, merge ranks, HF's merge order, word cache.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace deltatron::data::tok {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
// Token string -> id, searchable with a string_view.
using Vocab = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

struct BpeOptions {
  std::optional<int32_t> unk_id;  // id of `unk_token`; without it unknown chars are dropped
  bool fuse_unk = false;          // consecutive unknown chars become one unk
  bool ignore_merges = false;     // a piece that is itself in the vocab is emitted whole
};

// Per-thread state of Bpe::encode_piece: work buffers and a cache piece bytes -> ids.
class BpeScratch {
 public:
  std::vector<int32_t> syms;
  std::string mapped;  // byte-level form of a piece, for ignore_merges

  // Heap merge work buffers.
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
  };
  std::vector<Candidate> heap;
  std::vector<int32_t> prev, next;
  // Scan merge work buffers: rank and result of the pair (syms[i], syms[i + 1]).
  std::vector<int32_t> pair_rank, pair_id;

  // Cache of piece bytes -> ids: open addressing over (hash, key, ids) slots whose keys and ids
  // live in two arenas. It starts small, doubles when half full, and once at kCacheMaxSlots is
  // emptied when half full and refills.
  // cache_find returns the cached ids of `piece` (nullptr when absent; valid until the next
  // insert); `hash` is cache_hash(piece).
  static uint64_t cache_hash(std::string_view piece);
  const int32_t* cache_find(std::string_view piece, uint64_t hash, size_t& n) const;
  void cache_insert(std::string_view piece, uint64_t hash, const int32_t* ids, size_t n);
  void cache_clear();

 private:
  struct CacheSlot {
    uint64_t hash;  // 0: empty (cache_hash never returns 0)
    uint32_t key_offset, key_size, ids_offset, ids_size;
  };
  static constexpr size_t kCacheMinSlots = 1 << 10;
  static constexpr size_t kCacheMaxSlots = 1 << 17;  // 3 MiB of slots
  std::vector<CacheSlot> cache_slots_;
  size_t cache_used_ = 0;
  std::string cache_keys_;
  std::vector<int32_t> cache_ids_;
};

// Pieces of at most this many bytes are cached (HF caches pieces shorter than 256 chars).
constexpr size_t kBpeCacheMaxBytes = 255;
// Pieces of more initial symbols than this use the heap merge, shorter ones the scan merge.
constexpr size_t kBpeScanMaxSymbols = 48;

class Bpe {
 public:
  // `merges` in rank order (rank = index); a later duplicate of a pair overrides the earlier one,
  // as in HF. Throws core::Error naming `where` when a merge uses a token missing from the vocab.
  Bpe(Vocab vocab, const std::vector<std::pair<std::string, std::string>>& merges,
      BpeOptions options, const std::string& where);

  // Appends the ids of one pre-tokenized piece, given as raw bytes (before the byte-level
  // mapping; each byte is one initial symbol, the vocab entry of its byte-level char).
  void encode_piece(std::string_view bytes, BpeScratch& scratch, std::vector<int32_t>& out) const;

  // Initial symbols of a piece: byte-level char ids, unknown bytes handled per BpeOptions.
  void initial_symbols(std::string_view bytes, std::vector<int32_t>& syms) const;
  // Two implementations of HF's merge order (repeatedly merge the adjacent pair of lowest rank,
  // the leftmost among equals): a quadratic scan for short pieces and HF's heap algorithm for
  // long ones. Both rewrite `syms` in place; the tests check they agree.
  void merge_scan(std::vector<int32_t>& syms, BpeScratch& scratch) const;
  void merge_heap(std::vector<int32_t>& syms, BpeScratch& scratch) const;

  const Vocab& vocab() const { return vocab_; }

 private:
  struct MergeSlot {
    uint64_t key;  // (left << 32) | right; kEmpty when unused
    int32_t rank;
    int32_t new_id;
  };
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  const MergeSlot* find_merge(int32_t a, int32_t b) const;
  void insert_merge(int32_t a, int32_t b, int32_t rank, int32_t new_id);

  Vocab vocab_;
  BpeOptions options_;
  int32_t byte_id_[256];           // id of each byte's byte-level char, -1 when not in vocab
  std::vector<MergeSlot> merges_;  // open addressing, linear probing, power-of-two size
  int merge_shift_ = 64;           // slot = (key * golden) >> merge_shift_
};

}  // namespace deltatron::data::tok
