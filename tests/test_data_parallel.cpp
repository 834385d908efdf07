// Data parallelism on CPU ranks (Gloo; processes started by `deltatron launch`): `score` and
// `train` on 2 and 3 ranks against the one-rank run (issue 15). Per-sample losses are computed by
// one rank from the same packs, so they must be equal; gradients are sums of the ranks' partial
// sums, equal to fp32 rounding; training steps track the one-rank run with grad_accum x ranks.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "layout_runs.h"
#include "ranks_run.h"
#include "short_run.h"
#include "test_util.h"
#include "train/checkpoint_dir.h"

namespace fs = std::filesystem;
using namespace deltatron;

namespace {

struct ScoreCase {
  std::string fixture, flags;
};

}  // namespace

// Every golden fixture's packs spread over 2 and 3 ranks (small packs, so each rank gets some),
// with the MoE router losses on: the global aux loss counts routes over every rank's packs.
TEST(DataParallel, ScoreEqualsOneRank) {
  const dt_test::TempDir tmp("dp_score");
  const std::vector<ScoreCase> cases = {
      {"dense_text_varied", ""},
      {"moe_text_fused_tied", "--router-aux-coef 0.01 --z-loss-coef 0.001"},
      {"moe_vlm_mtp", "--router-aux-coef 0.02 --router-aux-type seq --mtp-scale 0.3"},
  };
  for (const auto& c : cases) {
    const fs::path d = fs::path(DT_TEST_DATA) / "golden" / c.fixture;
    const std::string base = "score --quiet --model " + d.string() + " --data " +
                             (d / "samples.jsonl").string() + " --pack-tokens 64 " + c.flags;
    for (int ranks : {1, 2, 3}) {
      const fs::path o = tmp.path / (c.fixture + "_" + std::to_string(ranks));
      ASSERT_EQ(dt_test::score_ranks(ranks, base, o), 0)
          << c.fixture << " on " << ranks << " ranks: " << dt_test::read_file(o.string() + ".err");
    }
    const fs::path one = tmp.path / (c.fixture + "_1");
    const auto want = dt_test::jsonl(one.string() + ".jsonl");
    ASSERT_GE(want.size(), 3u);
    for (int ranks : {2, 3}) {
      const fs::path o = tmp.path / (c.fixture + "_" + std::to_string(ranks));
      const auto got = dt_test::jsonl(o.string() + ".jsonl");
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < want.size(); ++i)  // the same packs, one rank each: bitwise
        EXPECT_EQ(got[i].dump(), want[i].dump()) << c.fixture << " ranks " << ranks;
      std::string name;
      const double r =
          dt_test::worst_rel_rms(o.string() + ".safetensors", one.string() + ".safetensors", name);
      std::printf("  %s on %d ranks: worst gradient rel RMS vs one rank %.2e (%s)\n",
                  c.fixture.c_str(), ranks, r, name.c_str());
      EXPECT_LE(r, 1e-6) << c.fixture << " on " << ranks << " ranks: " << name;
    }
  }
}

// Expert parallelism: the routed experts split over groups of 2 and 4 ranks (ep2, ep2 x dp2 on 4
// ranks, ep4), each rank running its own packs and serving its experts to the others' tokens.
// Rows reach the experts' GEMMs grouped differently than on one rank, so losses agree to float
// rounding (not bitwise) and gradients to the fp32 conditioning of the fixtures; against Hugging
// Face's float64 gradients the bound is the one-rank golden test's.
TEST(DataParallel, ScoreExpertParallelEqualsOneRank) {
  const dt_test::TempDir tmp("ep_score");
  struct Layout {
    int ranks, ep;
  };
  for (const std::string fixture : {"moe_text_fused_tied", "moe_vlm_mtp"}) {
    const fs::path d = fs::path(DT_TEST_DATA) / "golden" / fixture;
    const std::string mtp = fixture == "moe_vlm_mtp" ? " --mtp-scale 0.3" : "";
    for (const std::string router : {std::string(""), std::string(" --router-aux-coef 0.01 "
                                                                  "--z-loss-coef 0.001")}) {
      const std::string base = "score --quiet --model " + d.string() + " --data " +
                               (d / "samples.jsonl").string() + " --pack-tokens 64" + mtp + router;
      const fs::path one = tmp.path / (fixture + "_one");
      ASSERT_EQ(dt_test::score_ranks(1, base, one), 0) << dt_test::read_file(one.string() + ".err");
      const auto want = dt_test::jsonl(one.string() + ".jsonl");
      for (const Layout l : {Layout{2, 2}, Layout{4, 2}, Layout{4, 4}}) {
        const std::string what = fixture + " on " + std::to_string(l.ranks) + " ranks, ep " +
                                 std::to_string(l.ep) + (router.empty() ? "" : ", router losses");
        const fs::path o =
            tmp.path / (fixture + "_" + std::to_string(l.ranks) + "_" + std::to_string(l.ep));
        ASSERT_EQ(dt_test::score_ranks(l.ranks, base + " --ep " + std::to_string(l.ep), o), 0)
            << what << ": " << dt_test::read_file(o.string() + ".err");
        const auto got = dt_test::jsonl(o.string() + ".jsonl");
        ASSERT_EQ(got.size(), want.size());
        for (size_t i = 0; i < want.size(); ++i) {
          EXPECT_EQ(got[i]["n_tokens"], want[i]["n_tokens"]) << what;
          const double a = got[i]["loss_sum"], b = want[i]["loss_sum"];
          EXPECT_NEAR(a, b, 1e-6 * std::max(1.0, std::abs(b))) << what << ", sample " << i;
        }
        std::string name;
        const double r = dt_test::worst_rel_rms(o.string() + ".safetensors",
                                                one.string() + ".safetensors", name);
        std::printf("  %s: worst gradient rel RMS vs one rank %.2e (%s)\n", what.c_str(), r,
                    name.c_str());
        EXPECT_LE(r, 2e-5) << what << ": " << name;
        if (router.empty()) {  // the fixture's float64 gradients
          const double g =
              dt_test::worst_rel_rms(o.string() + ".safetensors", d / "grads.safetensors", name);
          std::printf("  %s: worst gradient rel RMS vs float64 %.2e (%s)\n", what.c_str(), g,
                      name.c_str());
          EXPECT_LE(g, 1e-4) << what << ": " << name;
        }
      }
    }
  }
}

// Six steps of the bundled example (dense, and MoE + MTP with the global aux loss, its running
// counts exchanged per layer in one rank's order) on two ranks with one micro-batch each against
// one rank with two: the same micro-batches and objective, so the losses and final weights agree
// to fp32 rounding.
TEST(DataParallel, TrainTracksOneRank) {
  const dt_test::TempDir tmp("dp_train");
  for (const std::string toml : {"train.toml", "train_moe.toml"}) {
    std::vector<double> losses[2];
    fs::path ckpt[2];
    for (int ranks : {1, 2}) {
      const std::string out = toml + "_" + std::to_string(ranks);
      std::string args = "train " + (dt_test::examples_dir() / "addition" / toml).string();
      for (std::string o : dt_test::short_run_overrides(tmp.path, out)) {
        if (o.rfind("training.grad_accum=", 0) == 0)
          o = "training.grad_accum=" + std::to_string(2 / ranks);
        args += " '--" + o + "'";
      }
      args += " --training.router_aux_coef=0.05";  // global (the default), weighty
      const fs::path err = tmp.path / (out + ".err");
      ASSERT_EQ(dt_test::run_ranks(ranks, args, err), 0)
          << toml << " on " << ranks << " ranks: " << dt_test::read_file(err);
      losses[ranks - 1] = dt_test::metric_losses(tmp.path / out / "metrics.jsonl");
      ckpt[ranks - 1] = tmp.path / out / train::checkpoint_dir_name(6);
    }
    ASSERT_EQ(losses[0].size(), 6u);
    ASSERT_EQ(losses[1].size(), 6u);
    for (size_t s = 0; s < 6; ++s)
      EXPECT_NEAR(losses[1][s], losses[0][s], 1e-5 * std::abs(losses[0][s]))
          << toml << " step " << s + 1;
    std::string name;
    const double r =
        dt_test::worst_rel_rms(ckpt[1] / "model.safetensors", ckpt[0] / "model.safetensors", name);
    std::printf("  %s: 2 ranks vs 1 after 6 steps: worst weight rel RMS %.2e (%s)\n", toml.c_str(),
                r, name.c_str());
    EXPECT_LE(r, 1e-5) << toml << ": " << name;
  }
}

// Six steps of the bundled MoE + MTP example with the routed experts split over 2 ranks (ep2,
// 2 micro-batches each) and over 2 groups of 2 (ep2 x dp2 on 4 ranks, 1 micro-batch each) against
// one rank with 4 micro-batches; then a checkpoint of the ep2 run resumed on one rank, and one of
// the one-rank run resumed on ep2 x dp2: the checkpoint holds every expert, so the layout may
// change.
TEST(DataParallel, TrainExpertParallelTracksOneRank) {
  const dt_test::TempDir tmp("ep_train");
  dt_test::LayoutRuns runs(tmp.path,
                           (dt_test::examples_dir() / "addition" / "train_moe.toml").string(),
                           "--training.router_aux_coef=0.05", 1e-6, 1e-5, 1e-4);
  const std::string ep2 = "--parallel.ep=2";
  ASSERT_TRUE(
      runs.run({{"one", 1, 4, "--parallel.ep=1"}, {"ep2", 2, 2, ep2}, {"ep2dp2", 4, 1, ep2}}));
  runs.keep_reference();
  runs.check("ep2", 0);
  runs.check("ep2dp2", 0);
  // Resumed on another layout from the step-3 checkpoint.
  ASSERT_TRUE(runs.run({{"ep2", 1, 4, "--parallel.ep=1"}, {"one", 4, 1, ep2}}, true));
  runs.check("ep2", 6);  // 6 steps, then steps 4-6 again
  runs.check("one", 6);
}
