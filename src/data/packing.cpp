// Best-fit-decreasing packing in shuffled windows, and the resumable epoch iterator over it.
#include "data/packing.h"

#include <algorithm>
#include <numeric>
#include <set>

#include "core/error.h"

namespace deltatron::data {

namespace {

// SplitMix64: a tiny, fully specified generator, so a seed means the same order everywhere
// (std::shuffle and std::uniform_int_distribution are implementation-defined).
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n) by rejection (no modulo bias).
  uint64_t below(uint64_t n) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = next();
    while (x >= limit);
    return x % n;
  }
};

template <typename T>
void shuffle(std::vector<T>& v, SplitMix64& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng.below(i)]);
}

}  // namespace

int64_t padded_length(int64_t length, int64_t budget, int64_t divisible_by, bool truncate) {
  const int64_t n = truncate ? std::min(length, budget) : length;
  return (n + divisible_by - 1) / divisible_by * divisible_by;
}

std::vector<std::vector<int64_t>> pack_bfd(const std::vector<int64_t>& lengths, int64_t budget,
                                           int64_t divisible_by, uint64_t seed, int64_t window,
                                           bool truncate, const SampleNamer& name) {
  DT_CHECK(divisible_by >= 1, "packing: divisible_by must be >= 1, got ", divisible_by);
  DT_CHECK(budget >= divisible_by && budget % divisible_by == 0, "packing: token budget ", budget,
           " must be a positive multiple of divisible_by = ", divisible_by);
  const int64_t n = static_cast<int64_t>(lengths.size());
  std::vector<int64_t> padded(n);
  for (int64_t i = 0; i < n; ++i) {
    DT_CHECK(lengths[i] >= 0, "packing: sample ", i, " has negative length ", lengths[i]);
    if (!truncate && lengths[i] > budget)
      core::fail("packing: sample ", i, name ? " (" + name(i) + ")" : std::string(), " has ",
                 lengths[i], " tokens, more than the token budget ", budget,
                 " (raise the budget, or truncate over-long samples)");
    padded[i] = padded_length(lengths[i], budget, divisible_by, truncate);
  }

  SplitMix64 rng{seed};
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  shuffle(order, rng);
  if (window <= 0 || window > n) window = std::max<int64_t>(n, 1);

  std::vector<std::vector<int64_t>> batches;
  for (int64_t w0 = 0; w0 < n; w0 += window) {
    const int64_t w1 = std::min(n, w0 + window);
    // Decreasing padded length; stable, so ties keep their shuffled order.
    std::vector<int64_t> win(order.begin() + w0, order.begin() + w1);
    std::stable_sort(win.begin(), win.end(),
                     [&](int64_t a, int64_t b) { return padded[a] > padded[b]; });
    std::vector<std::vector<int64_t>> bins;
    std::set<std::pair<int64_t, int64_t>> room;  // (free tokens, bin), least room first
    for (int64_t i : win) {
      auto it = room.lower_bound({padded[i], -1});
      int64_t bin;
      int64_t free_tokens;
      if (it == room.end()) {
        bin = static_cast<int64_t>(bins.size());
        bins.emplace_back();
        free_tokens = budget;
      } else {
        bin = it->second;
        free_tokens = it->first;
        room.erase(it);
      }
      bins[bin].push_back(i);
      room.insert({free_tokens - padded[i], bin});
    }
    shuffle(bins, rng);
    for (auto& b : bins) {
      std::sort(b.begin(), b.end());
      batches.push_back(std::move(b));
    }
  }
  return batches;
}

double packing_efficiency(const std::vector<int64_t>& lengths,
                          const std::vector<std::vector<int64_t>>& batches, int64_t budget,
                          bool truncate) {
  if (batches.empty()) return 0.0;
  int64_t real = 0;
  for (const auto& b : batches)
    for (int64_t i : b) real += truncate ? std::min(lengths[i], budget) : lengths[i];
  return static_cast<double>(real) /
         (static_cast<double>(batches.size()) * static_cast<double>(budget));
}

EpochIterator::EpochIterator(std::vector<int64_t> lengths, PackingOptions opt, SampleNamer name,
                             int64_t epoch, int64_t cursor)
    : lengths_(std::move(lengths)),
      opt_(opt),
      name_(std::move(name)),
      epoch_(epoch),
      cursor_(cursor) {
  DT_CHECK(!lengths_.empty(), "epoch iterator: no samples");
  DT_CHECK(epoch >= 0 && cursor >= 0, "epoch iterator: bad position (epoch ", epoch, ", cursor ",
           cursor, ")");
  plan_epoch();
  DT_CHECK(cursor_ <= static_cast<int64_t>(batches_.size()), "epoch iterator: cursor ", cursor_,
           " is past the ", batches_.size(), " batches of epoch ", epoch_);
  if (cursor_ == static_cast<int64_t>(batches_.size())) {  // (e, end) is (e + 1, 0)
    ++epoch_;
    cursor_ = 0;
    plan_epoch();
  }
}

void EpochIterator::plan_epoch() {
  batches_ = pack_bfd(lengths_, opt_.budget, opt_.divisible_by,
                      opt_.seed + static_cast<uint64_t>(epoch_), opt_.window, opt_.truncate, name_);
}

std::vector<int64_t> EpochIterator::next() {
  std::vector<int64_t> batch = batches_[cursor_++];
  if (cursor_ == static_cast<int64_t>(batches_.size())) {
    ++epoch_;
    cursor_ = 0;
    plan_epoch();
  }
  return batch;
}

double EpochIterator::efficiency() const {
  return packing_efficiency(lengths_, batches_, opt_.budget, opt_.truncate);
}

}  // namespace deltatron::data
