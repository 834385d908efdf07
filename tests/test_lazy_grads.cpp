// Lazily zeroed gradients (model::Params::zero_grads): a step's gradients are only marked
// unwritten; the first weight-gradient GEMM of a tensor overwrites it, any other first access
// zeroes it, and the whole-store readers see the rest zeroed. The previous step's gradients stay
// in the buffer until then, so a writer that added to them, or a reader that saw them, would
// give different bits from a fresh model: every case below compares against one.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "model/model.h"
#include "model/params.h"
#include "model_fixture.h"
#include "ops/tensor.h"

using namespace deltatron;

namespace {

model::TensorMap grads_of(model::Model& m, const model::TensorMap& p) {
  model::TensorMap g = model::zeros_like(p);
  m.params().download_grads(g);
  return g;
}

void expect_bitwise(const model::TensorMap& a, const model::TensorMap& b, const std::string& what) {
  for (const auto& [name, t] : a) {
    const std::vector<float>& y = b.at(name).data;
    ASSERT_EQ(t.data.size(), y.size()) << name;
    for (size_t i = 0; i < t.data.size(); ++i)
      if (std::memcmp(&t.data[i], &y[i], sizeof(float)) != 0) {
        ADD_FAILURE() << what << ": gradient " << name << "[" << i << "] " << t.data[i]
                      << " (after an earlier step) vs " << y[i] << " (fresh model)";
        break;
      }
  }
}

model::ModelOptions options(const model::Config& c) {
  model::ModelOptions opt;
  opt.mtp_ce_scale = 0.3f;
  if (c.is_moe()) {
    opt.router.aux_coef = 0.05;
    opt.router.aux_type = model::AuxLossType::seq;
    opt.router.z_coef = 0.01;
  }
  return opt;
}

struct LazyCase {
  std::string name;
  bool moe, tied;
};

class LazyGrads : public ::testing::TestWithParam<LazyCase> {};

// Step 1 on one pack, then zero_grads and step 2 (one or two micro-batches) on packs that leave
// some tensors without a gradient (a one-token sample: no MTP label, experts nobody routes to):
// the gradients are bitwise a fresh model's on step 2's packs alone.
TEST_P(LazyGrads, AStepAfterAnotherEqualsAFreshModel) {
  const LazyCase& k = GetParam();
  model::Config c = k.moe ? dt_test::tiny_moe_mtp_config()
                          : model::parse_config(
                                dt_test::tiny_config_json({{"tie_word_embeddings", k.tied}}), "t");
  const model::TensorMap p = dt_test::random_params(c, 11);
  const auto samples = dt_test::make_samples({37, 5, 70, 1, 19}, c.vocab_size, 3, 4);
  const data::Pack first = dt_test::pack_of(samples, {0, 1, 2, 3, 4}, 1);
  const data::Pack tiny = dt_test::pack_of(samples, {3}, 1);  // one token
  const data::Pack other = dt_test::pack_of(samples, {4, 1}, 1);
  const model::ModelOptions opt = options(c);
  for (const std::vector<const data::Pack*>& step2 :
       {std::vector<const data::Pack*>{&tiny}, std::vector<const data::Pack*>{&tiny, &other},
        std::vector<const data::Pack*>{&other, &tiny}}) {
    model::Model used(core::Device::cpu, core::DType::f32, c, p);
    used.params().zero_grads();
    used.fwd_bwd(first, true, opt);
    used.params().zero_grads();
    for (const data::Pack* pk : step2) used.fwd_bwd(*pk, true, opt);
    model::Model fresh(core::Device::cpu, core::DType::f32, c, p);
    for (const data::Pack* pk : step2) fresh.fwd_bwd(*pk, true, opt);
    expect_bitwise(grads_of(used, p), grads_of(fresh, p),
                   k.name + ", " + std::to_string(step2.size()) + " micro-batch(es)");
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, LazyGrads,
                         ::testing::Values(LazyCase{"dense", false, false},
                                           LazyCase{"dense_tied", false, true},
                                           LazyCase{"moe_mtp", true, false}),
                         [](const auto& info) { return info.param.name; });

// The store's bookkeeping: the first g_target of a step says overwrite, later ones add; g()
// zeroes an unwritten tensor; grad_flat and download_grads zero the ones still unwritten and
// keep what was written.
TEST(LazyGradsStore, FirstWriterOverwritesReadersSeeZeros) {
  const auto tensor = [](core::Shape s, std::vector<float> v) {
    core::Tensor t(std::move(s));
    t.data = std::move(v);
    return t;
  };
  model::TensorMap host;
  host["a"] = tensor({2, 3}, {1, 2, 3, 4, 5, 6});
  host["b"] = tensor({4}, {1, 2, 3, 4});
  host["c"] = tensor({2}, {7, 8});
  model::Params p(core::Device::cpu, core::DType::f32, host);
  ops::fill(p.grad_flat(), 5.f, p.total());  // last step's gradients
  p.zero_grads();
  model::Params::GradTarget a = p.g_target("a");
  EXPECT_FALSE(a.accumulate);
  ops::fill(a.g, 2.f, 6);  // the first writer overwrites
  EXPECT_TRUE(p.g_target("a").accumulate);
  const core::View b = p.g("b");  // zeroed on first access
  std::vector<float> bh(4, -1.f);
  ops::copy_to_host(b, bh.data());
  EXPECT_EQ(bh, std::vector<float>(4, 0.f));
  EXPECT_TRUE(p.g_target("b").accumulate);
  model::TensorMap g = model::zeros_like(host);
  p.download_grads(g);  // c was never touched: zero
  EXPECT_EQ(g.at("a").data, std::vector<float>(6, 2.f));
  EXPECT_EQ(g.at("b").data, std::vector<float>(4, 0.f));
  EXPECT_EQ(g.at("c").data, std::vector<float>(2, 0.f));
  // Nothing written at all: the flat view is all zeros.
  ops::fill(p.grad_flat(), 5.f, p.total());
  p.zero_grads();
  std::vector<float> flat(size_t(p.total()), -1.f);
  ops::copy_to_host(p.grad_flat(), flat.data());
  EXPECT_EQ(flat, std::vector<float>(size_t(p.total()), 0.f));
  EXPECT_TRUE(p.g_target("a").accumulate) << "settled: every gradient is written";
}

}  // namespace
