// Byte-level BPE model of the tokenizer: vocabulary, merge ranks, HF's merge order, word cache.
#include "data/tokenizer_bpe.h"

#include <algorithm>
#include <climits>
#include <cstring>

#include "core/error.h"
#include "data/tokenizer_text.h"

namespace deltatron::data::tok {

// ---- cache ---------------------------------------------------------------------------------

uint64_t BpeScratch::cache_hash(std::string_view piece) {
  // 8 bytes at a time, multiply-xorshift mixing (pieces are short; quality needs are modest).
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (piece.size() * 0xFF51AFD7ED558CCDull);
  size_t i = 0;
  for (; i + 8 <= piece.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, piece.data() + i, 8);
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 29;
  }
  uint64_t w = 0;
  std::memcpy(&w, piece.data() + i, piece.size() - i);
  h = (h ^ w) * 0xC4CEB9FE1A85EC53ull;
  h ^= h >> 32;
  return h | 1;  // never 0
}

const int32_t* BpeScratch::cache_find(std::string_view piece, uint64_t hash, size_t& n) const {
  if (cache_slots_.empty()) return nullptr;
  const size_t mask = cache_slots_.size() - 1;
  for (size_t i = hash & mask;; i = (i + 1) & mask) {
    const CacheSlot& slot = cache_slots_[i];
    if (slot.hash == 0) return nullptr;
    if (slot.hash == hash && slot.key_size == piece.size() &&
        std::memcmp(cache_keys_.data() + slot.key_offset, piece.data(), piece.size()) == 0) {
      n = slot.ids_size;
      return cache_ids_.data() + slot.ids_offset;
    }
  }
}

void BpeScratch::cache_clear() {
  cache_slots_.clear();
  cache_used_ = 0;
  cache_keys_.clear();
  cache_ids_.clear();
}

void BpeScratch::cache_insert(std::string_view piece, uint64_t hash, const int32_t* ids, size_t n) {
  auto place = [this](const CacheSlot& entry) {
    const size_t mask = cache_slots_.size() - 1;
    size_t i = entry.hash & mask;
    while (cache_slots_[i].hash != 0) i = (i + 1) & mask;
    cache_slots_[i] = entry;
  };
  if (cache_slots_.empty()) {
    cache_slots_.assign(kCacheMinSlots, CacheSlot{0, 0, 0, 0, 0});
  } else if (2 * (cache_used_ + 1) > cache_slots_.size()) {
    if (cache_slots_.size() >= kCacheMaxSlots) {
      cache_clear();
      cache_slots_.assign(kCacheMaxSlots, CacheSlot{0, 0, 0, 0, 0});
    } else {
      std::vector<CacheSlot> old(2 * cache_slots_.size(), CacheSlot{0, 0, 0, 0, 0});
      old.swap(cache_slots_);
      for (const CacheSlot& e : old) {
        if (e.hash != 0) place(e);
      }
    }
  }
  place(CacheSlot{hash, static_cast<uint32_t>(cache_keys_.size()),
                  static_cast<uint32_t>(piece.size()), static_cast<uint32_t>(cache_ids_.size()),
                  static_cast<uint32_t>(n)});
  cache_keys_.append(piece);
  cache_ids_.insert(cache_ids_.end(), ids, ids + n);
  ++cache_used_;
}

// ---- model ---------------------------------------------------------------------------------

Bpe::Bpe(Vocab vocab, const std::vector<std::pair<std::string, std::string>>& merges,
         BpeOptions options, const std::string& where)
    : vocab_(std::move(vocab)), options_(options) {
  const ByteLevelAlphabet& alphabet = byte_level_alphabet();
  for (int b = 0; b < 256; ++b) {
    const auto it = vocab_.find(alphabet.utf8_of_byte[b]);
    byte_id_[b] = it == vocab_.end() ? -1 : it->second;
  }

  // Table of at least twice the number of merges.
  size_t slots = 16;
  merge_shift_ = 60;
  while (slots < 2 * merges.size()) slots *= 2, --merge_shift_;
  merges_.assign(slots, MergeSlot{kEmpty, 0, 0});

  std::string joined;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    const auto ia = vocab_.find(a), ib = vocab_.find(b);
    joined = a + b;
    const auto inew = vocab_.find(joined);
    const auto* missing = ia == vocab_.end()     ? &a
                          : ib == vocab_.end()   ? &b
                          : inew == vocab_.end() ? &joined
                                                 : nullptr;
    if (missing != nullptr) {
      core::fail(where, ": model.merges[", rank, "] (\"", a, "\", \"", b, "\"): token \"", *missing,
                 "\" is not in model.vocab");
    }
    insert_merge(ia->second, ib->second, static_cast<int32_t>(rank), inew->second);
  }
}

const Bpe::MergeSlot* Bpe::find_merge(int32_t a, int32_t b) const {
  const uint64_t key = pair_key(a, b);
  const size_t mask = merges_.size() - 1;
  for (size_t i = (key * 0x9E3779B97F4A7C15ull) >> merge_shift_;; i = (i + 1) & mask) {
    const MergeSlot& slot = merges_[i];
    if (slot.key == key) return &slot;
    if (slot.key == kEmpty) return nullptr;
  }
}

void Bpe::insert_merge(int32_t a, int32_t b, int32_t rank, int32_t new_id) {
  const uint64_t key = pair_key(a, b);
  const size_t mask = merges_.size() - 1;
  for (size_t i = (key * 0x9E3779B97F4A7C15ull) >> merge_shift_;; i = (i + 1) & mask) {
    MergeSlot& slot = merges_[i];
    if (slot.key == key || slot.key == kEmpty) {
      slot = MergeSlot{key, rank, new_id};  // a later duplicate overrides, as in HF
      return;
    }
  }
}

void Bpe::initial_symbols(std::string_view bytes, std::vector<int32_t>& syms) const {
  syms.clear();
  bool pending_unk = false;  // an unk not yet emitted (it may absorb following unknowns)
  for (char c : bytes) {
    const int32_t id = byte_id_[static_cast<uint8_t>(c)];
    if (id >= 0) {
      if (pending_unk) syms.push_back(*options_.unk_id), pending_unk = false;
      syms.push_back(id);
    } else if (options_.unk_id) {
      if (pending_unk && !options_.fuse_unk) syms.push_back(*options_.unk_id);
      pending_unk = true;
    }
    // Without unk_token an unknown char is dropped, as HF's BPE does.
  }
  if (pending_unk) syms.push_back(*options_.unk_id);
}

void Bpe::merge_scan(std::vector<int32_t>& syms, BpeScratch& scratch) const {
  auto& rank = scratch.pair_rank;
  auto& id = scratch.pair_id;
  size_t n = syms.size();
  if (n < 2) return;
  rank.resize(n - 1);
  id.resize(n - 1);
  auto set_pair = [&](size_t i) {
    const MergeSlot* m = find_merge(syms[i], syms[i + 1]);
    rank[i] = m ? m->rank : INT_MAX;
    id[i] = m ? m->new_id : -1;
  };
  for (size_t i = 0; i + 1 < n; ++i) set_pair(i);
  while (n > 1) {
    // Lowest rank, leftmost on ties.
    size_t best = 0;
    for (size_t i = 1; i + 1 < n; ++i) {
      if (rank[i] < rank[best]) best = i;
    }
    if (rank[best] == INT_MAX) break;
    syms[best] = id[best];
    syms.erase(syms.begin() + static_cast<ptrdiff_t>(best) + 1);
    rank.erase(rank.begin() + static_cast<ptrdiff_t>(best));
    id.erase(id.begin() + static_cast<ptrdiff_t>(best));
    --n;
    if (best > 0) set_pair(best - 1);
    if (best + 1 < n) set_pair(best);
  }
}

void Bpe::merge_heap(std::vector<int32_t>& syms, BpeScratch& scratch) const {
  const auto n = static_cast<int32_t>(syms.size());
  if (n < 2) return;
  auto& heap = scratch.heap;
  auto& prev = scratch.prev;
  auto& next = scratch.next;
  prev.resize(n);
  next.resize(n);
  for (int32_t i = 0; i < n; ++i) prev[i] = i - 1, next[i] = i + 1 < n ? i + 1 : -1;
  // Merged-away symbols get id -1. Min-heap on (rank, pos): std heaps are max-heaps.
  auto later = [](const BpeScratch::Candidate& x, const BpeScratch::Candidate& y) {
    return x.rank != y.rank ? x.rank > y.rank : x.pos > y.pos;
  };
  heap.clear();
  for (int32_t i = 0; i + 1 < n; ++i) {
    if (const MergeSlot* m = find_merge(syms[i], syms[i + 1])) {
      heap.push_back({m->rank, i, m->new_id});
    }
  }
  std::make_heap(heap.begin(), heap.end(), later);
  auto push = [&](int32_t pos, int32_t right) {
    if (const MergeSlot* m = find_merge(syms[pos], syms[right])) {
      heap.push_back({m->rank, pos, m->new_id});
      std::push_heap(heap.begin(), heap.end(), later);
    }
  };
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const BpeScratch::Candidate top = heap.back();
    heap.pop_back();
    const int32_t pos = top.pos;
    if (syms[pos] < 0) continue;  // merged into its left neighbour
    const int32_t right = next[pos];
    if (right < 0) continue;
    // Stale entry: the pair at pos changed since it was queued (HF compares the result id).
    const MergeSlot* m = find_merge(syms[pos], syms[right]);
    if (m == nullptr || m->new_id != top.new_id) continue;
    syms[pos] = top.new_id;
    syms[right] = -1;
    next[pos] = next[right];
    if (next[pos] >= 0) prev[next[pos]] = pos;
    if (prev[pos] >= 0) push(prev[pos], pos);
    if (next[pos] >= 0) push(pos, next[pos]);
  }
  syms.erase(std::remove(syms.begin(), syms.end(), -1), syms.end());
}

void Bpe::encode_piece(std::string_view bytes, BpeScratch& scratch,
                       std::vector<int32_t>& out) const {
  if (bytes.empty()) return;
  if (bytes.size() == 1 && byte_id_[static_cast<uint8_t>(bytes[0])] >= 0) {
    out.push_back(byte_id_[static_cast<uint8_t>(bytes[0])]);
    return;
  }
  if (options_.ignore_merges) {
    scratch.mapped.clear();
    append_byte_level(bytes, scratch.mapped);
    const auto it = vocab_.find(scratch.mapped);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = bytes.size() <= kBpeCacheMaxBytes;
  const uint64_t hash = cacheable ? BpeScratch::cache_hash(bytes) : 0;
  if (cacheable) {
    size_t n = 0;
    if (const int32_t* ids = scratch.cache_find(bytes, hash, n)) {
      out.insert(out.end(), ids, ids + n);
      return;
    }
  }
  std::vector<int32_t>& syms = scratch.syms;
  initial_symbols(bytes, syms);
  if (syms.size() <= kBpeScanMaxSymbols) {
    merge_scan(syms, scratch);
  } else {
    merge_heap(syms, scratch);
  }
  if (cacheable) scratch.cache_insert(bytes, hash, syms.data(), syms.size());
  out.insert(out.end(), syms.begin(), syms.end());
}

}  // namespace deltatron::data::tok
