// Hugging Face + PEFT parity for LoRA: deltatron's per-sample losses and every adapter gradient on
// packed batches against float64 fixtures made one sample at a time by HF transformers + PEFT
// (tools/golden/make_golden_lora.py, README_lora.md), from PEFT's own adapter files; and the
// adapted modules are exactly the ones PEFT adapted.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "bf16_bound.h"
#include "golden_fixture.h"
#include "io/peft_adapter.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "test_device.h"
#include "test_util.h"
#include "train/merge_cmd.h"
#include "train/score.h"

using namespace deltatron;
namespace fs = std::filesystem;

namespace {

constexpr double kLossRelTol = 1e-5;     // per-sample loss, relative (docs/tolerances.md)
constexpr double kGradRelRmsTol = 1e-4;  // per tensor, relative RMS

std::vector<std::string> lora_cases() {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(fs::path(DT_TEST_DATA) / "golden_lora"))
    if (e.is_directory() && fs::exists(e.path() / "golden.json"))
      out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

class GoldenLora : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenLora, PackedLossesAndAdapterGradientsMatchPeft) {
  const fs::path dir = fs::path(DT_TEST_DATA) / "golden_lora" / GetParam();
  nlohmann::json meta;
  {
    std::ifstream in(dir / "golden.json");
    meta = nlohmann::json::parse(in);
  }
  dt_test::GoldenFixture g;
  dt_test::load_golden(fs::path(DT_TEST_DATA) / "golden" / meta["base"].get<std::string>(), g);
  if (HasFatalFailure()) return;
  // The fixture's losses are the adapted model's, its samples the base's.
  g.want_loss.clear();
  g.want_n.clear();
  {
    std::ifstream in(dir / "expected.jsonl");
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      const auto j = nlohmann::json::parse(line);
      g.want_loss.push_back(j["loss_sum"].get<double>());
      g.want_n.push_back(j["n_tokens"].get<int64_t>());
    }
  }
  ASSERT_EQ(g.want_loss.size(), g.samples.size());

  const io::PeftAdapter ad = io::load_peft_adapter((dir / "adapter").string());
  EXPECT_EQ(ad.options.r, meta["r"].get<int64_t>());
  EXPECT_EQ(ad.options.rslora, meta["rslora"].get<bool>());
  EXPECT_NEAR(ad.options.scale(), meta["scaling"].get<double>(), 1e-15);
  // The adapter's own target_modules resolve, in deltatron, to exactly the modules PEFT adapted.
  model::LoraOptions by_targets = ad.options;
  by_targets.experts = !ad.target_parameters.empty();
  const auto mods = model::lora_modules(g.ck.config, by_targets, "adapter_config.json");
  std::set<std::string> ours, peft, ours_p, peft_p;
  for (const auto& m : mods) (m.experts ? ours_p : ours).insert(m.name);
  for (const auto& m : meta["adapted_modules"]) peft.insert(m.get<std::string>());
  if (meta.contains("adapted_parameters"))
    for (const auto& m : meta["adapted_parameters"]) peft_p.insert(m.get<std::string>());
  EXPECT_EQ(ours, peft);
  EXPECT_EQ(ours_p, peft_p);  // routed experts (target_parameters)

  const model::LoraSetup setup = io::to_lora_setup(ad);
  model::Model m(dt_test::test_device(), core::DType::f32, g.ck.config, g.ck.params, {}, &setup);
  model::ModelOptions opt;
  opt.mtp_ce_scale = 0.0f;  // HF models have no MTP head
  const model::PackLoss got = m.fwd_bwd(g.pack, true, opt);
  double worst_loss = 0, worst_grad = 0;
  std::string worst_name;
  for (int s = 0; s < g.pack.num_samples(); ++s) {
    const int64_t i = g.pack.sample_index[s];
    EXPECT_EQ(got.n_tokens[s], g.want_n[i]) << "sample " << i;
    if (g.want_n[i] == 0) continue;
    const double err = std::abs(got.loss_sum[s] - g.want_loss[i]) / std::abs(g.want_loss[i]);
    worst_loss = std::max(worst_loss, err);
    EXPECT_LE(err, kLossRelTol) << "sample " << i;
  }
  model::TensorMap grads = model::zeros_like(setup.adapters);
  m.trainable().download_grads(grads);
  // In PEFT's layout and names (the experts' tensors are laid out differently).
  const io::PeftAdapter gp = io::to_peft_adapter(setup.options, grads, mods, "");
  const io::SafetensorsFile want((dir / "grads.safetensors").string());
  EXPECT_EQ(want.names().size(), grads.size());
  EXPECT_EQ(2 * gp.a.size(), grads.size());
  for (const auto& [module, ga] : gp.a) {
    for (const bool a : {true, false}) {
      const std::string peft_name = a ? io::peft_a_name(module) : io::peft_b_name(module);
      const auto& got_g = a ? ga : gp.b.at(module);
      ASSERT_TRUE(want.contains(peft_name)) << peft_name;
      const core::Tensor w = want.to_float(peft_name);
      ASSERT_EQ(w.shape, got_g.shape) << peft_name;
      const auto r = dt_test::compare(got_g.data, w.data);
      if (r.rel_rms > worst_grad) {
        worst_grad = r.rel_rms;
        worst_name = peft_name;
      }
      EXPECT_LE(r.rel_rms, kGradRelRmsTol) << peft_name << ": " << r.str();
    }
  }
  std::printf(
      "golden_lora %s: %zu modules, worst loss rel err %.3g, worst adapter grad rel RMS "
      "%.3g (%s)\n",
      GetParam().c_str(), mods.size(), worst_loss, worst_grad, worst_name.c_str());
}

// deltatron merge's arithmetic against PEFT's merge_and_unload() (float64, rounded once to F32):
// every merged tensor within one rounding to the base's dtype (PEFT's fixture keeps F32; deltatron
// writes the base's dtype, F16 for varied_rslora).
TEST_P(GoldenLora, MergeMatchesPeftMergeAndUnload) {
  if (dt_test::kOnCuda) GTEST_SKIP() << "merge runs on the host";
  const fs::path dir = fs::path(DT_TEST_DATA) / "golden_lora" / GetParam();
  nlohmann::json meta;
  {
    std::ifstream in(dir / "golden.json");
    meta = nlohmann::json::parse(in);
  }
  io::Checkpoint ck = io::load_checkpoint(
      (fs::path(DT_TEST_DATA) / "golden" / meta["base"].get<std::string>()).string());
  const io::PeftAdapter ad = io::load_peft_adapter((dir / "adapter").string());
  const train::MergeReport rep = train::merge_adapter(ck, ad, "adapter");
  const io::SafetensorsFile want((dir / "merged.safetensors").string());
  EXPECT_EQ(rep.modules, static_cast<int64_t>(want.names().size()));
  const auto named = io::to_checkpoint_names(ck, ck.params);
  double worst = 0;
  for (const std::string& name : want.names()) {
    ASSERT_TRUE(named.count(name)) << name;
    const core::Tensor w = want.to_float(name);
    const auto& got = named.at(name).data;
    ASSERT_EQ(got.size(), w.data.size()) << name;
    const std::string dtype = ck.param_dtypes.at(name);
    const double rel = dtype == "F32" ? 0x1p-23 : dtype == "F16" ? 0x1p-10 : 0x1p-7;
    const double tiny = dtype == "F16" ? 0x1p-24 : 1e-38;  // F16 subnormal spacing
    for (size_t i = 0; i < got.size(); ++i) {
      const double err = std::abs(double(got[i]) - w.data[i]);
      const double ulp = std::max(std::abs(double(w.data[i])) * rel, tiny);
      worst = std::max(worst, err / ulp);
      ASSERT_LE(err, ulp) << name << "[" << i << "]: " << got[i] << " vs " << w.data[i];
    }
  }
  std::printf("golden_lora %s merge: %lld modules, worst difference %.2f ulp of the base dtype\n",
              GetParam().c_str(), static_cast<long long>(rep.modules), worst);
}

// `deltatron score --adapter DIR --grad-out G`: the adapter gradients under the adapter file's
// own names, as the fixture holds them.
TEST_P(GoldenLora, ScoreWritesAdapterGradientsUnderPeftNames) {
  const fs::path dir = fs::path(DT_TEST_DATA) / "golden_lora" / GetParam();
  nlohmann::json meta;
  {
    std::ifstream in(dir / "golden.json");
    meta = nlohmann::json::parse(in);
  }
  const dt_test::TempDir tmp("score_lora");
  const fs::path base = fs::path(DT_TEST_DATA) / "golden" / meta["base"].get<std::string>();
  train::ScoreOptions so;
  so.model_dir = base.string();
  so.adapter_dir = (dir / "adapter").string();
  so.data_path = (base / "samples.jsonl").string();
  so.output_path = (tmp.path / "scores.jsonl").string();
  so.grad_out = (tmp.path / "grads.safetensors").string();
  so.mtp_scale = 0;
  so.quiet = true;
  so.device = dt_test::kOnCuda ? "cuda" : "cpu";
  so.precision = "fp32";
  train::run_score(so);
  const io::SafetensorsFile got(so.grad_out), want((dir / "grads.safetensors").string());
  ASSERT_EQ(got.names(), want.names());
  for (const std::string& name : want.names()) {
    const auto r = dt_test::compare(got.to_float(name).data, want.to_float(name).data);
    EXPECT_LE(r.rel_rms, kGradRelRmsTol) << name << ": " << r.str();
  }
}

// On CUDA in bf16 (the base frozen in bf16, the adapters' bf16 compute copies feeding the GEMMs;
// gradients f32) against the fp32 CUDA model, on PEFT's own adapters over HF-initialised weights
// (well conditioned, unlike a random tiny model: LoraModel.Bf16TracksFp32). The bound per adapter
// tensor is the conditioned bf16 bound of docs/tolerances.md: max(5e-2, 3 x the fp32 gradient's own
// change when the base weights are rounded to bf16); losses 2e-2.
TEST_P(GoldenLora, Bf16TracksFp32OnCuda) {
  if (!dt_test::kOnCuda) GTEST_SKIP() << "bf16 compute is CUDA's";
  const fs::path dir = fs::path(DT_TEST_DATA) / "golden_lora" / GetParam();
  nlohmann::json meta;
  {
    std::ifstream in(dir / "golden.json");
    meta = nlohmann::json::parse(in);
  }
  dt_test::GoldenFixture g;
  dt_test::load_golden(fs::path(DT_TEST_DATA) / "golden" / meta["base"].get<std::string>(), g);
  if (HasFatalFailure()) return;
  const model::LoraSetup setup =
      io::to_lora_setup(io::load_peft_adapter((dir / "adapter").string()));
  const model::TensorMap rounded = dt_test::rounded_to_bf16(g.ck.params);
  model::ModelOptions opt;
  opt.mtp_ce_scale = 0.0f;
  struct Run {
    std::vector<double> loss;
    model::TensorMap g;
  };
  const auto run = [&](core::DType dt, const model::TensorMap& w) {
    Run r{{}, model::zeros_like(setup.adapters)};
    model::Model m(core::Device::cuda, dt, g.ck.config, w, {}, &setup);
    r.loss = m.fwd_bwd(g.pack, true, opt).loss_sum;
    m.trainable().download_grads(r.g);
    return r;
  };
  const Run f32 = run(core::DType::f32, g.ck.params), f32r = run(core::DType::f32, rounded),
            bf16 = run(core::DType::bf16, g.ck.params);
  for (size_t i = 0; i < f32.loss.size(); ++i)
    EXPECT_NEAR(bf16.loss[i], f32.loss[i], 2e-2 * std::abs(f32.loss[i])) << "sample " << i;
  const dt_test::Bf16Worst worst =
      dt_test::expect_bf16_within_conditioned_bound(f32.g, f32r.g, bf16.g);
  std::printf(
      "golden_lora %s bf16 vs fp32 on CUDA: worst adapter gradient at %.2f of its bound (%s)\n",
      GetParam().c_str(), worst.ratio, worst.name.c_str());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenLora, ::testing::ValuesIn(lora_cases()),
                         [](const auto& info) { return info.param; });

}  // namespace

// PEFT's routed-expert layout to the model's and back: bit for bit, under the same names.
TEST(GoldenLoraLayout, ExpertAdapterRoundTripsThroughTheModelLayout) {
  const fs::path dir = fs::path(DT_TEST_DATA) / "golden_lora" / "moe_experts" / "adapter";
  const io::PeftAdapter ad = io::load_peft_adapter(dir.string());
  ASSERT_EQ(ad.target_parameters.size(), 2u);
  const model::LoraSetup s = io::to_lora_setup(ad);
  EXPECT_TRUE(s.options.experts);
  const io::Checkpoint ck =
      io::load_checkpoint((fs::path(DT_TEST_DATA) / "golden" / "moe_text_fused_tied").string());
  const io::PeftAdapter back = io::to_peft_adapter(
      s.options, s.adapters, model::lora_modules(ck.config, s.options, "test"), "");
  ASSERT_EQ(back.a.size(), ad.a.size());
  for (const auto& [m, a] : ad.a) {
    ASSERT_TRUE(back.a.count(m)) << m;
    EXPECT_EQ(back.a.at(m).shape, a.shape) << m;
    EXPECT_EQ(back.a.at(m).data, a.data) << m;
    EXPECT_EQ(back.b.at(m).shape, ad.b.at(m).shape) << m;
    EXPECT_EQ(back.b.at(m).data, ad.b.at(m).data) << m;
  }
  EXPECT_EQ(back.target_parameters, ad.target_parameters);
}
