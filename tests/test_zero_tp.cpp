// ZeRO (stages 1, 2, 3) with tensor (and sequence) parallelism on CPU ranks (Gloo; `deltatron
// launch`) against one rank: `score --zero 3 --tp 2 [--sp]` on tp2 (2 ranks) and tp2 x dp2 (4
// ranks: each tp slice's state sharded over the 2 data-parallel ranks holding it), per-sample
// losses, router losses and every gradient; six training steps of the bundled dense and MoE + MTP
// examples on tp2 + sp x dp2 with each stage; resumes on the same layout (bitwise the straight
// run) and on other layouts.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "layout_runs.h"
#include "ranks_run.h"
#include "short_run.h"
#include "test_util.h"
#include "train/checkpoint_dir.h"

namespace fs = std::filesystem;
using namespace deltatron;

namespace {

// The router loss a score run reports on stderr (rank 0; without --quiet), or NaN.
double router_loss_of(const fs::path& err) {
  const std::string text = dt_test::read_file(err), key = "router loss (sum over MoE layers) ";
  const size_t at = text.find(key);
  return at == std::string::npos ? std::nan("") : std::stod(text.substr(at + key.size()));
}

// `score` of a golden fixture with `flags` on ZeRO 3 with tp2, tp2 + sp, tp2 x dp2 and
// tp2 + sp x dp2 against one rank: every per-sample loss, the router loss (when `router`) and
// every gradient (the tensor-parallel test's bounds: fp32 rounding amplified by the GDN gates'
// conditioning).
void score_vs_one_rank(const fs::path& tmp, const std::string& fixture, const std::string& flags,
                       const std::string& tag, bool router) {
  const fs::path d = fs::path(DT_TEST_DATA) / "golden" / fixture;
  const std::string base = "score --model " + d.string() + " --data " +
                           (d / "samples.jsonl").string() + " --pack-tokens 64 " + flags;
  const auto run = [&](int ranks, const std::string& layout, const fs::path& o) {
    EXPECT_EQ(dt_test::run_ranks(ranks,
                                 base + " " + layout + " --output " + o.string() +
                                     ".jsonl --grad-out " + o.string() + ".safetensors",
                                 o.string() + ".err"),
              0)
        << tag << " " << layout << ": " << dt_test::read_file(o.string() + ".err");
  };
  const fs::path one = tmp / (tag + "_one");
  run(1, "", one);
  if (::testing::Test::HasFailure()) return;
  const auto want = dt_test::jsonl(one.string() + ".jsonl");
  ASSERT_GE(want.size(), 3u);
  const double router_want = router_loss_of(one.string() + ".err");
  if (router) ASSERT_TRUE(std::isfinite(router_want)) << dt_test::read_file(one.string() + ".err");
  struct Layout {
    int ranks;
    std::string flags, name;
  };
  for (const Layout& l : {Layout{2, "--zero 3 --tp 2", "zero3_tp2"},
                          Layout{2, "--zero 3 --tp 2 --sp", "zero3_tp2_sp"},
                          Layout{4, "--zero 3 --tp 2", "zero3_tp2_dp2"},
                          Layout{4, "--zero 3 --tp 2 --sp", "zero3_tp2_sp_dp2"}}) {
    const std::string what = tag + " " + l.name;
    const fs::path o = tmp / (tag + "_" + l.name);
    run(l.ranks, l.flags, o);
    if (::testing::Test::HasFailure()) return;
    const auto got = dt_test::jsonl(o.string() + ".jsonl");
    ASSERT_EQ(got.size(), want.size()) << what;
    double worst = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(got[i]["n_tokens"], want[i]["n_tokens"]) << what << ", sample " << i;
      for (const char* key : {"loss_sum", "mtp_loss_sum"}) {
        if (!want[i].contains(key)) continue;
        const double a = got[i][key], b = want[i][key];
        worst = std::max(worst, std::abs(a - b) / std::max(1.0, std::abs(b)));
        EXPECT_NEAR(a, b, 1e-6 * std::max(1.0, std::abs(b)))
            << what << ", sample " << i << " " << key;
      }
    }
    std::string name;
    const double r =
        dt_test::worst_rel_rms(o.string() + ".safetensors", one.string() + ".safetensors", name);
    std::printf("  %s: losses %.2e; worst gradient rel RMS vs one rank %.2e (%s)", what.c_str(),
                worst, r, name.c_str());
    if (router) {  // counted once per tensor-parallel group: one rank's value
      const double a = router_loss_of(o.string() + ".err");
      const double rel = std::abs(a - router_want) / std::abs(router_want);
      std::printf(", router loss %.2e", rel);
      EXPECT_LE(rel, 1e-6) << what << ": router loss " << a << ", one rank " << router_want;
    }
    std::printf("\n");
    EXPECT_LE(r, 5e-5) << what << ": " << name;
  }
}

// A run's output directory copied under another name, its step-6 checkpoint removed: resuming it
// redoes steps 4-6.
void copy_for_resume(const fs::path& dir, const std::string& from, const std::string& to) {
  fs::copy(dir / from, dir / to, fs::copy_options::recursive);
  fs::remove_all(dir / to / train::checkpoint_dir_name(6));
}

// The step-6 checkpoints of two runs: every tensor of the weights, masters and moments bitwise.
void expect_bitwise_checkpoints(const fs::path& got, const fs::path& want,
                                const std::string& what) {
  for (const char* file : {"model.safetensors", "training_state/master_weights.safetensors",
                           "training_state/optimizer.safetensors"}) {
    std::string name;
    const double r = dt_test::worst_rel_rms(got / train::checkpoint_dir_name(6) / file,
                                            want / train::checkpoint_dir_name(6) / file, name);
    EXPECT_EQ(r, 0.0) << what << " " << file << ": " << name;
  }
}

}  // namespace

// Dense (GDN + attention, MTP) and MoE fixtures (router losses; the MoE MTP layer): every layer
// gathered over the data-parallel ranks holding the same tp slice while the group splits heads,
// FFN columns and (sp) tokens.
TEST(ZeroTensorParallel, ScoreEqualsOneRank) {
  const dt_test::TempDir tmp("zero_tp_score");
  score_vs_one_rank(tmp.path, "dense_text_mtp", "--quiet --mtp-scale 0.3", "dense_text_mtp", false);
  score_vs_one_rank(tmp.path, "moe_vlm_mtp",
                    "--router-aux-coef 0.01 --z-loss-coef 0.001 --mtp-scale 0.3", "moe_mtp_router",
                    true);
}

// Six steps of the bundled dense example against one rank with 2 micro-batches: ZeRO 1, 2 and 3
// on tp2 + sp x dp2 (4 ranks x 1 micro-batch: the replicated tensors' and each tp slice's state
// sharded over the 2 data-parallel ranks), ZeRO 3 on tp2 (2 ranks x 2: one data-parallel rank,
// the per-layer partial-gradient sums under gathering). Then the ZeRO 2 and 3 runs resumed from
// step 3 on their own layout (bitwise the straight run), the ZeRO 3 one on one rank (no ZeRO,
// no tp), the one-rank run with ZeRO 3 on tp2 + sp x dp2, and the ZeRO 1 run with ZeRO 2 on tp2
// (2 ranks).
TEST(ZeroTensorParallel, TrainTracksOneRank) {
  const dt_test::TempDir tmp("zero_tp_train");
  // Bounds: the tensor-parallel test's (a zero-centred k_norm weight, a few learning rates from
  // 0 after six steps, carries the largest relative rounding).
  dt_test::LayoutRuns runs(tmp.path, (dt_test::examples_dir() / "addition" / "train.toml").string(),
                           "", 1e-5, 1e-4, 1e-4);
  const std::string tp2_sp = "--parallel.tp=2 --parallel.sp=true";
  std::vector<dt_test::LayoutRun> layouts = {
      {"one", 1, 2, ""}, {"zero3_tp2", 2, 2, "--parallel.tp=2 --parallel.zero=3"}};
  for (int zero : {1, 2, 3})
    layouts.push_back({"zero" + std::to_string(zero) + "_tp2_sp_dp2", 4, 1,
                       tp2_sp + " --parallel.zero=" + std::to_string(zero)});
  ASSERT_TRUE(runs.run(layouts));
  runs.keep_reference();
  for (size_t i = 1; i < layouts.size(); ++i) runs.check(layouts[i].out, 0);
  if (HasFailure()) return;

  for (int zero : {2, 3}) {  // the same layout: bitwise
    const std::string from = "zero" + std::to_string(zero) + "_tp2_sp_dp2";
    copy_for_resume(tmp.path, from, from + "_again");
    ASSERT_TRUE(runs.run(
        {{from + "_again", 4, 1, tp2_sp + " --parallel.zero=" + std::to_string(zero)}}, true));
    expect_bitwise_checkpoints(tmp.path / (from + "_again"), tmp.path / from,
                               from + " resumed on its own layout");
  }
  copy_for_resume(tmp.path, "zero3_tp2_sp_dp2", "zero3_on_one");
  copy_for_resume(tmp.path, "one", "one_on_zero3_tp2_sp_dp2");
  copy_for_resume(tmp.path, "zero1_tp2_sp_dp2", "zero1_on_zero2_tp2");
  ASSERT_TRUE(runs.run({{"zero3_on_one", 1, 2, ""},
                        {"one_on_zero3_tp2_sp_dp2", 4, 1, tp2_sp + " --parallel.zero=3"},
                        {"zero1_on_zero2_tp2", 2, 2, "--parallel.tp=2 --parallel.zero=2"}},
                       true));
  for (const char* out : {"zero3_on_one", "one_on_zero3_tp2_sp_dp2", "zero1_on_zero2_tp2"})
    runs.check(out, 6);  // 6 steps, then steps 4-6 again
}

// Six steps of the MoE + MTP example (8 experts, top-2, shared expert, MoE MTP layer; the global
// aux loss 0.05 over the running counts; recomputation) with ZeRO 2 and 3 on tp2 + sp x dp2
// against one rank with 2 micro-batches: the router's and shared-expert gate's partial
// gradients summed over the group per layer before ZeRO 3 reduces them over the data-parallel
// ranks.
TEST(ZeroTensorParallel, MoeTrainTracksOneRank) {
  const dt_test::TempDir tmp("zero_tp_moe_train");
  dt_test::LayoutRuns runs(tmp.path,
                           (dt_test::examples_dir() / "addition" / "train_moe.toml").string(),
                           "--training.router_aux_coef=0.05", 1e-5, 1e-4, 1e-4);
  const std::string tp2_sp = "--parallel.tp=2 --parallel.sp=true --training.recompute=true";
  ASSERT_TRUE(runs.run({{"one", 1, 2, ""},
                        {"zero2_tp2_sp_dp2", 4, 1, tp2_sp + " --parallel.zero=2"},
                        {"zero3_tp2_sp_dp2", 4, 1, tp2_sp + " --parallel.zero=3"}}));
  runs.keep_reference();
  runs.check("zero2_tp2_sp_dp2", 0);
  runs.check("zero3_tp2_sp_dp2", 0);
}
