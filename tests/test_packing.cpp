// Tests of best-fit-decreasing packing and the resumable epoch iterator.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "core/error.h"
#include "data/packing.h"

using namespace deltatron;
using data::pack_bfd;

namespace {

// Lengths with a long tail, from a fixed std::mt19937 stream (fully specified by the standard).
std::vector<int64_t> make_lengths(int64_t n, int64_t max_len, uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<int64_t> out(n);
  for (auto& l : out) {
    const uint32_t r = gen() % 1000;
    l = r < 700 ? 1 + gen() % (max_len / 8) : 1 + gen() % max_len;
  }
  return out;
}

// Every check a packing must pass: each sample exactly once, padded sums within the budget.
void check_packing(const std::vector<int64_t>& lengths,
                   const std::vector<std::vector<int64_t>>& batches, int64_t budget,
                   int64_t divisible_by, bool truncate) {
  std::vector<int> seen(lengths.size(), 0);
  for (size_t b = 0; b < batches.size(); ++b) {
    ASSERT_FALSE(batches[b].empty()) << "batch " << b << " is empty";
    int64_t used = 0;
    for (int64_t i : batches[b]) {
      ASSERT_GE(i, 0);
      ASSERT_LT(i, static_cast<int64_t>(lengths.size()));
      ++seen[i];
      used += data::padded_length(lengths[i], budget, divisible_by, truncate);
    }
    ASSERT_LE(used, budget) << "batch " << b << " uses " << used << " tokens of " << budget;
  }
  for (size_t i = 0; i < seen.size(); ++i)
    ASSERT_EQ(seen[i], 1) << "sample " << i << " used " << seen[i] << " times";
}

}  // namespace

TEST(Packing, PaddedLength) {
  EXPECT_EQ(data::padded_length(5, 64, 1, false), 5);
  EXPECT_EQ(data::padded_length(5, 64, 8, false), 8);
  EXPECT_EQ(data::padded_length(16, 64, 8, false), 16);
  EXPECT_EQ(data::padded_length(17, 64, 8, false), 24);
  EXPECT_EQ(data::padded_length(100, 64, 8, true), 64);
}

TEST(Packing, BudgetRespectedEverySampleOnce) {
  const auto lengths = make_lengths(1001, 512, 1);
  for (int64_t window : {0, 1, 7, 100, 5000}) {
    auto batches = pack_bfd(lengths, 512, 1, 42, window);
    check_packing(lengths, batches, 512, 1, false);
  }
}

TEST(Packing, DivisibleByPadsEachSample) {
  const auto lengths = make_lengths(503, 256, 2);
  auto batches = pack_bfd(lengths, 512, 16, 3, 64);
  check_packing(lengths, batches, 512, 16, false);
  // Padding does count: a pack of five 100-token samples fits 512 unpadded but not at 128-align.
  std::vector<int64_t> five(5, 100);
  EXPECT_EQ(pack_bfd(five, 512, 1, 0, 0).size(), 1u);
  EXPECT_EQ(pack_bfd(five, 512, 128, 0, 0).size(), 2u);
  EXPECT_THROW(pack_bfd(five, 500, 128, 0, 0), core::Error);  // budget not a multiple
}

TEST(Packing, BestFitIsTight) {
  // Pairs that sum exactly to the budget: best-fit-decreasing finds the perfect packing.
  std::vector<int64_t> lengths;
  for (int64_t k = 1; k <= 50; ++k) {
    lengths.push_back(k);
    lengths.push_back(100 - k);
  }
  lengths.push_back(100);
  lengths.push_back(50);
  lengths.push_back(50);
  auto batches = pack_bfd(lengths, 100, 1, 9, 0);
  check_packing(lengths, batches, 100, 1, false);
  EXPECT_EQ(batches.size(), 52u);
  EXPECT_DOUBLE_EQ(data::packing_efficiency(lengths, batches, 100), 1.0);

  const auto many = make_lengths(4000, 1024, 5);
  auto b2 = pack_bfd(many, 4096, 1, 1, 1000);
  check_packing(many, b2, 4096, 1, false);
  const double eff = data::packing_efficiency(many, b2, 4096);
  EXPECT_GT(eff, 0.97) << "BFD over windows of 1000 short-tailed samples packs poorly";
}

TEST(Packing, DeterministicPerSeedDifferentAcrossSeeds) {
  const auto lengths = make_lengths(300, 200, 3);
  auto a = pack_bfd(lengths, 400, 8, 17, 50);
  auto b = pack_bfd(lengths, 400, 8, 17, 50);
  auto c = pack_bfd(lengths, 400, 8, 18, 50);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  check_packing(lengths, c, 400, 8, false);
  // Each batch lists its samples in ascending order.
  for (const auto& batch : a) EXPECT_TRUE(std::is_sorted(batch.begin(), batch.end()));
}

TEST(Packing, OverLongSampleIsAnErrorNamingIt) {
  std::vector<int64_t> lengths = {10, 20, 300, 5};
  try {
    pack_bfd(lengths, 256, 1, 0, 0, false,
             [](int64_t i) { return "data.jsonl:" + std::to_string(i + 1); });
    FAIL() << "expected an error for the 300-token sample";
  } catch (const core::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("sample 2"), std::string::npos) << msg;
    EXPECT_NE(msg.find("data.jsonl:3"), std::string::npos) << msg;
    EXPECT_NE(msg.find("300"), std::string::npos) << msg;
  }
  // truncate: the sample counts as the full budget and gets a batch of its own.
  auto batches = pack_bfd(lengths, 256, 8, 0, 0, true);
  check_packing(lengths, batches, 256, 8, true);
  for (const auto& b : batches)
    if (std::find(b.begin(), b.end(), 2) != b.end()) {
      EXPECT_EQ(b.size(), 1u);
    }
  EXPECT_NEAR(data::packing_efficiency(lengths, batches, 256, true), (10 + 20 + 256 + 5) / 512.0,
              1e-12);
}

TEST(Packing, EpochIteratorUsesEverySampleOncePerEpoch) {
  const auto lengths = make_lengths(257, 128, 4);
  data::PackingOptions opt;
  opt.budget = 256;
  opt.divisible_by = 4;
  opt.seed = 11;
  opt.window = 64;
  data::EpochIterator it(lengths, opt);
  std::vector<std::vector<int64_t>> epoch_order(3);
  for (int64_t e = 0; e < 3; ++e) {
    std::vector<int> seen(lengths.size(), 0);
    const size_t nb = it.epoch_batches().size();
    for (size_t b = 0; b < nb; ++b) {
      ASSERT_EQ(it.epoch(), e);
      for (int64_t i : it.next()) {
        ++seen[i];
        epoch_order[e].push_back(i);
      }
    }
    for (size_t i = 0; i < seen.size(); ++i)
      ASSERT_EQ(seen[i], 1) << "epoch " << e << ": sample " << i << " used " << seen[i] << "x";
    EXPECT_GT(it.efficiency(), 0.5);
  }
  EXPECT_EQ(it.epoch(), 3);
  EXPECT_EQ(it.cursor(), 0);
  EXPECT_NE(epoch_order[0], epoch_order[1]) << "epochs are not reshuffled";
  EXPECT_NE(epoch_order[1], epoch_order[2]) << "epochs are not reshuffled";
  // Epoch e is exactly pack_bfd with seed + e.
  EXPECT_EQ(data::EpochIterator(lengths, opt, {}, 1).epoch_batches(),
            pack_bfd(lengths, 256, 4, 12, 64));
}

TEST(Packing, EpochIteratorResumesExactly) {
  const auto lengths = make_lengths(100, 64, 6);
  data::PackingOptions opt;
  opt.budget = 128;
  opt.seed = 5;
  opt.window = 0;
  data::EpochIterator ref(lengths, opt);
  std::vector<std::vector<int64_t>> stream;
  std::vector<std::pair<int64_t, int64_t>> positions;
  for (int k = 0; k < 200; ++k) {  // several epochs
    positions.push_back({ref.epoch(), ref.cursor()});
    stream.push_back(ref.next());
  }
  ASSERT_GT(ref.epoch(), 1);
  for (int k : {0, 1, 37, 90, 150}) {
    data::EpochIterator resumed(lengths, opt, {}, positions[k].first, positions[k].second);
    for (int j = k; j < 200; ++j) ASSERT_EQ(resumed.next(), stream[j]) << "resumed at " << k;
  }
  // A cursor at the end of an epoch continues with the next one.
  const int64_t nb0 =
      static_cast<int64_t>(data::EpochIterator(lengths, opt).epoch_batches().size());
  data::EpochIterator at_end(lengths, opt, {}, 0, nb0);
  EXPECT_EQ(at_end.epoch(), 1);
  EXPECT_EQ(at_end.cursor(), 0);
  EXPECT_EQ(at_end.next(), stream[nb0]);
  EXPECT_THROW(data::EpochIterator(lengths, opt, {}, 0, nb0 + 1), core::Error);
}
