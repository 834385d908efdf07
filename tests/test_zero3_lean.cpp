// ZeRO 3 with the lean training state (training.master = remainder: bf16 weights + 16-bit
// remainders, docs/lean-state.md) sharded like the other state: the shard store on one rank
// against the flat parameter store (load, gathered weights, AdamW steps, reads: bitwise; in bf16,
// with the routers' f32 weights, on the GPU: tests/gpu/test_zero3_lean_cuda), and training on CPU
// ranks: ZeRO 3 with remainder masters is bitwise ZeRO 3 with fp32 masters (the pair is the master,
// bit for bit), tracks one rank, and resumes bitwise on its own layout and across layouts.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <tuple>
#include <vector>

#include "ranks_run.h"
#include "short_run.h"
#include "test_util.h"
#include "zero3_lean_check.h"
#include "zero_run.h"

namespace fs = std::filesystem;
using namespace deltatron;

// The shard store on one rank in f32 (the CPU's; tests/gpu/test_zero3_lean_cuda runs it in bf16).
TEST(Zero3Lean, ShardStoreStepsLikeTheFlatStore) {
  dt_test::expect_zero3_lean_store_like_flat(core::Device::cpu, core::DType::f32);
}

// Six steps of the bundled MoE + MTP example: ZeRO 3 with remainder masters on 2 ranks is
// bitwise ZeRO 3 with fp32 masters on 2 ranks (weights, masters, moments, step losses), and
// within the ZeRO 3 test's bounds of the one-rank remainder run; with bf16 moments too. Then
// resumed from step 3 on its own layout (bitwise), on 3 ranks, and on one rank without ZeRO.
TEST(Zero3Lean, RemainderMastersTrainLikeFp32Masters) {
  const dt_test::TempDir tmp("zero3_lean");
  const std::string rem = "'--training.master=\"remainder\"'";
  const std::string bf16 = " '--training.moments=\"bf16\"'";
  dt_test::train_run(tmp.path, "train_moe.toml", "one_rem", 1, 0, rem);
  dt_test::train_run(tmp.path, "train_moe.toml", "zero3_fp32", 2, 3);
  dt_test::train_run(tmp.path, "train_moe.toml", "zero3_rem", 2, 3, rem);
  dt_test::train_run(tmp.path, "train_moe.toml", "zero3_fp32_bf16", 2, 3, bf16);
  dt_test::train_run(tmp.path, "train_moe.toml", "zero3_rem_bf16", 2, 3, rem + bf16);
  if (HasFailure()) return;
  const auto losses = [&](const std::string& out) {
    return dt_test::metric_losses(tmp.path / out / "metrics.jsonl");
  };
  EXPECT_EQ(losses("zero3_rem"), losses("zero3_fp32"));
  EXPECT_EQ(losses("zero3_rem_bf16"), losses("zero3_fp32_bf16"));
  for (int64_t step : {3, 6}) {
    dt_test::expect_checkpoint_near(tmp.path / "zero3_rem", tmp.path / "zero3_fp32", step,
                                    "zero3 remainder vs fp32 masters", 0.0);
    dt_test::expect_checkpoint_near(tmp.path / "zero3_rem_bf16", tmp.path / "zero3_fp32_bf16", step,
                                    "zero3 remainder vs fp32 masters, bf16 moments", 0.0);
  }
  dt_test::expect_losses_near(losses("zero3_rem"), losses("one_rem"), "zero3_rem vs one rank");
  dt_test::expect_checkpoint_near(tmp.path / "zero3_rem", tmp.path / "one_rem", 6,
                                  "zero3 remainder vs one rank", 1e-5);

  // Resumed from step 3: on its own layout (bitwise), on 3 ranks, on one rank without ZeRO.
  for (const auto& [out, ranks, zero] :
       {std::tuple{"zero3_rem_again", 2, 3}, std::tuple{"zero3_rem_on_3", 3, 3},
        std::tuple{"zero3_rem_on_one", 1, 0}}) {
    fs::copy(tmp.path / "zero3_rem", tmp.path / out, fs::copy_options::recursive);
    fs::remove_all(tmp.path / out / train::checkpoint_dir_name(6));
    dt_test::train_run(tmp.path, "train_moe.toml", out, ranks, zero, rem + " --resume");
    if (HasFailure()) return;
    const std::vector<double> got = losses(out), want = losses("zero3_rem");
    ASSERT_EQ(got.size(), 9u) << out;  // 6 steps, then steps 4-6 again
    dt_test::expect_losses_near(std::vector<double>(got.begin() + 6, got.end()),
                                std::vector<double>(want.begin() + 3, want.end()), out);
    dt_test::expect_checkpoint_near(tmp.path / out, tmp.path / "zero3_rem", 6, out,
                                    ranks == 2 ? 0.0 : 1e-5);
  }
}
