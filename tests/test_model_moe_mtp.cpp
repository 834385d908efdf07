// Model-level MoE and MTP checks: MTP label roll, packed = per-sample for MTP and router
// losses, and router statistics that ignore padding but count unlabelled prompt tokens.
#include <gtest/gtest.h>

#include "data/pack.h"
#include "model/model.h"
#include "model_fixture.h"
#include "test_device.h"
#include "test_util.h"

using namespace deltatron;

namespace {

nlohmann::json moe_mtp_overrides() {
  return {{"model_type", "qwen3_5_moe_text"},
          {"intermediate_size", nullptr},
          {"num_experts", 4},
          {"num_experts_per_tok", 2},
          {"moe_intermediate_size", 12},
          {"shared_expert_intermediate_size", 10},
          {"mtp_num_hidden_layers", 1}};
}

model::Config make_config(const nlohmann::json& overrides, bool mtp) {
  model::Config c = model::parse_config(dt_test::tiny_config_json(overrides), "tiny");
  c.mtp_enabled = mtp;
  return c;
}

using dt_test::pack_of;

// Random samples whose first third is an unlabelled prompt.
std::vector<data::Sample> make_samples(const std::vector<int>& lengths, int64_t vocab,
                                       uint64_t seed) {
  return dt_test::make_samples(lengths, vocab, seed, /*prompt_divisor=*/3);
}

struct Result {
  model::PackLoss loss;
  model::TensorMap grads;
};

Result run(const model::Config& c, const model::TensorMap& p, const data::Pack& pack,
           model::ModelOptions opt) {
  Result r;
  r.grads = model::zeros_like(p);
  r.loss = model::model_fwd_bwd(dt_test::test_device(), c, p, pack, &r.grads, opt);
  return r;
}

void expect_grads_close(const model::TensorMap& got, const model::TensorMap& want, double tol,
                        const std::string& what) {
  for (const auto& [name, t] : want) {
    auto r = dt_test::compare(got.at(name).data, t.data);
    EXPECT_LE(r.rel_rms, dt_test::grad_tol(tol)) << what << " " << name << ": " << r.str();
  }
}

double rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-12); }

TEST(MtpRoll, StaysInsideEachSample) {
  const std::vector<int32_t> ids = {1, 2, 3, 4, 5}, cu = {0, 3, 5};
  EXPECT_EQ(data::roll_within_segments(ids, cu, data::kIgnoreIndex),
            (std::vector<int32_t>{2, 3, -100, 5, -100}));
}

struct Case {
  std::string name;
  bool moe;
  model::AuxLossType aux;
  int64_t align;
};

class PackedEqualsAlone : public ::testing::TestWithParam<Case> {};

// Per-sample LM and MTP losses, the router losses and every gradient of a packed batch equal
// the sums over the samples scored alone (router losses in their packing-invariant forms).
TEST_P(PackedEqualsAlone, LossesRouterLossesAndGradients) {
  const Case& k = GetParam();
  const model::Config c =
      make_config(k.moe ? moe_mtp_overrides() : nlohmann::json{{"mtp_num_hidden_layers", 1}}, true);
  const model::TensorMap p = dt_test::random_params(c, 21);
  const auto samples = make_samples({1, 2, 3, 5, 64, 65, 130}, c.vocab_size, 4);
  const std::vector<int64_t> order = {5, 0, 6, 3, 1, 4, 2};

  model::ModelOptions opt;
  opt.mtp_ce_scale = 0.3f;
  if (k.moe) {
    opt.router.aux_coef = 0.05;
    opt.router.aux_type = k.aux;
    opt.router.z_coef = 0.01;
  }
  model::GlobalRouterCounts global;
  if (k.moe && k.aux == model::AuxLossType::global) {
    for (int64_t i = 0; i < 7; ++i)
      model::model_count_routes(dt_test::test_device(), c, p, pack_of(samples, {i}, 1), global);
    model::GlobalRouterCounts packed_counts;
    model::model_count_routes(dt_test::test_device(), c, p, pack_of(samples, order, k.align),
                              packed_counts);
    EXPECT_FALSE(global.layers.empty());
    EXPECT_EQ(global.host_counts(), packed_counts.host_counts());
    EXPECT_EQ(global.host_tokens(), packed_counts.host_tokens());
    opt.global_counts = &global;
  }

  model::TensorMap alone_grads = model::zeros_like(p);
  std::vector<double> alone_loss(7), alone_mtp(7);
  std::vector<int64_t> alone_mtp_n(7);
  double alone_router = 0;
  for (int64_t i = 0; i < 7; ++i) {
    Result r = run(c, p, pack_of(samples, {i}, 1), opt);
    alone_loss[i] = r.loss.loss_sum[0];
    alone_mtp[i] = r.loss.mtp_loss_sum[0];
    alone_mtp_n[i] = r.loss.mtp_n_tokens[0];
    alone_router += r.loss.router_loss;
    for (auto& [name, t] : alone_grads)
      for (size_t j = 0; j < t.data.size(); ++j) t.data[j] += r.grads.at(name).data[j];
  }
  Result packed = run(c, p, pack_of(samples, order, k.align), opt);
  for (size_t s = 0; s < order.size(); ++s) {
    const int64_t i = order[s];
    EXPECT_LE(rel(packed.loss.loss_sum[s], alone_loss[i]), 1e-5) << "sample " << i;
    EXPECT_EQ(packed.loss.mtp_n_tokens[s], alone_mtp_n[i]) << "sample " << i;
    // MTP targets: labels[j+2] for j+2 < n, labelled from n/3 on.
    const int64_t n = static_cast<int64_t>(samples[i].input_ids.size());
    EXPECT_EQ(packed.loss.mtp_n_tokens[s], std::max<int64_t>(0, n - std::max<int64_t>(2, n / 3)))
        << "MTP targets of sample " << i;
    EXPECT_LE(rel(packed.loss.mtp_loss_sum[s], alone_mtp[i]), 1e-5) << "MTP sample " << i;
  }
  if (k.moe) {
    EXPECT_GT(alone_router, 0.0);
    EXPECT_LE(rel(packed.loss.router_loss, alone_router), 1e-5);
  }
  expect_grads_close(packed.grads, alone_grads, 1e-5, k.name);
}

INSTANTIATE_TEST_SUITE_P(
    Variants, PackedEqualsAlone,
    ::testing::Values(Case{"dense_mtp", false, model::AuxLossType::global, 8},
                      Case{"moe_mtp_seq", true, model::AuxLossType::seq, 1},
                      Case{"moe_mtp_seq_aligned", true, model::AuxLossType::seq, 64},
                      Case{"moe_mtp_global", true, model::AuxLossType::global, 8}),
    [](const auto& info) { return info.param.name; });

// Appends a padding-only segment of n slots to a pack (as a fixed-shape batch would).
data::Pack with_padding_segment(data::Pack p, int32_t n) {
  for (int32_t t = 0; t < n; ++t) {
    p.input_ids.push_back(3);
    p.labels.push_back(data::kIgnoreIndex);
    p.targets.push_back(data::kIgnoreIndex);
    p.is_pad.push_back(1);
  }
  std::vector<int32_t> pos(3 * (p.N + n));
  for (int r = 0; r < 3; ++r) {
    std::copy(p.position_ids.begin() + r * p.N, p.position_ids.begin() + (r + 1) * p.N,
              pos.begin() + r * (p.N + n));
    for (int32_t t = 0; t < n; ++t) pos[r * (p.N + n) + p.N + t] = t;
  }
  p.position_ids = pos;
  p.N += n;
  p.cu_seqlens.push_back(p.cu_seqlens.back());
  p.cu_seqlens_padded.push_back(static_cast<int32_t>(p.N));
  p.sample_index.push_back(-1);
  return p;
}

// Padding never enters a router statistic; unlabelled prompt tokens do.
TEST(RouterLossPadding, PaddingExcludedPromptTokensCounted) {
  const model::Config c = make_config(moe_mtp_overrides(), false);
  const model::TensorMap p = dt_test::random_params(c, 8);
  const auto samples = make_samples({9, 40, 17}, c.vocab_size, 2);
  for (auto type : {model::AuxLossType::micro_batch, model::AuxLossType::seq}) {
    model::ModelOptions opt;
    opt.router.aux_coef = 0.1;
    opt.router.aux_type = type;
    opt.router.z_coef = 0.02;
    const data::Pack plain = pack_of(samples, {0, 1, 2}, 1);
    const Result base = run(c, p, plain, opt);
    EXPECT_GT(base.loss.router_loss, 0.0);
    for (const data::Pack& padded :
         {pack_of(samples, {0, 1, 2}, 16), with_padding_segment(plain, 13),
          with_padding_segment(pack_of(samples, {0, 1, 2}, 8), 5)}) {
      const Result r = run(c, p, padded, opt);
      EXPECT_LE(rel(r.loss.router_loss, base.loss.router_loss), 1e-6);
      for (int s = 0; s < 3; ++s) EXPECT_LE(rel(r.loss.loss_sum[s], base.loss.loss_sum[s]), 1e-6);
      expect_grads_close(r.grads, base.grads, 1e-5, "padded");
    }
    // Marking the unlabelled prompt tokens as padding changes the router loss: they count.
    data::Pack prompt_as_pad = plain;
    for (int s = 0; s < 3; ++s)
      for (int32_t t = plain.cu_seqlens_padded[s];
           t < plain.cu_seqlens_padded[s] + static_cast<int32_t>(samples[s].input_ids.size()) / 3;
           ++t)
        prompt_as_pad.is_pad[t] = 1;
    const Result r = run(c, p, prompt_as_pad, opt);
    EXPECT_GT(rel(r.loss.router_loss, base.loss.router_loss), 1e-4);
  }
}

}  // namespace
