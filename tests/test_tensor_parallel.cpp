// Tensor and sequence parallelism on CPU ranks (Gloo; processes started by `deltatron launch`):
// `score` and `train` with tp2, tp2 + sp and tp2 x dp2 against the one-rank run (issue 15), for
// dense and MoE models. A group's ranks each run their share of the heads and FFN columns (and
// of every routed expert's) and sum the row-parallel outputs, so losses and gradients agree with
// one rank to fp32 rounding, not bitwise.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "layout_runs.h"
#include "layout_score.h"
#include "model/config.h"
#include "model/tensor_parallel.h"
#include "ranks_run.h"
#include "short_run.h"
#include "test_util.h"
#include "train/checkpoint_dir.h"

namespace fs = std::filesystem;
using namespace deltatron;

namespace {

const std::vector<dt_test::ScoreLayout> kLayouts = {{2, "--tp 2", "tp2"},
                                                    {2, "--tp 2 --sp", "tp2_sp"},
                                                    {4, "--tp 2", "tp2_dp2"},
                                                    {4, "--tp 2 --sp", "tp2_sp_dp2"}};

void score_vs_one_rank(const fs::path& tmp, const std::string& fixture, const std::string& flags,
                       const std::string& tag, bool router, bool vs_f64) {
  dt_test::score_vs_one_rank(tmp, fixture, flags, tag, router, vs_f64, kLayouts);
}

}  // namespace

// Dense fixtures mixing GDN and attention layers (one with MTP, one with tied embeddings and two
// attention layers): every per-sample loss and every gradient against one rank and against
// Hugging Face's float64.
TEST(TensorParallel, ScoreEqualsOneRank) {
  const dt_test::TempDir tmp("tp_score");
  score_vs_one_rank(tmp.path, "dense_text_mtp", "--quiet --mtp-scale 0.3", "dense_text_mtp", false,
                    true);
  score_vs_one_rank(tmp.path, "dense_text_tied", "--quiet", "dense_text_tied", false, true);
}

// MoE fixtures (4 experts, top-2, shared expert; one with tied embeddings and fused experts, one
// with an MoE MTP layer): each routed expert's FFN columns and the shared expert split over the
// group, the router replicated. Without router losses also against float64; with the load-
// balancing loss (global counts over the whole dataset, and per sample) and the z-loss, the
// router loss must be one rank's (each group counts its routing once) and so every gradient.
TEST(TensorParallel, MoeScoreEqualsOneRank) {
  const dt_test::TempDir tmp("tp_moe_score");
  const std::string router = "--router-aux-coef 0.01 --z-loss-coef 0.001";
  score_vs_one_rank(tmp.path, "moe_text_fused_tied", "--quiet", "moe_fused", false, true);
  score_vs_one_rank(tmp.path, "moe_text_fused_tied", router, "moe_fused_router", true, false);
  score_vs_one_rank(tmp.path, "moe_vlm_mtp", router + " --mtp-scale 0.3", "moe_mtp_router", true,
                    false);
  score_vs_one_rank(tmp.path, "moe_vlm_mtp", router + " --router-aux-type seq --mtp-scale 0.3",
                    "moe_mtp_router_seq", true, false);
}

// Six steps of the bundled dense example on tp2 (2 micro-batches), tp2 + sp, and tp2 + sp x dp2
// (4 ranks, 1 micro-batch each) against one rank with 2 micro-batches; then the tp2 run's step-3
// checkpoint resumed on one rank and the one-rank run's on tp2 + sp x dp2: a checkpoint is the
// plain full one, so the layout may change.
TEST(TensorParallel, TrainTracksOneRank) {
  const dt_test::TempDir tmp("tp_train");
  // Weights: measured 6.8e-5 (a zero-centred k_norm weight: its values are a few learning rates
  // after six steps, so fp32 rounding of its updates is large relative to them); 1e-7 when only
  // steps 4-6 ran tensor parallel.
  dt_test::LayoutRuns runs(tmp.path, (dt_test::examples_dir() / "addition" / "train.toml").string(),
                           "", 1e-5, 1e-4, 1e-4);
  const std::string tp2 = "--parallel.tp=2", sp = " --parallel.sp=true";
  ASSERT_TRUE(runs.run({{"one", 1, 2, ""},
                        {"tp2", 2, 2, tp2},
                        {"tp2_sp", 2, 2, tp2 + sp},
                        {"tp2_sp_dp2", 4, 1, tp2 + sp}}));
  runs.keep_reference();
  runs.check("tp2", 0);
  runs.check("tp2_sp", 0);
  runs.check("tp2_sp_dp2", 0);
  // Resumed on another layout from the step-3 checkpoint.
  ASSERT_TRUE(runs.run({{"tp2", 1, 2, ""}, {"one", 4, 1, tp2 + sp}}, true));
  runs.check("tp2", 6);  // 6 steps, then steps 4-6 again
  runs.check("one", 6);
}

namespace {
// The "router_loss" of every step record of a run's metrics.jsonl, in order.
std::vector<double> metric_router_losses(const fs::path& metrics) {
  std::vector<double> out;
  for (const nlohmann::json& j : dt_test::jsonl(metrics))
    if (j.contains("router_loss")) out.push_back(j["router_loss"].get<double>());
  return out;
}
}  // namespace

// Six steps of the bundled MoE + MTP example (8 experts, top-2, shared expert; the global load-
// balancing loss over the step's running counts) on tp2 + sp (2 micro-batches) and tp2 + sp x
// dp2 (4 ranks, 1 micro-batch each: the running counts exchanged over the data-parallel ranks;
// with activation recomputation, which reruns each layer's exchanges) against one rank with 2
// micro-batches: the step losses, the router losses, the weights and the
// AdamW moments.
TEST(TensorParallel, MoeTrainTracksOneRank) {
  const dt_test::TempDir tmp("tp_moe_train");
  const std::string toml = (dt_test::examples_dir() / "addition" / "train_moe.toml").string();
  const auto args = [&](const std::string& out, int grad_accum, const std::string& layout) {
    std::string a = "train " + toml;
    for (std::string o : dt_test::short_run_overrides(tmp.path, out)) {
      if (o.rfind("training.grad_accum=", 0) == 0)
        o = "training.grad_accum=" + std::to_string(grad_accum);
      a += " '--" + o + "'";
    }
    return a + " " + layout;
  };
  struct Run {
    std::string out;
    int ranks, grad_accum;
    std::string layout;
  };
  const std::string tp2_sp = "--parallel.tp=2 --parallel.sp=true";
  const std::vector<Run> runs = {{"one", 1, 2, ""},
                                 {"tp2_sp", 2, 2, tp2_sp},
                                 {"tp2_sp_dp2", 4, 1, tp2_sp + " --training.recompute=true"}};
  for (const Run& r : runs)
    ASSERT_EQ(dt_test::run_ranks(r.ranks, args(r.out, r.grad_accum, r.layout),
                                 tmp.path / (r.out + ".err")),
              0)
        << r.out << ": " << dt_test::read_file(tmp.path / (r.out + ".err"));
  const auto ckpt = [&](const std::string& out) {
    return tmp.path / out / train::checkpoint_dir_name(6);
  };
  const fs::path metrics = "metrics.jsonl";
  const std::vector<double> want = dt_test::metric_losses(tmp.path / "one" / metrics);
  const std::vector<double> want_router = metric_router_losses(tmp.path / "one" / metrics);
  ASSERT_EQ(want.size(), 6u);
  ASSERT_EQ(want_router.size(), 6u);
  for (const std::string out : {"tp2_sp", "tp2_sp_dp2"}) {
    const std::vector<double> got = dt_test::metric_losses(tmp.path / out / metrics);
    const std::vector<double> got_router = metric_router_losses(tmp.path / out / metrics);
    ASSERT_EQ(got.size(), 6u) << out;
    ASSERT_EQ(got_router.size(), 6u) << out;
    double worst = 0, worst_router = 0;
    for (size_t s = 0; s < 6; ++s) {
      worst = std::max(worst, std::abs(got[s] - want[s]) / want[s]);
      worst_router =
          std::max(worst_router, std::abs(got_router[s] - want_router[s]) / want_router[s]);
      EXPECT_NEAR(got[s], want[s], 1e-5 * want[s]) << out << " step " << s + 1;
      EXPECT_NEAR(got_router[s], want_router[s], 1e-5 * want_router[s])
          << out << " step " << s + 1 << " router loss";
    }
    std::string name;
    const double w = dt_test::worst_rel_rms(ckpt(out) / "model.safetensors",
                                            ckpt("one") / "model.safetensors", name);
    std::printf(
        "  %s: step losses %.2e, router losses %.2e; weights after 6 steps vs one rank: "
        "worst rel RMS %.2e (%s)\n",
        out.c_str(), worst, worst_router, w, name.c_str());
    EXPECT_LE(w, 1e-4) << out << ": " << name;  // the dense test's bound (zero-centred norms)
    const fs::path opt = fs::path("training_state") / "optimizer.safetensors";
    const double m = dt_test::worst_rel_rms(ckpt(out) / opt, ckpt("one") / opt, name);
    std::printf("  %s: AdamW moments vs one rank: worst rel RMS %.2e (%s)\n", out.c_str(), m,
                name.c_str());
    EXPECT_LE(m, 1e-4) << out << ": " << name;
  }
}

// The MoE tensors' split: rank r holds columns [r F/P, (r+1) F/P) of every expert's gate rows,
// of its up rows (the fused [E, 2F, D] gate_up_proj's halves each split) and of its down_proj
// [E, D, F]; the shared expert's like the dense MLP's; the router and the shared expert gate
// replicated with partial gradients. The slices joined give the full tensor back.
TEST(TensorParallel, MoeSplitTakesEachExpertsColumns) {
  const model::Config c = model::load_config(
      (fs::path(DT_TEST_DATA) / "golden" / "moe_text_fused_tied" / "config.json").string());
  const int64_t E = c.num_experts, F = c.moe_intermediate_size, D = c.hidden_size, P = 2;
  const int64_t Fl = F / P, S = c.shared_expert_intermediate_size;
  const auto filled = [](const core::Shape& shape) {
    core::Tensor t(shape);
    for (int64_t i = 0; i < t.numel(); ++i) t.ptr()[i] = float(i);
    return t;
  };
  const std::string pf = "model.layers.1.mlp.";
  const core::Tensor gu = filled({E, 2 * F, D}), down = filled({E, D, F});
  for (int64_t r = 0; r < P; ++r) {
    const core::Tensor lgu = model::tp_slice(c, pf + "experts.gate_up_proj", gu, r, P);
    ASSERT_EQ(lgu.shape, (core::Shape{E, 2 * Fl, D}));
    for (int64_t e = 0; e < E; ++e)
      for (int64_t j = 0; j < 2 * Fl; ++j)
        for (int64_t k = 0; k < D; ++k) {
          const int64_t row = j < Fl ? r * Fl + j : F + r * Fl + (j - Fl);  // gate, then up
          ASSERT_EQ(lgu.ptr()[(e * 2 * Fl + j) * D + k], gu.ptr()[(e * 2 * F + row) * D + k])
              << "rank " << r << " expert " << e << " local row " << j << " column " << k;
        }
    const core::Tensor ldown = model::tp_slice(c, pf + "experts.down_proj", down, r, P);
    ASSERT_EQ(ldown.shape, (core::Shape{E, D, Fl}));
    for (int64_t e = 0; e < E; ++e)
      for (int64_t k = 0; k < D; ++k)
        for (int64_t j = 0; j < Fl; ++j)
          ASSERT_EQ(ldown.ptr()[(e * D + k) * Fl + j], down.ptr()[(e * D + k) * F + r * Fl + j])
              << "rank " << r << " expert " << e << " row " << k << " local column " << j;
  }
  for (const auto& [name, full] :
       {std::pair{pf + "experts.gate_up_proj", gu}, std::pair{pf + "experts.down_proj", down},
        std::pair{pf + "shared_expert.gate_proj.weight", filled({S, D})},
        std::pair{pf + "shared_expert.down_proj.weight", filled({D, S})}}) {
    std::vector<float> slices;
    core::Shape local;
    for (int64_t r = 0; r < P; ++r) {
      const core::Tensor t = model::tp_slice(c, name, full, r, P);
      local = t.shape;
      slices.insert(slices.end(), t.ptr(), t.ptr() + t.numel());
    }
    const core::Tensor back = model::tp_join(c, name, slices.data(), local, P);
    ASSERT_EQ(back.shape, full.shape) << name;
    for (int64_t i = 0; i < full.numel(); ++i)
      ASSERT_EQ(back.ptr()[i], full.ptr()[i]) << name << " element " << i;
  }
  for (const std::string n : {"gate.weight", "shared_expert_gate.weight"}) {
    EXPECT_FALSE(model::is_tp_sharded(c, pf + n)) << n;
    EXPECT_TRUE(model::tp_partial_grad(c, pf + n, false)) << n;
  }
  EXPECT_TRUE(model::is_tp_sharded(c, "mtp.layers.0.mlp.experts.down_proj"));
}

// What cannot be split is refused on every rank with the reason.
TEST(TensorParallel, RefusesWhatItCannotSplit) {
  const dt_test::TempDir tmp("tp_refuse");
  struct Case {
    std::string fixture, flags, expect;
    int ranks;
  };
  const std::vector<Case> cases = {
      {"dense_text_varied", "--tp 2", "num_attention_heads (3)", 2},
      {"dense_text_mtp", "--sp", "needs tp > 1", 1},
      {"dense_text_mtp", "--tp 2", "multiple of 2 ranks", 3},
  };
  for (const Case& c : cases) {
    const fs::path d = fs::path(DT_TEST_DATA) / "golden" / c.fixture;
    const fs::path err = tmp.path / "err";
    EXPECT_NE(dt_test::run_ranks(c.ranks,
                                 "score --quiet --model " + d.string() + " --data " +
                                     (d / "samples.jsonl").string() + " " + c.flags + " --output " +
                                     (tmp.path / "out.jsonl").string(),
                                 err),
              0)
        << c.fixture << " " << c.flags;
    EXPECT_NE(dt_test::read_file(err).find(c.expect), std::string::npos)
        << c.fixture << " " << c.flags << ": " << dt_test::read_file(err);
  }
}
