// ZeRO stages 1 and 2 on CPU ranks (Gloo; processes started by `deltatron launch`) against the
// one-rank run: six steps of the bundled example (dense, and MoE + MTP with the per-sample aux
// loss) with the same global micro-batches (grad_accum x ranks = 6): step losses, final weights
// and the saved AdamW moments; a ZeRO 2 run saved at step 3 on 2 ranks resumed on 3 ranks and on
// one; the shard layout; what the config refuses.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/params.h"
#include "ranks_run.h"
#include "short_run.h"
#include "test_util.h"
#include "train/checkpoint_dir.h"
#include "train/train_config.h"
#include "train/zero.h"
#include "zero_run.h"

namespace fs = std::filesystem;
using namespace deltatron;
using dt_test::expect_checkpoint_near;
using dt_test::expect_losses_near;
using dt_test::train_run;

namespace {

// Zero 1 and 2 on 2 and 3 ranks against one rank, both checkpoints (steps 3 and 6).
void tracks_one_rank(const fs::path& dir, const std::string& toml) {
  train_run(dir, toml, "one", 1, 0);
  const auto want = dt_test::metric_losses(dir / "one" / "metrics.jsonl");
  ASSERT_EQ(want.size(), 6u);
  for (int zero : {1, 2})
    for (int ranks : {2, 3}) {
      const std::string out = "zero" + std::to_string(zero) + "_ranks" + std::to_string(ranks);
      train_run(dir, toml, out, ranks, zero);
      const std::string what = toml + " " + out;
      expect_losses_near(dt_test::metric_losses(dir / out / "metrics.jsonl"), want, what);
      for (int64_t step : {3, 6}) expect_checkpoint_near(dir / out, dir / "one", step, what, 1e-5);
    }
}

}  // namespace

TEST(Zero, DenseTracksOneRank) {
  const dt_test::TempDir tmp("zero_dense");
  tracks_one_rank(tmp.path, "train.toml");
  if (HasFailure()) return;
  // The ZeRO 2 run on 2 ranks, resumed from its step-3 checkpoint on 3 ranks (ZeRO 2) and on one
  // rank (no ZeRO): steps 4-6 as the straight runs.
  const auto want = dt_test::metric_losses(tmp.path / "one" / "metrics.jsonl");
  for (const auto& [ranks, zero] : {std::pair{3, 2}, std::pair{1, 0}}) {
    const std::string out = "resumed_on_" + std::to_string(ranks);
    fs::copy(tmp.path / "zero2_ranks2", tmp.path / out, fs::copy_options::recursive);
    fs::remove_all(tmp.path / out / train::checkpoint_dir_name(6));
    train_run(tmp.path, "train.toml", out, ranks, zero, "--resume");
    const auto got = dt_test::metric_losses(tmp.path / out / "metrics.jsonl");
    ASSERT_EQ(got.size(), 9u);  // the straight run's 6, and steps 4-6 again
    expect_losses_near(std::vector<double>(got.begin() + 6, got.end()),
                       std::vector<double>(want.begin() + 3, want.end()), out);
    expect_checkpoint_near(tmp.path / out, tmp.path / "one", 6, out, 1e-5);
  }
}

TEST(Zero, MoeTracksOneRank) {
  const dt_test::TempDir tmp("zero_moe");
  tracks_one_rank(tmp.path, "train_moe.toml");
}

// The shards: contiguous, tensor-aligned, covering the flat space, balanced by element count.
TEST(Zero, ShardsAreTensorAlignedAndBalanced) {
  model::TensorMap host;
  const std::vector<int64_t> sizes = {1000, 7, 5000, 13, 2400, 2400, 999, 1, 3000, 64};
  for (size_t i = 0; i < sizes.size(); ++i)
    host.emplace("t" + std::to_string(i), core::Tensor({sizes[i]}));
  const model::Params p(core::Device::cpu, core::DType::f32, host);
  for (int ranks : {1, 2, 3, 4, 7, 16}) {
    const train::ZeroShards s = train::zero_shards(p, ranks);
    ASSERT_EQ(s.ranks(), ranks);
    EXPECT_EQ(s.lo(0), 0);
    EXPECT_EQ(s.hi(ranks - 1), p.total());
    std::vector<int64_t> starts;
    for (const auto& name : p.names()) starts.push_back(p.entry(name).offset);
    for (int r = 0; r < ranks; ++r) {
      EXPECT_LE(s.lo(r), s.hi(r));
      if (s.size(r) > 0) {  // starts at a tensor; owner() maps its tensors to it
        EXPECT_NE(std::find(starts.begin(), starts.end(), s.lo(r)), starts.end()) << r;
        EXPECT_EQ(s.owner(s.lo(r)), r);
      }
    }
    // Balanced: no shard larger than its even share plus the largest tensor.
    const int64_t share = p.total() / ranks + 5000 + 64;
    for (int r = 0; r < ranks; ++r) EXPECT_LE(s.size(r), share) << ranks << " ranks, rank " << r;
  }
}

// What ZeRO does not cover is refused with the reason.
TEST(Zero, ConfigRefusals) {
  const std::string toml = (dt_test::examples_dir() / "addition" / "train.toml").string();
  dt_test::expect_error([&] { train::load_train_config(toml, {"parallel.zero=4"}); },
                        {"parallel.zero = 4", "must be 0", "3 (and the weights"});
  // Offload with ZeRO 1 and 2 is built (test_zero_offload): each rank offloads its shard.
  EXPECT_EQ(
      train::load_train_config(toml, {"parallel.zero=1", "training.offload=\"moments\""}).offload,
      "moments");
  // LoRA with ZeRO is built (test_lora_parallel): the adapters' moments sharded.
  EXPECT_EQ(train::load_train_config(toml, {"parallel.zero=2", "lora.r=4"}).parallel_zero, 2);
  EXPECT_EQ(train::load_train_config(toml, {"parallel.zero=2"}).parallel_zero, 2);
}
