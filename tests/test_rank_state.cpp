// The memory plan per rank under the parallel layouts (train/rank_state.h): the device state of
// data parallelism, expert and tensor parallelism, ZeRO 1/2 (moments sharded, gradients whole)
// and ZeRO 3 (everything sharded plus the gathered layers), by hand for small configs and against
// the shards the engines really lay out (train/zero.h, train/zero3.h); a 35B MoE refused on one
// rank fits its 8-GPU layout.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>

#include "model/config.h"
#include "model/expert_parallel.h"
#include "model/footprint.h"
#include "model/params.h"
#include "model/tensor_parallel.h"
#include "test_util.h"
#include "train/memory_plan.h"
#include "train/presets.h"
#include "train/rank_state.h"
#include "train/zero.h"
#include "train/zero3.h"

using namespace deltatron;
namespace fs = std::filesystem;

namespace {

constexpr double kGiB = double(1ull << 30);

model::Config fixture(const std::string& name) {
  model::Config c =
      model::load_config((fs::path(DT_TEST_DATA) / "golden" / name / "config.json").string());
  c.mtp_enabled = c.mtp_num_hidden_layers > 0;
  return c;
}

// CUDA, bf16 compute, fp32 masters and moments: 10 B/param held (gradient 4, compute copy 2,
// master 4) + 8 B of moments.
train::PlanInput input(const train::PlanLayout& l) {
  train::PlanInput in;
  in.device = core::Device::cuda;
  in.compute = core::DType::bf16;
  in.micro_batch_tokens = 512;
  in.layout = l;
  return in;
}

train::PlanLayout layout(int64_t dp, int zero, int64_t ep = 1, int64_t tp = 1) {
  train::PlanLayout l;
  l.dp = dp;
  l.zero = zero;
  l.ep = ep;
  l.tp = tp;
  return l;
}

// A store shaped like one rank's of the layout (its expert slices), f32 zeros.
model::Params local_store(const model::Config& c, int64_t ep) {
  model::TensorMap host;
  for (const model::ParamSpec& s : model::param_specs(c)) {
    core::Shape shape = s.shape;
    if (ep > 1 && model::is_routed_expert_tensor(s.name)) shape[0] /= ep;
    host.emplace(s.name, core::Tensor(shape));
  }
  return model::Params(core::Device::cpu, core::DType::f32, host);
}

// Elements of the spec tensors that pass `pick`, and the largest one.
template <typename Pick>
std::pair<int64_t, int64_t> count(const model::Config& c, Pick pick, int64_t div = 1) {
  int64_t n = 0, largest = 0;
  for (const model::ParamSpec& s : model::param_specs(c))
    if (pick(s.name)) {
      n += core::numel(s.shape) / div;
      largest = std::max(largest, core::numel(s.shape) / div);
    }
  return {n, largest};
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

// No ZeRO: every rank holds its tensors' whole state; ep divides the routed experts, tp the
// sharded tensors.
TEST(RankState, ReplicatedExpertAndTensorParallel) {
  const model::Config moe = fixture("moe_vlm_mtp");
  const int64_t n = model::param_count(moe);
  const auto [ne, ne_largest] = count(moe, model::is_routed_expert_tensor);
  ASSERT_GT(ne, 0);
  const int64_t largest = count(moe, [](const std::string&) { return true; }).second;
  EXPECT_DOUBLE_EQ(train::plan_memory(moe, input({})).host_save, 8.0 * double(largest));
  const auto one = train::plan_memory(moe, input({}));
  EXPECT_DOUBLE_EQ(one.state, 18.0 * double(n));
  EXPECT_DOUBLE_EQ(train::plan_memory(moe, input(layout(4, 0))).state, 18.0 * double(n));
  for (int64_t ep : {2, 4}) {
    const auto p = train::plan_memory(moe, input(layout(4, 0, ep)));
    EXPECT_EQ(p.local_params, n - ne + ne / ep) << ep;
    EXPECT_DOUBLE_EQ(p.state, 18.0 * double(n - ne + ne / ep)) << ep;
    // A save streams one tensor at a time to rank 0 (gathering its slices there).
    EXPECT_DOUBLE_EQ(p.host_save, 12.0 * double(largest)) << ep;
  }
  const model::Config dense = fixture("dense_text_mtp");
  const int64_t nd = model::param_count(dense);
  const auto [nt, nt_largest] =
      count(dense, [&](const std::string& name) { return model::is_tp_sharded(dense, name); });
  ASSERT_GT(nt, 0);
  const auto tp = train::plan_memory(dense, input(layout(2, 0, 1, 2)));
  EXPECT_DOUBLE_EQ(tp.state, 18.0 * double(nd - nt + nt / 2));
  EXPECT_NE(train::describe(tp).find("dp 2, tp 2"), std::string::npos) << train::describe(tp);
}

// ZeRO 1 and 2: the moments of an even share plus at most one tensor per group, the rest whole
// (stage 2 reduce-scatters into the full gradient buffer, so it holds what stage 1 holds, plus
// the staging); with ep the expert slices' moments over the dp / ep ranks holding them. The
// shards the engine lays out are never larger than the plan's.
TEST(RankState, Zero12ShardsTheMoments) {
  const model::Config c = fixture("moe_vlm_mtp");
  const int64_t n = model::param_count(c);
  {
    const auto [all, largest] = count(c, [](const std::string&) { return true; });
    ASSERT_EQ(all, n);
    const int64_t share = ceil_div(n, 4) + largest;
    const auto z1 = train::plan_memory(c, input(layout(4, 1)));
    const auto z2 = train::plan_memory(c, input(layout(4, 2)));
    EXPECT_DOUBLE_EQ(z1.state, 10.0 * double(n) + 8.0 * double(share));
    EXPECT_DOUBLE_EQ(z2.state, z1.state);
    EXPECT_DOUBLE_EQ(z1.staging, 0.0);
    EXPECT_DOUBLE_EQ(z2.staging, 5.0 * double(std::min<int64_t>(share, 1 << 22)) * 4);
    EXPECT_LE(train::zero_shards(local_store(c, 1), 4).largest(), share);
    // One rank: nothing to shard.
    EXPECT_DOUBLE_EQ(train::plan_memory(c, input(layout(1, 2))).state, 18.0 * double(n));
  }
  {  // ep 2 over dp 4: the replicated tensors over 4 ranks, each expert slice over 2
    const auto [nd, dense_largest] =
        count(c, [](const std::string& name) { return !model::is_routed_expert_tensor(name); });
    const auto [ne, expert_largest] = count(c, model::is_routed_expert_tensor, 2);
    const int64_t dense_share = ceil_div(nd, 4) + dense_largest;
    const int64_t expert_share = ceil_div(ne, 2) + expert_largest;
    const auto z1 = train::plan_memory(c, input(layout(4, 1, 2)));
    EXPECT_DOUBLE_EQ(z1.state, 10.0 * double(nd + ne) + 8.0 * double(dense_share + expert_share));
    const auto z2 = train::plan_memory(c, input(layout(4, 2, 2)));
    EXPECT_DOUBLE_EQ(z2.staging, 5.0 * double(std::min<int64_t>(dense_share, 1 << 22)) * 4);
    const model::Params p = local_store(c, 2);
    const train::TensorFilter dense = [](const std::string& name) {
      return !model::is_routed_expert_tensor(name);
    };
    EXPECT_LE(train::zero_shards(p, 4, dense).largest(), dense_share);
    EXPECT_LE(train::zero_shards(p, 2, model::is_routed_expert_tensor).largest(), expert_share);
  }
}

// ZeRO 3: this rank's pieces of every unit (exactly the shard train/zero3.h lays out) x 18 B,
// plus the gathered buffers: the outer unit (bf16 weights, the f32 weights of its routers, f32
// gradients), two layers' weights (and f32 copies: the layers hold routers) and one layer's
// gradient, for the replicated and the expert units apart, and the reduced piece.
TEST(RankState, Zero3ShardsEverythingPlusGatheredLayers) {
  const model::Config c = fixture("moe_vlm_mtp");
  for (const int64_t ep : {1, 2}) {
    const int64_t dp = 4;
    const model::Params p = local_store(c, ep);
    const train::Zero3Layout l = train::zero3_layout(p, c, int(dp), 0, ep > 1 ? int(dp / ep) : 0);
    double gathered = 0;
    int64_t largest_piece = 0;
    for (const bool expert : {false, true}) {
      int64_t layer = 0;
      bool layer_f32 = false;
      for (size_t u = 0; u < l.units.size(); ++u) {
        const auto& unit = l.units[u];
        if (unit.expert != expert || unit.numel == 0) continue;
        bool router = false;
        for (size_t i : unit.tensors) router = router || model::keeps_f32_weight(l.tensors[i].name);
        const int64_t full = unit.piece * l.ranks_of(unit);
        largest_piece = std::max(largest_piece, unit.piece);
        if (int(u) % l.model_units == 0) {  // outer: bf16 weights, f32 router weights, gradients
          gathered += double(full) * (2 + (router ? 4 : 0) + 4);
        } else {
          layer = std::max(layer, full);
          layer_f32 = layer_f32 || router;
        }
      }
      gathered += double(layer) * (2 * 2 + (layer_f32 ? 8 : 0) + 4);
    }
    gathered += 4.0 * double(largest_piece);
    const auto z3 = train::plan_memory(c, input(layout(dp, 3, ep)));
    EXPECT_DOUBLE_EQ(z3.gathered, gathered) << "ep " << ep;
    EXPECT_DOUBLE_EQ(z3.state - z3.gathered, 18.0 * double(l.shard)) << "ep " << ep;
    // Scoring (no moments, no gathered gradients): the shard's 10 B and the weights' buffers.
    train::PlanInput score = input(layout(dp, 3, ep));
    score.training = false;
    EXPECT_DOUBLE_EQ(train::plan_memory(c, score).state - train::plan_memory(c, score).gathered,
                     10.0 * double(l.shard))
        << "ep " << ep;
    std::printf("  moe_vlm_mtp, dp %lld, zero 3, ep %lld: %s\n", static_cast<long long>(dp),
                static_cast<long long>(ep), train::describe(z3).c_str());
  }
}

// The 35B MoE preset, all 40 layers: on one 80 GB card its state (14 B/param with bf16 moments:
// 450 GiB) is refused; ZeRO 3 with ep 8 on 8 GPUs holds an eighth of it plus the gathered
// layers, and fits the device. The host: every rank reads only its expert slices (its share of
// the f32 weights plus the loader's staging of two of the largest tensor), and a save streams the
// state to rank 0 one tensor at a time (train/state_stream.h), so 8 ranks on one 560 GiB host fit;
// a resume, which reads each rank's moments of its share whole before the engine keeps its ZeRO 3
// pieces, does not.
TEST(RankState, MoePresetRefusedOnOneRankFitsZero3ExpertParallel) {
  model::Config c = model::parse_config(train::preset_config("35b-a3b"), "preset 35b-a3b");
  c.mtp_enabled = false;
  train::PlanInput in = input({});
  in.state = model::parse_state_options("fp32", "bf16", "none", "test");
  in.micro_batch_tokens = 4096;
  in.recompute = true;
  const train::Available h100{79.0 * kGiB, 8192.0 * kGiB};
  dt_test::expect_error([&] { train::check_memory_plan(c, in, h100, "35b.toml"); },
                        {"35b.toml: this run does not fit in memory", "79 GiB on the device"});
  train::PlanLayout l = layout(8, 3, 8);
  l.local_ranks = 8;
  in.layout = l;
  train::check_memory_plan(c, in, h100, "35b.toml");
  const train::MemoryPlan p = train::plan_memory(c, in);
  std::printf("  35b-a3b, dp 8, zero 3, ep 8: %s\n", train::describe(p).c_str());
  EXPECT_LT(p.device_total(), 79.0 * kGiB);
  EXPECT_LT(p.state, 14.0 * double(p.params) / 8 + p.gathered + 14.0 * 64 * 2 * 41);
  // The host weights: this rank's share (its expert slices, every other tensor whole) in f32 and
  // the loader's staging, not the whole model.
  int64_t largest = 0;
  for (const model::ParamSpec& s : model::param_specs(c))
    largest = std::max(largest, core::numel(s.shape));
  EXPECT_DOUBLE_EQ(p.host_weights, 4.0 * double(p.local_params) + 8.0 * double(largest));
  EXPECT_LT(p.host_weights, 4.0 * double(p.params) / 4);
  // The save streams the state to rank 0 one tensor at a time (12 B x the largest tensor, the
  // 0.54B-element embedding: 6 GiB) instead of gathering it on every rank (12 B/param, 387 GiB):
  // 8 ranks' shares and save buffers (34.1 GiB each, 273 GiB) fit a 560 GiB host.
  EXPECT_DOUBLE_EQ(p.host_save, 12.0 * double(largest));
  const train::Available host560{79.0 * kGiB, 560.0 * kGiB};
  train::check_memory_plan(c, in, host560, "35b.toml");
  EXPECT_LT(8 * p.host_total(), 300.0 * kGiB);
  // A resume still reads this rank's moments of its ep share in f32 (8 B x 6.47B = 48 GiB) before
  // the engine keeps its ZeRO 3 pieces: 76.4 GiB per rank, 611 GiB for 8, refused on that host.
  train::PlanInput resume = in;
  resume.resuming = true;
  const train::MemoryPlan pr = train::plan_memory(c, resume);
  EXPECT_DOUBLE_EQ(pr.host_save, 8.0 * double(pr.local_params));
  std::printf("  35b-a3b, dp 8, zero 3, ep 8, resumed: %s\n", train::describe(pr).c_str());
  dt_test::expect_error([&] { train::check_memory_plan(c, resume, host560, "35b.toml"); },
                        {"does not fit", "per rank x 8 on this host"});
  // ZeRO 1 with ep 8 shards only the moments: the bf16 weights, fp32 masters and gradients of
  // every local tensor stay (10 B x 6.47B), and with the activations do not fit.
  in.layout = layout(8, 1, 8);
  const train::MemoryPlan z1 = train::plan_memory(c, in);
  EXPECT_GT(z1.device_total(), 79.0 * kGiB);
}
