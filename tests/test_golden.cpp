// Hugging Face parity: deltatron's per-sample losses and parameter gradients on packed batches
// against float64 fixtures made one sample at a time by HF transformers
// (tools/golden/make_golden.py). Tolerances: docs/tolerances.md.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/pack.h"
#include "data/sample.h"
#include "golden_fixture.h"
#include "io/checkpoint.h"
#include "io/hf_layout.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "test_device.h"
#include "test_util.h"

using namespace deltatron;
namespace fs = std::filesystem;

namespace {

constexpr double kLossRelTol = 1e-5;     // per-sample loss, relative
constexpr double kGradRelRmsTol = 1e-4;  // per tensor, relative RMS

std::vector<std::string> golden_cases() {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(fs::path(DT_TEST_DATA) / "golden"))
    if (e.is_directory() && fs::exists(e.path() / "expected.jsonl"))
      out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

class Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(Golden, PackedLossesAndGradientsMatchHuggingFace) {
  const fs::path dir = fs::path(DT_TEST_DATA) / "golden" / GetParam();
  dt_test::GoldenFixture g;
  dt_test::load_golden(dir, g);
  if (HasFatalFailure()) return;
  const io::Checkpoint& ck = g.ck;
  const auto& samples = g.samples;
  const double mtp_scale = g.mtp_scale;
  const auto &want_loss = g.want_loss, &want_mtp = g.want_mtp;
  const auto &want_n = g.want_n, &want_mtp_n = g.want_mtp_n;
  const data::Pack& pack = g.pack;
  model::TensorMap grads = model::zeros_like(ck.params);
  model::ModelOptions opt;
  opt.mtp_ce_scale = static_cast<float>(mtp_scale);
  const model::PackLoss got =
      model::model_fwd_bwd(dt_test::test_device(), ck.config, ck.params, pack, &grads, opt);

  double worst_loss = 0, worst_grad = 0;
  std::string worst_grad_name;
  for (int s = 0; s < pack.num_samples(); ++s) {
    const int64_t i = pack.sample_index[s];
    EXPECT_EQ(got.n_tokens[s], want_n[i]) << "sample " << i;
    const double err =
        std::abs(got.loss_sum[s] - want_loss[i]) / std::max(std::abs(want_loss[i]), 1e-30);
    if (want_n[i] == 0) {
      EXPECT_EQ(got.loss_sum[s], 0.0) << "sample " << i;
      continue;
    }
    worst_loss = std::max(worst_loss, err);
    EXPECT_LE(err, kLossRelTol) << "sample " << i << ": got " << got.loss_sum[s] << " want "
                                << want_loss[i];
  }
  for (int s = 0; s < pack.num_samples() && !want_mtp.empty(); ++s) {
    const int64_t i = pack.sample_index[s];
    EXPECT_EQ(got.mtp_n_tokens[s], want_mtp_n[i]) << "MTP sample " << i;
    if (want_mtp_n[i] == 0) {
      EXPECT_EQ(got.mtp_loss_sum[s], 0.0) << "MTP sample " << i;
      continue;
    }
    const double err = std::abs(got.mtp_loss_sum[s] - want_mtp[i]) / std::abs(want_mtp[i]);
    worst_loss = std::max(worst_loss, err);
    EXPECT_LE(err, kLossRelTol) << "MTP sample " << i << ": got " << got.mtp_loss_sum[s] << " want "
                                << want_mtp[i];
  }

  // Gradients in the checkpoint's own names and expert layout, as --grad-out writes them.
  const auto named = io::to_checkpoint_names(ck, grads);
  const io::SafetensorsFile want_grads((dir / "grads.safetensors").string());
  EXPECT_EQ(want_grads.names().size(), named.size());
  for (const auto& [name, g] : named) {
    ASSERT_TRUE(want_grads.contains(name)) << "fixture lacks gradient " << name;
    const core::Tensor w = want_grads.to_float(name);
    ASSERT_EQ(w.shape, g.shape) << name;
    auto r = dt_test::compare(g.data, w.data);
    if (r.rel_rms > worst_grad) {
      worst_grad = r.rel_rms;
      worst_grad_name = name;
    }
    EXPECT_LE(r.rel_rms, kGradRelRmsTol) << name << ": " << r.str();
  }
  std::printf("golden %s: %zu samples, worst loss rel err %.3g, worst grad rel RMS %.3g (%s)\n",
              GetParam().c_str(), samples.size(), worst_loss, worst_grad, worst_grad_name.c_str());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Golden, ::testing::ValuesIn(golden_cases()),
                         [](const auto& info) { return info.param; });

}  // namespace
