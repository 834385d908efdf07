// Packing samples into token-budget micro-batches: best-fit-decreasing in shuffled windows, epochs.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace deltatron::data {

// Names sample i in error messages (e.g. Dataset::where: "file.jsonl:17"); may be empty.
using SampleNamer = std::function<std::string(int64_t)>;

// Padded length of a sample: its length (capped at the budget when truncating) rounded up to a
// multiple of divisible_by. This is what counts against the budget.
int64_t padded_length(int64_t length, int64_t budget, int64_t divisible_by, bool truncate);

// Groups samples 0..n-1 (lengths[i] tokens each) into micro-batches whose padded lengths sum to
// at most `budget`, never splitting a sample:
//   1. shuffle the sample order with `seed` (own Fisher-Yates on SplitMix64: the same result on
//      every platform and standard library);
//   2. cut the shuffled order into windows of `window` samples (window <= 0: one window);
//   3. within a window, best-fit-decreasing: samples by padded length, longest first (ties by
//      shuffled position), each into the open batch with the least room that still fits it, else a
//      new batch; the window's batches are then shuffled, and each batch lists its samples in
//      ascending index order.
// budget must be a multiple of divisible_by. A sample longer than the budget is an error naming
// it (index, and name(i) when given) unless truncate, where it counts as `budget` tokens (the
// caller keeps its first `budget` tokens, e.g. make_dataset_pack(..., max_len = budget)).
std::vector<std::vector<int64_t>> pack_bfd(const std::vector<int64_t>& lengths, int64_t budget,
                                           int64_t divisible_by, uint64_t seed, int64_t window,
                                           bool truncate = false, const SampleNamer& name = {});

// Real tokens (after truncation) / (num_batches * budget).
double packing_efficiency(const std::vector<int64_t>& lengths,
                          const std::vector<std::vector<int64_t>>& batches, int64_t budget,
                          bool truncate = false);

struct PackingOptions {
  int64_t budget = 0;  // tokens per micro-batch, padding included
  int64_t divisible_by = 1;
  uint64_t seed = 0;
  int64_t window = 4096;  // samples per best-fit window (<= 0: the whole dataset)
  bool truncate = false;
};

// Endless sequence of micro-batches over epochs. Epoch e is pack_bfd(..., seed + e): every sample
// exactly once per epoch, a fresh shuffle per epoch. The position (epoch, cursor) of the NEXT
// batch (cursor = batches of that epoch already returned; after an epoch's last batch it is
// (epoch + 1, 0)) is all the state there is: save it, and EpochIterator(..., epoch, cursor)
// continues with exactly the batches the original would have produced.
class EpochIterator {
 public:
  EpochIterator(std::vector<int64_t> lengths, PackingOptions opt, SampleNamer name = {},
                int64_t epoch = 0, int64_t cursor = 0);

  // The next micro-batch (sample indices); moves on to the next epoch after the last one.
  std::vector<int64_t> next();

  int64_t epoch() const { return epoch_; }
  int64_t cursor() const { return cursor_; }
  // Batches of the current epoch (the one next() draws from), and their packing efficiency.
  const std::vector<std::vector<int64_t>>& epoch_batches() const { return batches_; }
  double efficiency() const;

 private:
  void plan_epoch();
  std::vector<int64_t> lengths_;
  PackingOptions opt_;
  SampleNamer name_;
  int64_t epoch_ = 0, cursor_ = 0;
  std::vector<std::vector<int64_t>> batches_;
};

}  // namespace deltatron::data
