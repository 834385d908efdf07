// Pack invariance: a packed batch gives every sample the loss and gradients it has alone.
#include <gtest/gtest.h>

#include "data/pack.h"
#include "model/model.h"
#include "model_fixture.h"
#include "test_device.h"
#include "test_util.h"

using namespace deltatron;

namespace {

// Random samples with an unlabelled prompt prefix (a quarter) on longer samples.
std::vector<data::Sample> make_samples(const std::vector<int>& lengths, int64_t vocab,
                                       uint64_t seed) {
  return dt_test::make_samples(lengths, vocab, seed, /*prompt_divisor=*/4);
}

struct Scored {
  std::vector<double> loss;
  model::TensorMap grads;
};

// Scores samples[idx...] in one pack with the given alignment.
Scored score_pack(const model::Config& c, const model::TensorMap& p,
                  const std::vector<data::Sample>& samples, const std::vector<int64_t>& idx,
                  int64_t align) {
  const data::Pack pack = dt_test::pack_of(samples, idx, align);
  Scored r;
  r.grads = model::zeros_like(p);
  r.loss = model::model_fwd_bwd(dt_test::test_device(), c, p, pack, &r.grads).loss_sum;
  return r;
}

void add_into(model::TensorMap& acc, const model::TensorMap& g) {
  for (auto& [name, t] : acc) {
    const auto& src = g.at(name).data;
    for (size_t i = 0; i < t.data.size(); ++i) t.data[i] += src[i];
  }
}

double rel_err(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-12); }

class PackInvariance : public ::testing::TestWithParam<int64_t> {};

TEST_P(PackInvariance, LossesAndGradientsMatchSamplesAlone) {
  const int64_t align = GetParam();
  const model::Config c = model::parse_config(dt_test::tiny_config_json(), "tiny");
  const model::TensorMap p = dt_test::random_params(c, 7);
  const std::vector<int> lengths = {1, 2, 3, 5, 64, 65, 130};
  const auto samples = make_samples(lengths, c.vocab_size, 11);

  // Alone: each sample in a pack of its own, gradients summed.
  std::vector<double> alone_loss;
  model::TensorMap alone_grads = model::zeros_like(p);
  for (int64_t i = 0; i < static_cast<int64_t>(samples.size()); ++i) {
    Scored s = score_pack(c, p, samples, {i}, 1);
    alone_loss.push_back(s.loss[0]);
    add_into(alone_grads, s.grads);
  }

  // Packed, in a shuffled order, with alignment padding between samples.
  std::vector<int64_t> order = {4, 0, 6, 2, 1, 5, 3};
  Scored packed = score_pack(c, p, samples, order, align);
  double worst_loss = 0, worst_grad = 0;
  for (size_t k = 0; k < order.size(); ++k) {
    const double e = rel_err(packed.loss[k], alone_loss[order[k]]);
    worst_loss = std::max(worst_loss, e);
    EXPECT_LE(e, 1e-5) << "sample " << order[k] << " (len " << lengths[order[k]] << "): packed "
                       << packed.loss[k] << " alone " << alone_loss[order[k]];
  }
  for (const auto& [name, t] : alone_grads) {
    auto r = dt_test::compare(packed.grads.at(name).data, t.data);
    worst_grad = std::max(worst_grad, r.rel_rms);
    EXPECT_LE(r.rel_rms, dt_test::grad_tol(1e-5)) << name << ": " << r.str();
  }
  std::printf("pack invariance (align %ld): worst loss rel err %.3g, worst grad rel RMS %.3g\n",
              static_cast<long>(align), worst_loss, worst_grad);
}

INSTANTIATE_TEST_SUITE_P(Alignments, PackInvariance, ::testing::Values(1, 8, 64));

// A sample's gradient must not change when unlabelled neighbours share its pack: neighbours
// contribute no loss, so any difference is leakage across a boundary (forward or backward).
TEST(PackInvariance, UnlabelledNeighboursDoNotLeak) {
  const model::Config c = model::parse_config(dt_test::tiny_config_json(), "tiny");
  const model::TensorMap p = dt_test::random_params(c, 3);
  auto samples = make_samples({70, 65, 9}, c.vocab_size, 5);
  for (int i : {0, 2})
    for (auto& l : samples[i].labels) l = data::kIgnoreIndex;
  Scored alone = score_pack(c, p, samples, {1}, 1);
  Scored packed = score_pack(c, p, samples, {0, 1, 2}, 8);
  EXPECT_LE(rel_err(packed.loss[1], alone.loss[0]), 1e-5);
  EXPECT_EQ(packed.loss[0], 0.0);
  EXPECT_EQ(packed.loss[2], 0.0);
  for (const auto& [name, t] : alone.grads) {
    auto r = dt_test::compare(packed.grads.at(name).data, t.data);
    EXPECT_LE(r.rel_rms, dt_test::grad_tol(1e-5)) << name << ": " << r.str();
  }
}

TEST(Pack, TargetsPositionsAndBoundaries) {
  data::Sample a{{1, 2, 3}, {1, 2, 3}}, b{{4, 5}, {-100, 5}};
  const data::Pack p = data::make_pack({&a, &b}, {10, 11}, 4);
  EXPECT_EQ(p.N, 8);
  EXPECT_EQ(p.cu_seqlens, (std::vector<int32_t>{0, 3, 5}));
  EXPECT_EQ(p.cu_seqlens_padded, (std::vector<int32_t>{0, 4, 8}));
  EXPECT_EQ(p.targets, (std::vector<int32_t>{2, 3, -100, -100, 5, -100, -100, -100}));
  EXPECT_EQ(p.is_pad, (std::vector<uint8_t>{0, 0, 0, 1, 0, 0, 1, 1}));
  EXPECT_EQ(std::vector<int32_t>(p.position_ids.begin(), p.position_ids.begin() + 8),
            (std::vector<int32_t>{0, 1, 2, 3, 0, 1, 2, 3}));
  EXPECT_EQ(p.sample_index, (std::vector<int64_t>{10, 11}));
}

}  // namespace
