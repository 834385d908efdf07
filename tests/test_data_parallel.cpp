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
#include "short_run.h"
#include "test_util.h"
#include "train/checkpoint_dir.h"

namespace fs = std::filesystem;
using namespace deltatron;

namespace {

// Runs `deltatron ARGS` on `ranks` ranks (1: directly); stderr into err. Returns the exit code.
int run(int ranks, const std::string& args, const fs::path& err) {
  const std::string bin = DT_BINARY;
  std::string cmd =
      ranks == 1 ? bin + " " + args
                 : bin + " launch --nproc " + std::to_string(ranks) + " -- " + bin + " " + args;
  cmd += " 2> " + err.string();
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

std::vector<nlohmann::json> jsonl(const fs::path& p) {
  std::vector<nlohmann::json> out;
  std::istringstream in(dt_test::read_file(p));
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

// Worst relative RMS difference over the tensors of two safetensors files (same names).
double worst_rel_rms(const fs::path& got, const fs::path& want, std::string& worst_name) {
  io::SafetensorsFile g(got.string()), w(want.string());
  EXPECT_EQ(g.names(), w.names());
  double worst = 0;
  for (const auto& name : w.names()) {
    if (!g.contains(name)) continue;
    const core::Tensor a = g.to_float(name), b = w.to_float(name);
    const double r = dt_test::compare(a.ptr(), b.ptr(), size_t(b.numel())).rel_rms;
    if (r > worst) worst = r, worst_name = name;
  }
  return worst;
}

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
      ASSERT_EQ(
          run(ranks,
              base + " --output " + o.string() + ".jsonl --grad-out " + o.string() + ".safetensors",
              o.string() + ".err"),
          0)
          << c.fixture << " on " << ranks << " ranks: " << dt_test::read_file(o.string() + ".err");
    }
    const fs::path one = tmp.path / (c.fixture + "_1");
    const auto want = jsonl(one.string() + ".jsonl");
    ASSERT_GE(want.size(), 3u);
    for (int ranks : {2, 3}) {
      const fs::path o = tmp.path / (c.fixture + "_" + std::to_string(ranks));
      const auto got = jsonl(o.string() + ".jsonl");
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < want.size(); ++i)  // the same packs, one rank each: bitwise
        EXPECT_EQ(got[i].dump(), want[i].dump()) << c.fixture << " ranks " << ranks;
      std::string name;
      const double r =
          worst_rel_rms(o.string() + ".safetensors", one.string() + ".safetensors", name);
      std::printf("  %s on %d ranks: worst gradient rel RMS vs one rank %.2e (%s)\n",
                  c.fixture.c_str(), ranks, r, name.c_str());
      EXPECT_LE(r, 1e-6) << c.fixture << " on " << ranks << " ranks: " << name;
    }
  }
}

// Six steps of the bundled example (dense, and MoE + MTP with the per-sample aux loss) on two
// ranks with one micro-batch each against one rank with two: the same micro-batches and
// objective, so the losses and final weights agree to fp32 rounding.
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
      args += " '--training.router_aux_type=\"seq\"'";
      const fs::path err = tmp.path / (out + ".err");
      ASSERT_EQ(run(ranks, args, err), 0)
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
        worst_rel_rms(ckpt[1] / "model.safetensors", ckpt[0] / "model.safetensors", name);
    std::printf("  %s: 2 ranks vs 1 after 6 steps: worst weight rel RMS %.2e (%s)\n", toml.c_str(),
                r, name.c_str());
    EXPECT_LE(r, 1e-5) << toml << ": " << name;
  }
}

// A run the data-parallel trainer does not cover yet is refused on every rank with the reason.
TEST(DataParallel, GlobalRouterAuxLossIsRefused) {
  const dt_test::TempDir tmp("dp_refuse");
  std::string args = "train " + (dt_test::examples_dir() / "addition" / "train_moe.toml").string();
  for (const std::string& o : dt_test::short_run_overrides(tmp.path, "out"))
    args += " '--" + o + "'";
  args += " '--training.router_aux_type=\"global\"' --training.router_aux_coef=0.01";
  const fs::path err = tmp.path / "err";
  EXPECT_NE(run(2, args, err), 0);
  EXPECT_NE(dt_test::read_file(err).find("router_aux_type = \"global\""), std::string::npos)
      << dt_test::read_file(err);
}
