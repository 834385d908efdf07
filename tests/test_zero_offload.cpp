// training.offload with ZeRO (docs/lean-state.md, docs/parallel.md): each rank offloads only its
// own shard of the state (the moments, and with master+moments the masters' remainders), so a
// store keeps its share of the offloaded masters; training on CPU ranks is bitwise the same run
// without offload (step losses, weights, masters, moments), within the ZeRO tests' bounds of one
// rank, and resumes bitwise on its own layout and across layouts. ZeRO 3 offloads its pieces
// (train/zero3.h) the same way.
#include <gtest/gtest.h>

#include <filesystem>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "model/params.h"
#include "model_fixture.h"
#include "ranks_run.h"
#include "short_run.h"
#include "test_util.h"
#include "train/zero.h"
#include "zero3_offload_check.h"
#include "zero_run.h"

namespace fs = std::filesystem;
using namespace deltatron;

namespace {
const std::string kLean = "'--training.master=\"remainder\"'";
const std::string kBf16 = " '--training.moments=\"bf16\"'";
std::string offload(const char* what) {
  return " '--training.offload=\"" + std::string(what) + "\"'";
}
std::vector<double> losses(const fs::path& dir, const std::string& out) {
  return dt_test::metric_losses(dir / out / "metrics.jsonl");
}

// A run of train_moe.toml resumed from step 3 (its step-6 checkpoint removed) on another layout:
// steps 4-6 give the same losses as the run it resumed, and the same checkpoint (bitwise when
// out is "again", the same layout; within 1e-5 across layouts).
struct Resume {
  const char* out;   // the resumed run's folder
  const char* from;  // the run it copies
  int ranks, zero;
  const char* offload;
};
void expect_resumes(const fs::path& dir, const std::vector<Resume>& resumes) {
  for (const Resume& r : resumes) {
    fs::copy(dir / r.from, dir / r.out, fs::copy_options::recursive);
    fs::remove_all(dir / r.out / train::checkpoint_dir_name(6));
    dt_test::train_run(dir, "train_moe.toml", r.out, r.ranks, r.zero,
                       kLean + offload(r.offload) + " --resume");
    if (::testing::Test::HasFailure()) return;
    const std::vector<double> got = losses(dir, r.out), want = losses(dir, r.from);
    ASSERT_EQ(got.size(), 9u) << r.out;  // 6 steps, then steps 4-6 again
    dt_test::expect_losses_near(std::vector<double>(got.begin() + 6, got.end()),
                                std::vector<double>(want.begin() + 3, want.end()), r.out);
    dt_test::expect_checkpoint_near(dir / r.out, dir / r.from, 6, r.out,
                                    std::string(r.out) == "again" ? 0.0 : 1e-5);
  }
}
}  // namespace

// A store told which tensors it owns (StateOptions::offload_owned, zero_owners' rule) keeps the
// offloaded remainders of those alone: over the ranks each tensor once, the host elements the
// rank's share; its own masters read back exactly, another rank's refused with the reason.
TEST(ZeroOffload, StoreKeepsItsShareOfTheOffloadedMasters) {
  const model::Config c = dt_test::tiny_moe_mtp_config();
  const model::TensorMap init = dt_test::random_params(c, 5);
  const model::StateOptions base =
      model::parse_state_options("remainder", "bf16", "master+moments", "t");
  const model::Params whole(core::Device::cpu, core::DType::f32, init, base);
  EXPECT_EQ(whole.offloaded_master_elements(), whole.total());
  for (int ranks : {2, 3}) {
    std::set<std::string> seen;
    int64_t kept = 0;
    for (int rank = 0; rank < ranks; ++rank) {
      model::StateOptions so = base;
      so.offload_owned = [&](const std::vector<model::ParamSpec>& ts) {
        const std::vector<int> o = train::zero_owners(ts, ranks);
        std::vector<bool> out;
        for (int r : o) out.push_back(r == rank);
        return out;
      };
      const model::Params p(core::Device::cpu, core::DType::f32, init, so);
      const train::ZeroShards s = train::zero_shards(p, ranks);
      // Its shard's tensors, each aligned to 64 elements.
      EXPECT_LE(p.offloaded_master_elements(), s.size(rank) + 64)
          << ranks << " ranks, rank " << rank;
      kept += p.offloaded_master_elements();
      for (const auto& name : p.names()) {
        const bool mine = s.owner(p.entry(name).offset) == rank;
        EXPECT_EQ(p.owns_master(name), mine) << name;
        std::vector<float> got(size_t(p.entry(name).numel));
        if (!mine) {
          dt_test::expect_error([&] { p.download_tensor(name, got.data()); },
                                {name, "another rank's", "read it through the engine"});
          continue;
        }
        EXPECT_TRUE(seen.insert(name).second) << name << " owned twice";
        p.download_tensor(name, got.data());
        const core::Tensor& want = init.at(name);
        for (size_t i = 0; i < got.size(); ++i)
          ASSERT_EQ(got[i], want.ptr()[i]) << name << " [" << i << "] on rank " << rank;
        EXPECT_NE(p.adamw_tensor(name).remainder.data, nullptr);
      }
    }
    EXPECT_EQ(seen.size(), whole.names().size()) << ranks << " ranks";
    EXPECT_EQ(kept, whole.total()) << ranks << " ranks: the shares add up to the whole";
  }
}

// Six steps of the MoE + MTP example (remainder masters: the CPU offloads the remainders) with
// ZeRO 1 and 2 on 2 and 3 ranks: every offload option bitwise the same layout without offload,
// and within the ZeRO tests' bounds of one rank; bf16 moments (ZeRO 2 on 2 ranks) bitwise too.
TEST(ZeroOffload, OffloadedShardsTrainBitwise) {
  const dt_test::TempDir tmp("zero_offload");
  dt_test::train_run(tmp.path, "train_moe.toml", "one", 1, 0, kLean);
  for (const auto& [zero, ranks, moments] : {std::tuple{1, 2, ""}, std::tuple{2, 2, ""},
                                             std::tuple{2, 3, ""}, std::tuple{2, 2, "bf16"}}) {
    const bool bf16 = std::string(moments) == "bf16";
    const std::string none =
        "zero" + std::to_string(zero) + "_ranks" + std::to_string(ranks) + (bf16 ? "_bf16" : "");
    const std::string state = kLean + (bf16 ? kBf16 : "");
    dt_test::train_run(tmp.path, "train_moe.toml", none, ranks, zero, state);
    for (const char* what : {"moments", "master+moments"}) {
      // Moments alone: ZeRO 2 on 2 ranks (the others differ from it in the masters only).
      if ((zero == 1 || ranks == 3 || bf16) && std::string(what) == "moments") continue;
      const std::string out = none + "_" + (std::string(what) == "moments" ? "moments" : "master");
      dt_test::train_run(tmp.path, "train_moe.toml", out, ranks, zero, state + offload(what));
      if (HasFailure()) return;
      EXPECT_EQ(losses(tmp.path, out), losses(tmp.path, none)) << out;
      for (int64_t step : {3, 6})
        dt_test::expect_checkpoint_near(tmp.path / out, tmp.path / none, step,
                                        out + " vs offload none", 0.0);
    }
    if (bf16) continue;  // one rank's bf16 moments round other values stochastically
    dt_test::expect_losses_near(losses(tmp.path, none), losses(tmp.path, "one"),
                                none + " vs one rank");
    dt_test::expect_checkpoint_near(tmp.path / none, tmp.path / "one", 6, none + " vs one rank",
                                    1e-5);
  }
  if (HasFailure()) return;
  // The ZeRO 2 run with offloaded masters, resumed from step 3: on its own layout (bitwise), on 3
  // ranks with offloaded masters, on one rank without offload.
  expect_resumes(tmp.path, {{"again", "zero2_ranks2_master", 2, 2, "master+moments"},
                            {"on_3", "zero2_ranks2_master", 3, 2, "master+moments"},
                            {"on_one", "zero2_ranks2_master", 1, 0, "none"}});
}

// With expert parallelism (ep2 on 2 ranks: the routed-expert slices' state over the ranks holding
// the same experts, the rest over both): ZeRO 2 and ZeRO 3 (the expert units' pieces offloaded
// too) with offloaded masters bitwise without offload.
TEST(ZeroOffload, ExpertParallelOffloadIsBitwise) {
  const dt_test::TempDir tmp("zero_offload_ep");
  const std::string ep = kLean + kBf16 + " --parallel.ep=2";
  for (int zero : {2, 3}) {
    const std::string none = "none" + std::to_string(zero),
                      master = "master" + std::to_string(zero);
    dt_test::train_run(tmp.path, "train_moe.toml", none, 2, zero, ep);
    dt_test::train_run(tmp.path, "train_moe.toml", master, 2, zero, ep + offload("master+moments"));
    if (HasFailure()) return;
    EXPECT_EQ(losses(tmp.path, master), losses(tmp.path, none));
    for (int64_t step : {3, 6})
      dt_test::expect_checkpoint_near(
          tmp.path / master, tmp.path / none, step,
          "zero" + std::to_string(zero) + " ep2 master+moments vs offload none", 0.0);
  }
}

// ZeRO 3's shard store on one rank with its pieces' state offloaded (f32, the CPU's; in bf16 with
// offloaded fp32 masters: tests/gpu/test_zero3_offload_cuda) steps bitwise as with the state on
// the device: the f32 weights with offloaded moments, the lean pair with offloaded remainders and
// moments (fp32 and bf16 moments), the lean pair with offloaded moments alone.
TEST(ZeroOffload, Zero3StoreStepsLikeTheDeviceStore) {
  for (const auto& [master, moments, what] :
       {std::tuple{"fp32", "fp32", "moments"}, std::tuple{"remainder", "fp32", "master+moments"},
        std::tuple{"remainder", "bf16", "master+moments"},
        std::tuple{"remainder", "bf16", "moments"}}) {
    SCOPED_TRACE(std::string(master) + " / " + moments + " / " + what);
    dt_test::expect_zero3_offload_store_like_device(
        core::Device::cpu, core::DType::f32,
        model::parse_state_options(master, moments, what, "test"));
    if (HasFatalFailure()) return;
  }
}

// ZeRO 3 on 2 ranks, six steps of the MoE + MTP example: offloading this rank's pieces (the
// moments; with master+moments the remainders of the lean pair too) is bitwise the same run as
// ZeRO 3 without offload (step losses; weights, masters and moments at steps 3 and 6), with the
// f32 model's fp32 state (offload = moments: its f32 weights are the masters the model reads, so
// the CPU offloads no masters with fp32) and with remainder masters and fp32 or bf16 moments.
// Then resumed from step 3: the offloaded run on its own layout (bitwise), on one rank without
// offload, and the one-rank run on 3 ranks with ZeRO 3 and offloaded masters (uneven pieces).
TEST(ZeroOffload, Zero3OffloadedPiecesTrainBitwise) {
  const dt_test::TempDir tmp("zero3_offload");
  dt_test::train_run(tmp.path, "train_moe.toml", "one", 1, 0, kLean);
  // {run without offload, its state options, the offload options to hold against it}
  const std::vector<std::tuple<std::string, std::string, std::vector<const char*>>> cases = {
      {"z3_fp32", "", {"moments"}},
      {"z3_lean", kLean, {"master+moments"}},
      {"z3_lean_bf16", kLean + kBf16, {"moments", "master+moments"}},
  };
  for (const auto& [none, state, whats] : cases) {
    dt_test::train_run(tmp.path, "train_moe.toml", none, 2, 3, state);
    for (const char* what : whats) {
      const std::string out = none + "_" + (std::string(what) == "moments" ? "moments" : "master");
      dt_test::train_run(tmp.path, "train_moe.toml", out, 2, 3, state + offload(what));
      if (HasFailure()) return;
      EXPECT_EQ(losses(tmp.path, out), losses(tmp.path, none)) << out;
      for (int64_t step : {3, 6})
        dt_test::expect_checkpoint_near(tmp.path / out, tmp.path / none, step,
                                        out + " vs offload none", 0.0);
    }
  }
  dt_test::expect_losses_near(losses(tmp.path, "z3_lean_master"), losses(tmp.path, "one"),
                              "z3_lean_master vs one");
  dt_test::expect_checkpoint_near(tmp.path / "z3_lean_master", tmp.path / "one", 6,
                                  "z3_lean_master vs one rank", 1e-5);
  if (HasFailure()) return;
  // Resumed from step 3 across layouts.
  expect_resumes(tmp.path, {{"again", "z3_lean_master", 2, 3, "master+moments"},
                            {"on_one", "z3_lean_master", 1, 0, "none"},
                            {"one_on_3", "one", 3, 3, "master+moments"}});
}

// With tensor parallelism (tp2 on 2 ranks, the dense example: one data-parallel rank, so the
// ZeRO 3 store of each tp slice is a single shard of its tp-local tensors, the gradient norm over
// the group): ZeRO 3 with offloaded remainders and moments bitwise without offload.
TEST(ZeroOffload, TensorParallelZero3OffloadIsBitwise) {
  const dt_test::TempDir tmp("zero3_offload_tp");
  const std::string tp = kLean + " --parallel.tp=2";
  dt_test::train_run(tmp.path, "train.toml", "none", 2, 3, tp);
  dt_test::train_run(tmp.path, "train.toml", "master", 2, 3, tp + offload("master+moments"));
  if (HasFailure()) return;
  EXPECT_EQ(losses(tmp.path, "master"), losses(tmp.path, "none"));
  for (int64_t step : {3, 6})
    dt_test::expect_checkpoint_near(tmp.path / "master", tmp.path / "none", step,
                                    "zero3 tp2 master+moments vs offload none", 0.0);
}
