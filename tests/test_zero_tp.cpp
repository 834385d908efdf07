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
#include "layout_score.h"
#include "ranks_run.h"
#include "short_run.h"
#include "test_util.h"
#include "train/checkpoint_dir.h"

namespace fs = std::filesystem;
using namespace deltatron;

namespace {

// `score` of a golden fixture with `flags` on ZeRO 3 with tp2, tp2 + sp, tp2 x dp2 and
// tp2 + sp x dp2 against one rank (tests/layout_score.h: every per-sample loss, the router loss
// when `router`, every gradient within the tensor-parallel test's bound).
void score_vs_one_rank(const fs::path& tmp, const std::string& fixture, const std::string& flags,
                       const std::string& tag, bool router) {
  static const std::vector<dt_test::ScoreLayout> kLayouts = {
      {2, "--zero 3 --tp 2", "zero3_tp2"},
      {2, "--zero 3 --tp 2 --sp", "zero3_tp2_sp"},
      {4, "--zero 3 --tp 2", "zero3_tp2_dp2"},
      {4, "--zero 3 --tp 2 --sp", "zero3_tp2_sp_dp2"}};
  dt_test::score_vs_one_rank(tmp, fixture, flags, tag, router, false, kLayouts);
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
