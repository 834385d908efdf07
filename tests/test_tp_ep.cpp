// Tensor parallelism combined with expert parallelism on CPU ranks (Gloo; `deltatron launch`)
// against one rank (issue 15): tp2 x ep2 on 4 ranks (the expert-parallel groups among the
// data-parallel ranks holding the same tp slice; each rank its ep slice of the routed experts and
// its tp slice of their FFN columns), with and without sequence parallelism and ZeRO: `score`
// (per-sample losses, router loss, every gradient), six training steps of the MoE + MTP example
// (step losses, weights, AdamW moments), resumes across layouts, and the layouts refused.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "layout_runs.h"
#include "layout_score.h"
#include "ranks_run.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace {

const std::vector<dt_test::ScoreLayout> kLayouts = {
    {4, "--tp 2 --ep 2", "tp2_ep2"},
    {4, "--tp 2 --sp --ep 2", "tp2_sp_ep2"},
    {4, "--zero 3 --tp 2 --sp --ep 2", "zero3_tp2_sp_ep2"}};

}  // namespace

// The MoE fixtures (4 experts, top-2, shared expert): without router losses also against
// Hugging Face's float64; with the load-balancing loss (global counts) and the z-loss and the MoE
// MTP layer, the router loss must be one rank's. Bounds: the tensor-parallel test's.
TEST(TensorExpertParallel, ScoreEqualsOneRank) {
  const dt_test::TempDir tmp("tp_ep_score");
  dt_test::score_vs_one_rank(tmp.path, "moe_text_fused_tied", "--quiet", "moe_fused", false, true,
                             kLayouts);
  dt_test::score_vs_one_rank(tmp.path, "moe_vlm_mtp",
                             "--router-aux-coef 0.01 --z-loss-coef 0.001 --mtp-scale 0.3",
                             "moe_mtp_router", true, false, kLayouts);
}

// Six steps of the MoE + MTP example (8 experts, top-2, shared expert, MoE MTP layer; the global
// aux loss 0.05) against one rank with 4 micro-batches: tp2 x ep2 (4 ranks, dp 2 x 2
// micro-batches), and with sp, ZeRO 3 and recomputation. Then resumed at step 3 on another layout
// (a checkpoint is the plain full one): the ZeRO 3 run on one rank, the one-rank run on tp2 + sp
// x ep2 with ZeRO 2 (each rank reads its ep x tp slices of the masters and moments).
TEST(TensorExpertParallel, TrainTracksOneRank) {
  const dt_test::TempDir tmp("tp_ep_train");
  // The tensor-parallel MoE test's bounds (zero-centred norms: a few learning rates from 0). No
  // held-out set: its exact-match evaluation at the end would be most of the run's time.
  dt_test::LayoutRuns runs(tmp.path,
                           (dt_test::examples_dir() / "addition" / "train_moe.toml").string(),
                           "--training.router_aux_coef=0.05 --data.eval=\"\"", 1e-5, 1e-4, 1e-4);
  const std::string tp_ep = "--parallel.tp=2 --parallel.ep=2";
  const std::string sp = " --parallel.sp=true";
  ASSERT_TRUE(runs.run(
      {{"one", 1, 4, ""},
       {"tp2_ep2", 4, 2, tp_ep},
       {"zero3_tp2_sp_ep2", 4, 2, tp_ep + sp + " --parallel.zero=3 --training.recompute=true"}}));
  runs.keep_reference();
  runs.check("tp2_ep2", 0);
  runs.check("zero3_tp2_sp_ep2", 0);
  if (HasFailure()) return;
  ASSERT_TRUE(runs.run(
      {{"zero3_tp2_sp_ep2", 1, 4, ""}, {"one", 4, 2, tp_ep + sp + " --parallel.zero=2"}}, true));
  runs.check("zero3_tp2_sp_ep2", 6);  // 6 steps, then steps 4-6 again
  runs.check("one", 6);
}

// What the layout cannot split is refused on every rank with the reason: ep must divide the
// data-parallel ranks (the job's ranks / tp) and num_experts.
TEST(TensorExpertParallel, RefusesWhatItCannotSplit) {
  const dt_test::TempDir tmp("tp_ep_refuse");
  struct Case {
    std::string flags, expect;
    int ranks;
  };
  const fs::path d = fs::path(DT_TEST_DATA) / "golden" / "moe_text_fused_tied";  // 4 experts
  for (const Case& c : {Case{"--tp 2 --ep 2",
                             "needs a multiple of 2 data-parallel ranks (the job's ranks / tp)", 2},
                        Case{"--tp 2 --ep 3", "num_experts (4) divisible by 3", 2}}) {
    const fs::path err = tmp.path / "err";
    EXPECT_NE(dt_test::run_ranks(c.ranks,
                                 "score --quiet --model " + d.string() + " --data " +
                                     (d / "samples.jsonl").string() + " " + c.flags + " --output " +
                                     (tmp.path / "out.jsonl").string(),
                                 err),
              0)
        << c.flags;
    EXPECT_NE(dt_test::read_file(err).find(c.expect), std::string::npos)
        << c.flags << ": " << dt_test::read_file(err);
  }
}
