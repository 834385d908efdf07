// ZeRO (stages 1, 2, 3) with expert parallelism on CPU ranks (Gloo; `deltatron launch`) against
// one rank: `score --zero 3 --ep N` (per-sample losses, router losses, every gradient); six
// training steps of the bundled MoE + MTP example with the global router aux loss, each stage on
// ep2 (2 ranks: every rank holds its expert slice whole) and ep2 x dp2 (4 ranks: each slice's
// state sharded over the 2 ranks holding it); resumes on the same layout (bitwise the straight
// run) and on other layouts; the shardings of the two groups (replicated tensors over the
// data-parallel ranks, expert slices over the ranks holding the same experts).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "layout_runs.h"
#include "layout_score.h"
#include "model/expert_parallel.h"
#include "model/params.h"
#include "ranks_run.h"
#include "short_run.h"
#include "test_util.h"
#include "train/checkpoint_dir.h"
#include "train/expert_parallel.h"
#include "train/zero.h"
#include "train/zero3.h"

namespace fs = std::filesystem;
using namespace deltatron;

// Every layer gathered over its group (the replicated tensors over all ranks, the expert slices
// over the ranks holding them) while the MoE layers exchange rows over the expert-parallel group:
// the losses are the expert-parallel run's (float rounding against one rank: rows reach the
// experts' GEMMs grouped otherwise), the gradients within the expert-parallel test's bound.
TEST(ZeroExpertParallel, ScoreEqualsOneRank) {
  const dt_test::TempDir tmp("zero_ep_score");
  const std::vector<dt_test::ScoreLayout> layouts = {{2, "--zero 3 --ep 2", "zero3_ranks2_ep2"},
                                                     {4, "--zero 3 --ep 2", "zero3_ranks4_ep2"},
                                                     {4, "--zero 3 --ep 4", "zero3_ranks4_ep4"}};
  for (const std::string fixture : {"moe_text_fused_tied", "moe_vlm_mtp"}) {
    const std::string mtp = fixture == "moe_vlm_mtp" ? " --mtp-scale 0.3" : "";
    dt_test::score_vs_one_rank(tmp.path, fixture,
                               "--router-aux-coef 0.01 --z-loss-coef 0.001" + mtp, fixture, true,
                               false, layouts, 2e-5);
  }
}

namespace {

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

// Six steps of the MoE + MTP example (8 experts, top-2, shared expert, MoE MTP layer; the global
// aux loss, coefficient 0.05) against one rank with 4 micro-batches: each ZeRO stage on ep2 (2
// ranks x 2 micro-batches) and ep2 x dp2 (4 ranks x 1). Then: the ep2 x dp2 runs of stages 2 and
// 3 resumed from step 3 on their own layout (bitwise the straight run: a checkpoint holds the
// whole state), the stage-3 one resumed on one rank (no ZeRO, no ep), the one-rank run resumed
// with ZeRO 3 on ep2, and the stage-1 ep2 x dp2 run resumed with ZeRO 2 on ep4 (4 ranks).
TEST(ZeroExpertParallel, TrainTracksOneRank) {
  const dt_test::TempDir tmp("zero_ep_train");
  dt_test::LayoutRuns runs(tmp.path,
                           (dt_test::examples_dir() / "addition" / "train_moe.toml").string(),
                           "--training.router_aux_coef=0.05", 1e-6, 1e-5, 1e-4);
  std::vector<dt_test::LayoutRun> layouts = {{"one", 1, 4, "--parallel.ep=1"}};
  for (int zero : {1, 2, 3})
    for (int ranks : {2, 4})
      layouts.push_back({"zero" + std::to_string(zero) + "_ep2_ranks" + std::to_string(ranks),
                         ranks, 4 / ranks,
                         "--parallel.ep=2 --parallel.zero=" + std::to_string(zero)});
  ASSERT_TRUE(runs.run(layouts));
  runs.keep_reference();
  for (size_t i = 1; i < layouts.size(); ++i) runs.check(layouts[i].out, 0);
  if (HasFailure()) return;

  for (int zero : {2, 3}) {  // the same layout: bitwise
    const std::string from = "zero" + std::to_string(zero) + "_ep2_ranks4";
    copy_for_resume(tmp.path, from, from + "_again");
    ASSERT_TRUE(runs.run(
        {{from + "_again", 4, 1, "--parallel.ep=2 --parallel.zero=" + std::to_string(zero)}},
        true));
    expect_bitwise_checkpoints(tmp.path / (from + "_again"), tmp.path / from,
                               from + " resumed on its own layout");
  }
  copy_for_resume(tmp.path, "zero3_ep2_ranks4", "zero3_on_one");
  copy_for_resume(tmp.path, "one", "one_on_zero3_ep2");
  copy_for_resume(tmp.path, "zero1_ep2_ranks4", "zero1_on_zero2_ep4");
  ASSERT_TRUE(runs.run({{"zero3_on_one", 1, 4, "--parallel.ep=1"},
                        {"one_on_zero3_ep2", 2, 2, "--parallel.ep=2 --parallel.zero=3"},
                        {"zero1_on_zero2_ep4", 4, 1, "--parallel.ep=4 --parallel.zero=2"}},
                       true));
  for (const char* out : {"zero3_on_one", "one_on_zero3_ep2", "zero1_on_zero2_ep4"})
    runs.check(out, 6);  // 6 steps, then steps 4-6 again
}

// The two shardings of one store (ZeRO 1 and 2 with expert parallelism): the replicated tensors
// over the data-parallel ranks, the routed-expert slices over the ranks holding the same
// experts; each covered tensor owned by exactly one rank, inside one of its runs, and no run
// holding a tensor of the other group.
TEST(ZeroExpertParallel, ShardsCoverEachGroupOnce) {
  const io::Checkpoint ck = io::load_checkpoint(
      (fs::path(DT_TEST_DATA) / "golden" / "moe_vlm_mtp").string(), io::LoadOptions{});
  const model::Params p(core::Device::cpu, core::DType::f32, ck.params);
  const train::TensorFilter experts = model::is_routed_expert_tensor;
  const train::TensorFilter dense = [](const std::string& n) {
    return !model::is_routed_expert_tensor(n);
  };
  int64_t expert_tensors = 0;
  for (const auto& name : p.names()) expert_tensors += experts(name) ? 1 : 0;
  ASSERT_GT(expert_tensors, 0);
  for (const auto& [covers, what] : {std::pair{experts, "experts"}, std::pair{dense, "dense"}})
    for (int ranks : {1, 2, 3, 5}) {
      const train::ZeroShards s = train::zero_shards(p, ranks, covers);
      ASSERT_EQ(s.ranks(), ranks);
      int64_t covered = 0, owned = 0;
      for (const auto& name : p.names()) {
        const auto& e = p.entry(name);
        int holders = 0;
        for (int r = 0; r < ranks; ++r)
          for (const auto& run : s.runs[size_t(r)])
            if (e.offset >= run.begin && e.offset + e.numel <= run.end) {
              ++holders;
              EXPECT_TRUE(covers(name)) << what << ": " << name << " in a run of rank " << r;
              EXPECT_EQ(s.owner(e.offset), r) << what << ": " << name;
            } else {
              EXPECT_FALSE(e.offset < run.end && e.offset + e.numel > run.begin)
                  << what << ": " << name << " straddles a run of rank " << r;
            }
        EXPECT_EQ(holders, covers(name) ? 1 : 0) << what << ": " << name;
        if (covers(name)) covered += e.numel;
      }
      for (int r = 0; r < ranks; ++r) owned += s.size(r);
      EXPECT_GE(owned, covered) << what;  // the runs' alignment gaps included
      EXPECT_LE(owned, covered + 64 * int64_t(p.names().size())) << what;
    }
}

// ZeRO 3's layout with expert units: the routed-expert slices in units of their own, cut over
// the same-experts ranks; every other tensor in its model unit, cut over the data-parallel ranks.
TEST(ZeroExpertParallel, Zero3LayoutHasExpertUnits) {
  const io::Checkpoint ck = io::load_checkpoint(
      (fs::path(DT_TEST_DATA) / "golden" / "moe_vlm_mtp").string(), io::LoadOptions{});
  const model::Params p(core::Device::cpu, core::DType::f32, ck.params);
  const int L = int(ck.config.num_hidden_layers);
  for (const auto& [ranks, expert_ranks] : {std::pair{2, 1}, std::pair{4, 2}, std::pair{6, 3}}) {
    const train::Zero3Layout l =
        train::zero3_layout(p, ck.config, ranks, ranks - 1, expert_ranks, expert_ranks - 1);
    ASSERT_EQ(l.units.size(), size_t(2 * (L + 1)));
    int64_t shard = 0;
    std::set<std::string> seen;
    for (size_t u = 0; u < l.units.size(); ++u) {
      const auto& unit = l.units[u];
      EXPECT_EQ(unit.expert, u >= size_t(L + 1)) << u;
      const int n = unit.expert ? expert_ranks : ranks;
      EXPECT_EQ(unit.piece % 64, 0) << u;
      EXPECT_GE(unit.piece * n, unit.numel) << u;
      EXPECT_LT(unit.piece * n, unit.numel + 64 * n) << u;
      EXPECT_EQ(unit.local, shard) << u;
      shard += unit.piece;
      for (size_t i : unit.tensors) {
        const auto& t = l.tensors[i];
        EXPECT_TRUE(seen.insert(t.name).second) << t.name;
        EXPECT_EQ(model::is_routed_expert_tensor(t.name), unit.expert) << t.name;
        const int model_unit = int(u % size_t(L + 1)) - 1;
        EXPECT_EQ(int(u), unit.expert ? l.expert_unit_of(model_unit)
                                      : train::Zero3Layout::unit_of(model_unit))
            << t.name;
      }
    }
    EXPECT_EQ(seen.size(), p.names().size());
    EXPECT_EQ(shard, l.shard);
  }
}
