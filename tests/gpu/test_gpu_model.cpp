// GPU model-level parity (label gpu): the CUDA model against the Hugging Face golden fixtures, pack
// invariance on the GPU, the CUDA model against the CPU reference model with router losses, a mixer
// shape sweep against the CPU model, and the CUDA engine's optimizer steps against the CPU engine
// (plus bitwise run-to-run determinism of the model and of bf16 training steps).
//
// Bounds (docs/tolerances.md). fp32 mode: the CPU bounds (loss 1e-5 relative, gradients 1e-4
// relative RMS per tensor; parameters after 3 AdamW steps 1e-5). bf16 mode (bf16 weights and
// activations): golden and mixer losses 2e-2; pack invariance loss 1e-2 and, since every token's
// forward is the same computation packed or alone, the fp32 gradient and router-loss bounds.
// bf16 gradients: max(5e-2, 3 x the CPU model's own gradient change when its weights get
// bf16-level noise). The golden fixtures' GDN layers are ill-conditioned: that noise alone moves
// the CPU's gradients by up to 0.33-0.65 relative RMS (conv1d, linear_attn.norm, in_proj_*,
// input_layernorm), so no bf16 computation can meet a fixed 5e-2 there; the bound tracks that
// instead of hiding it (flash-attention's rule), and each case prints both numbers. The mixer
// sweep's random GDN models use the same rule in fp32 with one-ulp noise (up to 2.4e-4).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/pack.h"
#include "data/sample.h"
#include "golden_fixture.h"
#include "gpu_model_fixture.h"
#include "io/checkpoint.h"
#include "io/hf_layout.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "model_fixture.h"
#include "test_util.h"
#include "train/engine.h"
#include "train/objective.h"
#include "train/optimizer.h"

using namespace deltatron;
using dt_gpu_test::compare_grads;
using dt_gpu_test::mode_name;
using dt_gpu_test::rel;
using dt_gpu_test::Scored;
using dt_gpu_test::Worst;
namespace fs = std::filesystem;

namespace {

constexpr double kLossF32 = 1e-5, kGradF32 = 1e-4;    // the CPU bounds
constexpr double kLossBf16 = 2e-2, kGradBf16 = 5e-2;  // golden, bf16 mode
constexpr double kPackLossBf16 = 1e-2;                // pack invariance, bf16 mode

// ---- 1. golden fixtures on the GPU ---------------------------------------------------------

struct GoldenCase {
  std::string fixture;
  core::DType dt;
};
void PrintTo(const GoldenCase& k, std::ostream* os) { *os << k.fixture << " " << mode_name(k.dt); }

std::vector<GoldenCase> golden_cases() {
  std::vector<std::string> names;
  const fs::path root = dt_gpu_test::test_data_dir() / "golden";
  if (fs::is_directory(root))
    for (const auto& e : fs::directory_iterator(root))
      if (e.is_directory() && fs::exists(e.path() / "expected.jsonl"))
        names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  std::vector<GoldenCase> out;
  for (auto dt : {core::DType::f32, core::DType::bf16})
    for (const auto& n : names) out.push_back({n, dt});
  return out;
}

class GpuGolden : public ::testing::TestWithParam<GoldenCase> {};

// The same pack and objective as test_golden.cpp (every sample, reverse order, alignment 8).
TEST_P(GpuGolden, PackedLossesAndGradientsMatchHuggingFace) {
  const GoldenCase& k = GetParam();
  const bool f32 = k.dt == core::DType::f32;
  const double loss_tol = f32 ? kLossF32 : kLossBf16, grad_tol = f32 ? kGradF32 : kGradBf16;
  const fs::path dir = dt_gpu_test::test_data_dir() / "golden" / k.fixture;
  dt_test::GoldenFixture g;
  dt_test::load_golden(dir, g);
  if (HasFatalFailure()) return;
  const io::Checkpoint& ck = g.ck;
  const auto& samples = g.samples;
  const double mtp_scale = g.mtp_scale;
  const auto &want_loss = g.want_loss, &want_mtp = g.want_mtp;
  const auto &want_n = g.want_n, &want_mtp_n = g.want_mtp_n;
  const data::Pack& pack = g.pack;
  model::ModelOptions opt;
  opt.mtp_ce_scale = static_cast<float>(mtp_scale);
  model::Model m(core::Device::cuda, k.dt, ck.config, ck.params);
  const Scored got = dt_gpu_test::score_gpu(m, ck.params, pack, opt);

  Worst loss;
  for (int s = 0; s < pack.num_samples(); ++s) {
    const int64_t i = pack.sample_index[s];
    EXPECT_EQ(got.loss.n_tokens[s], want_n[i]) << "sample " << i;
    if (want_n[i] == 0) {
      EXPECT_EQ(got.loss.loss_sum[s], 0.0) << "sample " << i;
      continue;
    }
    const double e = rel(got.loss.loss_sum[s], want_loss[i]);
    loss.add(e, "sample " + std::to_string(i));
    EXPECT_LE(e, loss_tol) << "sample " << i << ": got " << got.loss.loss_sum[s] << " want "
                           << want_loss[i];
  }
  for (int s = 0; s < pack.num_samples() && !want_mtp.empty(); ++s) {
    const int64_t i = pack.sample_index[s];
    EXPECT_EQ(got.loss.mtp_n_tokens[s], want_mtp_n[i]) << "MTP sample " << i;
    if (want_mtp_n[i] == 0) {
      EXPECT_EQ(got.loss.mtp_loss_sum[s], 0.0) << "MTP sample " << i;
      continue;
    }
    const double e = rel(got.loss.mtp_loss_sum[s], want_mtp[i]);
    loss.add(e, "MTP sample " + std::to_string(i));
    EXPECT_LE(e, loss_tol) << "MTP sample " << i << ": got " << got.loss.mtp_loss_sum[s] << " want "
                           << want_mtp[i];
  }

  const auto named = io::to_checkpoint_names(ck, got.grads);
  const io::SafetensorsFile want_grads((dir / "grads.safetensors").string());
  EXPECT_EQ(want_grads.names().size(), named.size());
  model::TensorMap want_named;
  for (const auto& [name, g] : named) {
    ASSERT_TRUE(want_grads.contains(name)) << "fixture lacks gradient " << name;
    core::Tensor w = want_grads.to_float(name);
    ASSERT_EQ(w.shape, g.shape) << name;
    want_named.emplace(name, std::move(w));
  }
  // bf16: the bound of each tensor also covers 3x what bf16-level weight noise alone does to the
  // CPU model's gradients (the GDN fixtures are ill-conditioned: see the file comment).
  std::map<std::string, double> sens;
  Worst worst_sens, ratio;
  if (f32) {
    for (const auto& [name, t] : want_named) sens[name] = 0.0;
  } else {
    const auto base =
        io::to_checkpoint_names(ck, dt_gpu_test::score_cpu(ck.config, ck.params, pack, opt).grads);
    for (uint64_t seed = 1; seed <= dt_gpu_test::kNoiseDraws; ++seed) {
      const auto moved = dt_gpu_test::perturb_weights(ck.params, dt_gpu_test::kBf16Noise, seed);
      dt_gpu_test::sensitivity(
          io::to_checkpoint_names(ck, dt_gpu_test::score_cpu(ck.config, moved, pack, opt).grads),
          base, sens);
    }
    for (const auto& [name, v] : sens) worst_sens.add(v, name);
  }
  const Worst grad = dt_gpu_test::compare_grads_conditioned(named, want_named, sens, grad_tol,
                                                            k.fixture, f32 ? nullptr : &ratio);
  std::printf("gpu golden %s [%s]: %zu samples, worst loss rel err %s, worst grad rel RMS %s",
              k.fixture.c_str(), mode_name(k.dt), samples.size(), loss.str().c_str(),
              grad.str().c_str());
  if (!f32)
    std::printf("; CPU grad change under bf16 weight noise up to %s, worst err/that %s",
                worst_sens.str().c_str(), ratio.str().c_str());
  std::printf("\n");
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GpuGolden, ::testing::ValuesIn(golden_cases()),
                         [](const auto& info) {
                           return info.param.fixture + "_" + mode_name(info.param.dt);
                         });

// ---- 2. pack invariance on the GPU -----------------------------------------------------------

struct PackCase {
  std::string name;
  bool moe;  // MoE + MTP with seq aux and z-loss; else the dense config without MTP
  int64_t align;
  core::DType dt;
};
void PrintTo(const PackCase& k, std::ostream* os) { *os << k.name; }

class GpuPackInvariance : public ::testing::TestWithParam<PackCase> {};

// The models, samples and orders of test_model_pack.cpp (dense) and test_model_moe_mtp.cpp (MoE).
TEST_P(GpuPackInvariance, PackedEqualsSamplesAlone) {
  const PackCase& k = GetParam();
  const bool f32 = k.dt == core::DType::f32;
  model::Config c =
      model::parse_config(dt_test::tiny_config_json(k.moe ? dt_gpu_test::moe_mtp_overrides()
                                                          : nlohmann::json::object()),
                          "tiny");
  c.mtp_enabled = k.moe;
  const model::TensorMap p = dt_test::random_params(c, k.moe ? 21 : 7);
  const std::vector<int> lengths = {1, 2, 3, 5, 64, 65, 130};
  const auto samples = dt_test::make_samples(lengths, c.vocab_size, k.moe ? 4 : 11, k.moe ? 3 : 4);
  const std::vector<int64_t> order =
      k.moe ? std::vector<int64_t>{5, 0, 6, 3, 1, 4, 2} : std::vector<int64_t>{4, 0, 6, 2, 1, 5, 3};
  model::ModelOptions opt;
  if (k.moe) {
    opt.mtp_ce_scale = 0.3f;
    opt.router.aux_coef = 0.05;
    opt.router.aux_type = model::AuxLossType::seq;
    opt.router.z_coef = 0.01;
  }
  model::Model m(core::Device::cuda, k.dt, c, p);

  // Alone: one pack per sample; the model accumulates their gradients (never zeroed between).
  const int64_t S = static_cast<int64_t>(samples.size());
  std::vector<double> alone_loss(S), alone_mtp(S);
  double alone_router = 0;
  m.params().zero_grads();
  for (int64_t i = 0; i < S; ++i) {
    const model::PackLoss l = m.fwd_bwd(dt_test::pack_of(samples, {i}, 1), true, opt);
    alone_loss[i] = l.loss_sum[0];
    if (k.moe) alone_mtp[i] = l.mtp_loss_sum[0];
    alone_router += l.router_loss;
  }
  model::TensorMap alone_grads = model::zeros_like(p);
  m.params().download_grads(alone_grads);

  const Scored packed =
      dt_gpu_test::score_gpu(m, p, dt_test::pack_of(samples, order, k.align), opt);
  const double loss_tol = f32 ? kLossF32 : kPackLossBf16;
  Worst loss, mtp;
  for (size_t s = 0; s < order.size(); ++s) {
    const int64_t i = order[s];
    const std::string who =
        "sample " + std::to_string(i) + " (len " + std::to_string(lengths[i]) + ")";
    const double e = rel(packed.loss.loss_sum[s], alone_loss[i]);
    loss.add(e, who);
    EXPECT_LE(e, loss_tol) << who << ": packed " << packed.loss.loss_sum[s] << " alone "
                           << alone_loss[i];
    if (!k.moe) continue;
    const double em = rel(packed.loss.mtp_loss_sum[s], alone_mtp[i]);
    mtp.add(em, who);
    EXPECT_LE(em, loss_tol) << "MTP " << who << ": packed " << packed.loss.mtp_loss_sum[s]
                            << " alone " << alone_mtp[i];
  }
  double router_err = 0;
  if (k.moe) {
    EXPECT_GT(alone_router, 0.0);
    router_err = rel(packed.loss.router_loss, alone_router);
    // bf16 mode: measured only (a router top-k flip between the two runs moves it legitimately).
    if (f32) {
      EXPECT_LE(router_err, kLossF32)
          << "router loss: packed " << packed.loss.router_loss << " alone " << alone_router;
    }
  }
  // Both modes: every token's forward is the same computation packed or alone (measured: bf16
  // differs only by the fp32 summation order of the parameter gradients), so the fp32 bounds.
  const Worst grad = compare_grads(packed.grads, alone_grads, kGradF32, k.name);
  std::printf(
      "gpu pack invariance %s [%s]: worst loss rel err %s, MTP %s, router %.3g, "
      "worst grad rel RMS %s\n",
      k.name.c_str(), mode_name(k.dt), loss.str().c_str(), mtp.str().c_str(), router_err,
      grad.str().c_str());
}

std::vector<PackCase> pack_cases() {
  std::vector<PackCase> out;
  for (auto dt : {core::DType::f32, core::DType::bf16}) {
    const std::string d = mode_name(dt);
    out.push_back({"dense_align8_" + d, false, 8, dt});
    out.push_back({"dense_align64_" + d, false, 64, dt});
    out.push_back({"moe_mtp_seq_align1_" + d, true, 1, dt});
    out.push_back({"moe_mtp_seq_align64_" + d, true, 64, dt});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Variants, GpuPackInvariance, ::testing::ValuesIn(pack_cases()),
                         [](const auto& info) { return info.param.name; });

// ---- 3. GPU model vs the CPU reference model -------------------------------------------------

struct CpuCase {
  std::string name;
  model::AuxLossType aux;
};
void PrintTo(const CpuCase& k, std::ostream* os) { *os << k.name; }

class GpuVsCpu : public ::testing::TestWithParam<CpuCase> {};

// One random MoE + MTP model; two packs scored in turn (gradients accumulating), with the aux
// loss of the case and z-loss; global aux uses running counts over both packs, as the trainer.
TEST_P(GpuVsCpu, LossesRouterLossesAndGradientsMatch) {
  const CpuCase& k = GetParam();
  model::Config c =
      model::parse_config(dt_test::tiny_config_json(dt_gpu_test::moe_mtp_overrides()), "tiny");
  c.mtp_enabled = true;
  const model::TensorMap p = dt_test::random_params(c, 13);
  const std::vector<int> lengths = {1, 2, 3, 5, 64, 65, 130, 17};
  const auto samples = dt_test::make_samples(lengths, c.vocab_size, 6, 3);
  const std::vector<data::Pack> packs = {dt_test::pack_of(samples, {5, 0, 6, 3}, 8),
                                         dt_test::pack_of(samples, {1, 7, 4, 2}, 8)};
  model::ModelOptions opt;
  opt.mtp_ce_scale = 0.3f;
  opt.router.aux_coef = 0.05;
  opt.router.aux_type = k.aux;
  opt.router.seq_weight = 1.0 / 8;
  opt.router.z_coef = 0.01;
  opt.router.z_weight = 1.0 / 287;  // real tokens of the step
  model::GlobalRouterCounts run_cpu, run_gpu;
  run_cpu.step_tokens = run_gpu.step_tokens = 287;

  model::Model m(core::Device::cuda, core::DType::f32, c, p);
  m.params().zero_grads();
  model::TensorMap cpu_grads = model::zeros_like(p);
  Worst loss, router;
  for (size_t b = 0; b < packs.size(); ++b) {
    const data::Pack& pack = packs[b];
    model::ModelOptions oc = opt, og = opt;
    if (k.aux == model::AuxLossType::global) {
      oc.running_counts = &run_cpu;
      og.running_counts = &run_gpu;
    }
    const model::PackLoss want =
        model::model_fwd_bwd(core::Device::cpu, c, p, pack, &cpu_grads, oc);
    const model::PackLoss got = m.fwd_bwd(pack, true, og);
    ASSERT_EQ(got.loss_sum.size(), want.loss_sum.size());
    ASSERT_EQ(got.mtp_loss_sum.size(), want.mtp_loss_sum.size());
    for (size_t s = 0; s < want.loss_sum.size(); ++s) {
      const std::string who =
          "pack " + std::to_string(b) + " sample " + std::to_string(pack.sample_index[s]);
      EXPECT_EQ(got.n_tokens[s], want.n_tokens[s]) << who;
      EXPECT_EQ(got.mtp_n_tokens[s], want.mtp_n_tokens[s]) << who;
      const double e = rel(got.loss_sum[s], want.loss_sum[s]);
      const double em = rel(got.mtp_loss_sum[s], want.mtp_loss_sum[s]);
      loss.add(e, who);
      loss.add(em, "MTP " + who);
      EXPECT_LE(e, kLossF32) << who << ": gpu " << got.loss_sum[s] << " cpu " << want.loss_sum[s];
      EXPECT_LE(em, kLossF32) << "MTP " << who << ": gpu " << got.mtp_loss_sum[s] << " cpu "
                              << want.mtp_loss_sum[s];
    }
    EXPECT_GT(want.router_loss, 0.0);
    const double er = rel(got.router_loss, want.router_loss);
    router.add(er, "pack " + std::to_string(b));
    EXPECT_LE(er, kLossF32) << "router loss, pack " << b << ": gpu " << got.router_loss << " cpu "
                            << want.router_loss;
  }
  model::TensorMap gpu_grads = model::zeros_like(p);
  m.params().download_grads(gpu_grads);
  const Worst grad = compare_grads(gpu_grads, cpu_grads, kGradF32, k.name);

  if (k.aux == model::AuxLossType::global) {
    // The running counts are integers (top-k selections of real tokens): equal exactly.
    EXPECT_EQ(run_gpu.host_counts(), run_cpu.host_counts());
    EXPECT_EQ(run_gpu.host_tokens(), run_cpu.host_tokens());
    EXPECT_GE(run_cpu.layers.size(), size_t(c.num_hidden_layers));
    model::GlobalRouterCounts count_cpu, count_gpu;
    for (const auto& pack : packs) {
      model::model_count_routes(core::Device::cpu, c, p, pack, count_cpu);
      m.count_routes(pack, count_gpu);
    }
    EXPECT_EQ(count_gpu.host_counts(), count_cpu.host_counts());
    EXPECT_EQ(count_gpu.host_tokens(), count_cpu.host_tokens());
  } else {
    // Forward only gives the same losses as forward + backward, bit for bit.
    const model::PackLoss a = m.fwd_bwd(packs[1], false, opt);
    m.params().zero_grads();
    const model::PackLoss b = m.fwd_bwd(packs[1], true, opt);
    EXPECT_EQ(a.loss_sum, b.loss_sum);
    EXPECT_EQ(a.mtp_loss_sum, b.mtp_loss_sum);
    EXPECT_EQ(a.router_loss, b.router_loss);
  }
  std::printf("gpu vs cpu %s [f32]: worst loss rel err %s, router loss %s, worst grad rel RMS %s\n",
              k.name.c_str(), loss.str().c_str(), router.str().c_str(), grad.str().c_str());
}

INSTANTIATE_TEST_SUITE_P(
    RouterLosses, GpuVsCpu,
    ::testing::Values(CpuCase{"seq_aux_zloss", model::AuxLossType::seq},
                      CpuCase{"global_running_aux_zloss", model::AuxLossType::global},
                      CpuCase{"micro_batch_aux_zloss", model::AuxLossType::micro_batch}),
    [](const auto& info) { return info.param.name; });

// One mixer type at a time on the golden fixtures' shapes (dense_text_tied's config: head_dim 32,
// GDN K = 16, V = 8) and on the real preset head sizes, random weights, samples that cross the
// 64-token chunk and attention tile boundaries: the CUDA model vs the CPU model in both modes. The
// random weights make the GDN models ill-conditioned, so each gradient bound also covers 3x the
// CPU's own gradient change under one-ulp (f32) or bf16-level (bf16) weight perturbations.
struct ShapeCase {
  std::string name;
  nlohmann::json overrides;  // merged into dense_text_tied's config.json
  // Multiplies the matrices, conv1d weights and norm offsets (not A_log, dt_bias or the gated-norm
  // weights): 0.3 gives a GDN model whose gradients move at most ~2.5e-2 under bf16 noise.
  double weight_scale = 1.0;
};
void PrintTo(const ShapeCase& k, std::ostream* os) { *os << k.name; }

class GpuMixerShapes : public ::testing::TestWithParam<ShapeCase> {};

TEST_P(GpuMixerShapes, MatchesCpuModel) {
  const ShapeCase& k = GetParam();
  std::ifstream in(dt_gpu_test::test_data_dir() / "golden" / "dense_text_tied" / "config.json");
  ASSERT_TRUE(in.good()) << "missing golden/dense_text_tied/config.json";
  nlohmann::json j = nlohmann::json::parse(in);
  j.merge_patch(k.overrides);
  const model::Config c = model::parse_config(j, k.name);
  model::TensorMap p = dt_test::random_params(c, 31);
  for (auto& [name, t] : p) {
    const bool keep = name.ends_with("A_log") || name.ends_with("dt_bias") ||
                      name.ends_with("linear_attn.norm.weight");
    if (!keep)
      for (auto& v : t.data) v = static_cast<float>(v * k.weight_scale);
  }
  const std::vector<int> lengths = {130, 128, 100, 5, 64, 1, 200, 65};
  const auto samples = dt_test::make_samples(lengths, c.vocab_size, 8, 4);
  const data::Pack pack = dt_test::pack_of(samples, {0, 1, 2, 3, 4, 5, 6, 7}, 8);
  const Scored want = dt_gpu_test::score_cpu(c, p, pack, {});
  for (auto dt : {core::DType::f32, core::DType::bf16}) {
    const bool f32 = dt == core::DType::f32;
    model::Model m(core::Device::cuda, dt, c, p);
    const Scored got = dt_gpu_test::score_gpu(m, p, pack, {});
    Worst loss;
    for (size_t s = 0; s < lengths.size(); ++s) {
      const std::string who =
          "sample " + std::to_string(s) + " (len " + std::to_string(lengths[s]) + ")";
      const double e = rel(got.loss.loss_sum[s], want.loss.loss_sum[s]);
      loss.add(e, who);
      EXPECT_LE(e, f32 ? kLossF32 : kLossBf16)
          << mode_name(dt) << " " << who << ": gpu " << got.loss.loss_sum[s] << " cpu "
          << want.loss.loss_sum[s];
    }
    const auto sens = dt_gpu_test::cpu_sensitivity(c, p, pack, {}, want.grads,
                                                   f32 ? 0.0 : dt_gpu_test::kBf16Noise);
    Worst worst_sens, ratio;
    for (const auto& [name, v] : sens) worst_sens.add(v, name);
    const Worst grad = dt_gpu_test::compare_grads_conditioned(got.grads, want.grads, sens,
                                                              f32 ? kGradF32 : kGradBf16,
                                                              k.name + " " + mode_name(dt), &ratio);
    std::printf(
        "gpu mixer shapes %s [%s] vs cpu: worst loss rel err %s, worst grad rel RMS %s; "
        "CPU grad change under %s weight noise up to %s, worst err/that %s\n",
        k.name.c_str(), mode_name(dt), loss.str().c_str(), grad.str().c_str(),
        f32 ? "1-ulp" : "bf16", worst_sens.str().c_str(), ratio.str().c_str());
  }
}

nlohmann::json only(const char* type, int layers) {
  return {{"num_hidden_layers", layers}, {"layer_types", std::vector<std::string>(layers, type)}};
}
// The rotary fraction that keeps 8 rotary dimensions (mrope_section [2, 1, 1]).
std::pair<std::string, nlohmann::json> kRope(double f) {
  return {"rope_parameters", {{"partial_rotary_factor", f}}};
}
nlohmann::json with(nlohmann::json a, const nlohmann::json& b) {
  a.merge_patch(b);
  return a;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, GpuMixerShapes,
    ::testing::Values(ShapeCase{"fixture_config", nlohmann::json::object()},
                      ShapeCase{"attention_hd32", only("full_attention", 2)},
                      ShapeCase{"gdn_k16_v8", only("linear_attention", 2)},
                      ShapeCase{"fixture_config_weights_x03", nlohmann::json::object(), 0.3},
                      ShapeCase{"gdn_k16_v8_weights_x03", only("linear_attention", 2), 0.3},
                      ShapeCase{"attention_hd16",
                                with(only("full_attention", 2), {{"head_dim", 16}, kRope(0.5)})},
                      ShapeCase{"gdn_k8_v8",
                                with(only("linear_attention", 2),
                                     {{"linear_key_head_dim", 8}, {"linear_value_head_dim", 8}})},
                      ShapeCase{"attention_hd256_real",
                                with(only("full_attention", 1), {{"head_dim", 256},
                                                                 kRope(8.0 / 256),
                                                                 {"num_attention_heads", 2},
                                                                 {"num_key_value_heads", 1}})},
                      ShapeCase{"gdn_k128_v128_real", with(only("linear_attention", 1),
                                                           {{"linear_key_head_dim", 128},
                                                            {"linear_value_head_dim", 128},
                                                            {"linear_num_key_heads", 1},
                                                            {"linear_num_value_heads", 2}})}),
    [](const auto& info) { return info.param.name; });

// Run to run: the same pack on the same model gives bitwise the same losses and gradients, and
// so does a second model built from the same parameters (no state leaks between calls).
TEST(GpuModel, FwdBwdIsBitwiseDeterministic) {
  model::Config c =
      model::parse_config(dt_test::tiny_config_json(dt_gpu_test::moe_mtp_overrides()), "tiny");
  c.mtp_enabled = true;
  const model::TensorMap p = dt_test::random_params(c, 13);
  const auto samples = dt_test::make_samples({1, 2, 3, 5, 64, 65, 130}, c.vocab_size, 6, 3);
  const data::Pack pack = dt_test::pack_of(samples, {5, 0, 6, 3, 1, 4, 2}, 64);
  model::ModelOptions opt;
  opt.mtp_ce_scale = 0.3f;
  opt.router.aux_coef = 0.05;
  opt.router.aux_type = model::AuxLossType::seq;
  opt.router.z_coef = 0.01;
  for (auto dt : {core::DType::f32, core::DType::bf16}) {
    model::Model m(core::Device::cuda, dt, c, p);
    const Scored a = dt_gpu_test::score_gpu(m, p, pack, opt);
    const Scored b = dt_gpu_test::score_gpu(m, p, pack, opt);
    model::Model m2(core::Device::cuda, dt, c, p);
    const Scored d = dt_gpu_test::score_gpu(m2, p, pack, opt);
    size_t differing = 0;
    for (const Scored* x : {&b, &d}) {
      const char* which = x == &b ? "second call" : "second model";
      EXPECT_EQ(x->loss.loss_sum, a.loss.loss_sum) << mode_name(dt) << " " << which;
      EXPECT_EQ(x->loss.mtp_loss_sum, a.loss.mtp_loss_sum) << mode_name(dt) << " " << which;
      EXPECT_EQ(x->loss.router_loss, a.loss.router_loss) << mode_name(dt) << " " << which;
      for (const auto& [name, t] : a.grads) {
        const auto& u = x->grads.at(name).data;
        if (std::memcmp(t.data.data(), u.data(), u.size() * sizeof(float)) == 0) continue;
        ++differing;
        ADD_FAILURE() << mode_name(dt) << " " << which << ": gradient " << name
                      << " differs: " << dt_test::compare(u, t.data).str();
      }
    }
    std::printf("gpu model determinism [%s]: %zu gradient tensors differ\n", mode_name(dt),
                differing);
  }
}

// Teacher-forced exact match (eval accuracy): per sample, every label token's argmax must equal
// its target; rows without a label do not count. A length-1 sample has no label token, so it
// is vacuously exact: the GPU flags must match the CPU's there too.
TEST(GpuModel, ExactMatchFlagsMatchCpu) {
  const model::Config c =
      model::parse_config(dt_test::tiny_config_json(nlohmann::json::object()), "tiny");
  const model::TensorMap p = dt_test::random_params(c, 19);
  const auto samples = dt_test::make_samples({1, 2, 3, 5, 64, 65, 130}, c.vocab_size, 6, 3);
  const data::Pack pack = dt_test::pack_of(samples, {5, 0, 6, 3, 1, 4, 2}, 8);
  model::ModelOptions opt;
  opt.want_correct = true;
  const model::PackLoss want = model::model_fwd_bwd(core::Device::cpu, c, p, pack, nullptr, opt);
  ASSERT_GT(std::count(want.exact.begin(), want.exact.end(), 1), 0) << "no exact sample";
  model::Model m(core::Device::cuda, core::DType::f32, c, p);
  const model::PackLoss got = m.fwd_bwd(pack, false, opt);
  EXPECT_EQ(got.exact, want.exact);
}

// Activation recomputation reruns each layer's forward from its saved input: with deterministic
// kernels the losses and gradients must equal the stored-activation run bitwise (MoE + MTP,
// router losses with running global counts, which the rerun must not count twice).
TEST(GpuModel, RecomputeGivesBitwiseEqualGradients) {
  model::Config c =
      model::parse_config(dt_test::tiny_config_json(dt_gpu_test::moe_mtp_overrides()), "tiny");
  c.mtp_enabled = true;
  const model::TensorMap p = dt_test::random_params(c, 17);
  const auto samples = dt_test::make_samples({1, 2, 3, 5, 64, 65, 130}, c.vocab_size, 6, 3);
  const data::Pack pack = dt_test::pack_of(samples, {5, 0, 6, 3, 1, 4, 2}, 8);
  for (auto dt : {core::DType::f32, core::DType::bf16}) {
    Scored r[2];
    for (int recompute = 0; recompute < 2; ++recompute) {
      model::GlobalRouterCounts running;
      running.step_tokens = double(pack.N);
      model::ModelOptions opt;
      opt.mtp_ce_scale = 0.3f;
      opt.router.aux_coef = 0.05;
      opt.router.aux_type = model::AuxLossType::global;
      opt.router.z_coef = 0.01;
      opt.running_counts = &running;
      model::Model m(core::Device::cuda, dt, c, p);
      m.set_recompute(recompute == 1);
      r[recompute] = dt_gpu_test::score_gpu(m, p, pack, opt);
    }
    EXPECT_EQ(r[1].loss.loss_sum, r[0].loss.loss_sum) << mode_name(dt);
    EXPECT_EQ(r[1].loss.mtp_loss_sum, r[0].loss.mtp_loss_sum) << mode_name(dt);
    EXPECT_EQ(r[1].loss.router_loss, r[0].loss.router_loss) << mode_name(dt);
    for (const auto& [name, t] : r[0].grads) {
      const auto& u = r[1].grads.at(name).data;
      EXPECT_EQ(std::memcmp(t.data.data(), u.data(), u.size() * sizeof(float)), 0)
          << mode_name(dt) << ": gradient " << name
          << " differs with recomputation: " << dt_test::compare(u, t.data).str();
    }
  }
}

// ---- 4. engines: optimizer steps -------------------------------------------------------------

struct EngineRun {
  model::TensorMap initial, params, exp_avg;
  std::vector<model::TensorMap> grads;  // per step, before clipping
  std::vector<double> loss, grad_norm;
};

// 3 optimizer steps of two micro-batches each (the trainer's loop: zero_grads, fwd_bwd per pack
// with the step's options and running global counts, clip(1.0), AdamW step), then sync_to_host.
// The model is MoE + MTP with attention layers only: with GDN layers and these random weights the
// CPU engine alone, started one ulp away, ends 3.8e-5 away after 3 steps (Adam amplifies the
// ill-conditioned GDN gradients), over the 1e-5 bound; attention-only: 3.6e-7. GDN parity is
// covered by the golden and pack tests.
EngineRun train_steps(const std::string& device, const std::string& precision) {
  nlohmann::json o = dt_gpu_test::moe_mtp_overrides();
  o["layer_types"] = {"full_attention", "full_attention", "full_attention", "full_attention"};
  model::Config c = model::parse_config(dt_test::tiny_config_json(o), "tiny");
  c.mtp_enabled = true;
  EngineRun r;
  r.params = dt_test::random_params(c, 17);
  r.initial = r.params;
  const std::vector<int> lengths = {7, 40, 1, 65, 23, 130, 3, 64, 17, 2, 90, 31};
  const auto samples = dt_test::make_samples(lengths, c.vocab_size, 9, 3);
  train::TrainConfig cfg;
  cfg.mtp_scale = 0.3;
  cfg.router_aux_coef = 0.05;
  cfg.router_aux_type = "global";
  cfg.z_loss_coef = 0.01;
  train::AdamWOptions ao;
  ao.beta1 = 0.9;
  ao.beta2 = 0.95;
  ao.weight_decay = 0.1;
  train::AdamW adamw(r.params, ao);
  const auto engine = train::make_engine(device, precision, c, r.params, &adamw);
  for (int64_t step = 0; step < 3; ++step) {
    const int64_t b = 4 * step;
    const std::vector<data::Pack> packs = {dt_test::pack_of(samples, {b, b + 1}, 8),
                                           dt_test::pack_of(samples, {b + 2, b + 3}, 8)};
    const train::StepCounts n = train::count_step(packs, c.mtp_enabled);
    model::ModelOptions mo = train::step_options(cfg, c, n);
    model::GlobalRouterCounts running;
    running.step_tokens = double(n.real_tokens);
    mo.running_counts = &running;
    engine->zero_grads();
    double ce = 0;
    for (const auto& pack : packs)
      for (double x : engine->fwd_bwd(pack, true, mo).loss_sum) ce += x;
    r.loss.push_back(ce / double(n.label_tokens));
    r.grads.push_back(model::zeros_like(r.params));
    engine->grads_to_host(r.grads.back());
    r.grad_norm.push_back(engine->clip(1.0));
    engine->step(adamw, 1e-3);
  }
  engine->sync_to_host(r.params, adamw);
  r.exp_avg = adamw.exp_avg();
  return r;
}

// Step 0 starts from the same parameters: its gradients obey the model bounds. Later steps start
// from parameters that differ by the earlier steps' rounding (measured, printed).
TEST(GpuEngine, ThreeAdamWStepsMatchCpuEngine) {
  const EngineRun cpu = train_steps("cpu", "fp32");
  const EngineRun gpu = train_steps("cuda", "fp32");
  Worst loss, norm;
  std::string later;
  for (size_t s = 0; s < cpu.loss.size(); ++s) {
    const std::string step = "step " + std::to_string(s);
    loss.add(rel(gpu.loss[s], cpu.loss[s]), step);
    norm.add(rel(gpu.grad_norm[s], cpu.grad_norm[s]), step);
    EXPECT_LE(rel(gpu.loss[s], cpu.loss[s]), kLossF32) << step << " loss";
    if (s == 0) {
      // | |a| - |b| | <= |a - b|: the norm inherits the gradients' bound.
      EXPECT_LE(rel(gpu.grad_norm[s], cpu.grad_norm[s]), kGradF32) << step << " grad norm";
      compare_grads(gpu.grads[s], cpu.grads[s], kGradF32, step + " gradient");
    } else {
      later += " " + step + ": " + compare_grads(gpu.grads[s], cpu.grads[s], -1, "").str();
    }
  }
  const Worst g0 = compare_grads(gpu.grads[0], cpu.grads[0], -1, "");
  const Worst params = compare_grads(gpu.params, cpu.params, 1e-5, "parameters after 3 steps");
  // The parameter change of the 3 steps, gpu vs cpu (measured only).
  model::TensorMap d_gpu = gpu.params, d_cpu = cpu.params;
  for (auto& [name, t] : d_gpu)
    for (size_t i = 0; i < t.data.size(); ++i) {
      t.data[i] -= cpu.initial.at(name).data[i];
      d_cpu.at(name).data[i] -= cpu.initial.at(name).data[i];
    }
  const Worst update = compare_grads(d_gpu, d_cpu, -1, "");
  const Worst moments = compare_grads(gpu.exp_avg, cpu.exp_avg, -1, "");
  std::printf(
      "gpu engine [f32] vs cpu engine, 3 steps: loss %s, grad norm %s, step 0 grad rel RMS "
      "%s; later grads:%s; params rel RMS %s, update rel RMS %s, exp_avg rel RMS %s "
      "(grad norms %.4g %.4g %.4g)\n",
      loss.str().c_str(), norm.str().c_str(), g0.str().c_str(), later.c_str(), params.str().c_str(),
      update.str().c_str(), moments.str().c_str(), cpu.grad_norm[0], cpu.grad_norm[1],
      cpu.grad_norm[2]);
}

TEST(GpuEngine, Bf16StepsAreBitwiseDeterministic) {
  const EngineRun a = train_steps("cuda", "bf16");
  const EngineRun b = train_steps("cuda", "bf16");
  EXPECT_EQ(a.loss, b.loss);
  EXPECT_EQ(a.grad_norm, b.grad_norm);
  size_t differing = 0;
  for (const auto& [name, t] : a.params) {
    const auto& u = b.params.at(name);
    ASSERT_EQ(t.data.size(), u.data.size()) << name;
    const bool same = std::memcmp(t.data.data(), u.data.data(), t.data.size() * sizeof(float)) == 0;
    differing += !same;
    EXPECT_TRUE(same) << name << " differs between two identical bf16 runs";
  }
  std::printf("gpu engine [bf16] determinism: %zu of %zu tensors differ; losses %.6f %.6f %.6f\n",
              differing, a.params.size(), a.loss[0], a.loss[1], a.loss[2]);
}

}  // namespace
