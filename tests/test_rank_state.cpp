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

#include "model/adapters.h"
#include "model/config.h"
#include "model/expert_parallel.h"
#include "model/footprint.h"
#include "model/lora.h"
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

// A store shaped like one rank's of the layout (its expert slices, its tp shards), f32 zeros.
model::Params local_store(const model::Config& c, int64_t ep, int64_t tp = 1,
                          const model::StateOptions& so = {}) {
  model::TensorMap host;
  for (const model::ParamSpec& s : model::param_specs(c)) {
    core::Shape shape = s.shape;
    if (ep > 1 && model::is_routed_expert_tensor(s.name)) shape[0] /= ep;
    if (const model::TpSplit split = model::tp_split(c, s.name); tp > 1 && split.dim >= 0)
      shape[size_t(split.dim)] /= tp;
    host.emplace(s.name, core::Tensor(shape));
  }
  return model::Params(core::Device::cpu, core::DType::f32, host, so);
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

// ZeRO 1 and 2 with training.offload: each rank offloads its own shards' moments (and with
// master+moments its masters) alone, so its host state is the shard's share; the device keeps
// the weights and gradients whole (bf16 compute, fp32 masters: 2 + 4 B with the masters
// offloaded). One rank without ZeRO offloads every tensor's. The offloaded masters a store keeps
// (StateOptions::offload_owned) are never more than the plan's share.
TEST(RankState, Zero12OffloadsTheShard) {
  const model::Config c = fixture("moe_vlm_mtp");
  const int64_t n = model::param_count(c);
  const int64_t largest = count(c, [](const std::string&) { return true; }).second;
  const int64_t share = ceil_div(n, 4) + largest;
  for (int zero : {1, 2}) {
    train::PlanInput in = input(layout(4, zero));
    in.state = model::parse_state_options("fp32", "fp32", "moments", "test");
    const auto moments = train::plan_memory(c, in);
    EXPECT_DOUBLE_EQ(moments.state, 10.0 * double(n)) << zero;
    EXPECT_DOUBLE_EQ(moments.host_state, 8.0 * double(share)) << zero;
    in.state = model::parse_state_options("fp32", "fp32", "master+moments", "test");
    const auto master = train::plan_memory(c, in);
    EXPECT_DOUBLE_EQ(master.state, 6.0 * double(n)) << zero;
    EXPECT_DOUBLE_EQ(master.host_state, 12.0 * double(share)) << zero;
    EXPECT_GT(master.staging, 0.0);
    in.layout = {};  // one rank: every tensor's state offloaded
    EXPECT_DOUBLE_EQ(train::plan_memory(c, in).host_state, 12.0 * double(n)) << zero;
  }
  // The stores' offloaded masters (remainders on the CPU) against the plan's share.
  model::TensorMap host;
  for (const model::ParamSpec& sp : model::param_specs(c))
    host.emplace(sp.name, core::Tensor(sp.shape));
  for (int rank = 0; rank < 4; ++rank) {
    model::StateOptions so = model::parse_state_options("remainder", "fp32", "master+moments", "t");
    so.offload_owned = [rank](const std::vector<model::ParamSpec>& ts) {
      std::vector<bool> out;
      for (int r : train::zero_owners(ts, 4)) out.push_back(r == rank);
      return out;
    };
    const model::Params p(core::Device::cpu, core::DType::f32, host, so);
    EXPECT_LE(p.offloaded_master_elements(), share + 64 * int64_t(p.names().size())) << rank;
    EXPECT_LE(p.offloaded_master_elements(), train::zero_shards(p, 4).size(rank) + 64) << rank;
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

// ZeRO 3 with training.offload: each rank offloads its own pieces' moments (and with
// master+moments its pieces' fp32 masters) alone, so its host state is the shard's share and the
// device keeps the rest of the shard (bf16 compute, fp32 masters: 10 B per element with the
// moments offloaded, 6 with the masters too), the gathered buffers unchanged; the step's staging
// slots are counted. Scoring offloads no moments.
TEST(RankState, Zero3OffloadsItsPieces) {
  const model::Config c = fixture("moe_vlm_mtp");
  const int64_t dp = 4;
  const model::Params p = local_store(c, 1);
  const train::Zero3Layout l = train::zero3_layout(p, c, int(dp), 0);
  const auto none = train::plan_memory(c, input(layout(dp, 3)));
  EXPECT_DOUBLE_EQ(none.host_state, 0.0);
  train::PlanInput in = input(layout(dp, 3));
  in.state = model::parse_state_options("fp32", "fp32", "moments", "test");
  const auto moments = train::plan_memory(c, in);
  EXPECT_DOUBLE_EQ(moments.gathered, none.gathered);
  EXPECT_DOUBLE_EQ(moments.state - moments.gathered, 10.0 * double(l.shard));
  EXPECT_DOUBLE_EQ(moments.host_state, 8.0 * double(l.shard));
  EXPECT_GT(moments.staging, none.staging);
  in.state = model::parse_state_options("fp32", "fp32", "master+moments", "test");
  const auto master = train::plan_memory(c, in);
  EXPECT_DOUBLE_EQ(master.state - master.gathered, 6.0 * double(l.shard));
  EXPECT_DOUBLE_EQ(master.host_state, 12.0 * double(l.shard));
  // The lean pair with bf16 moments: 2 + 4 B on the device, the remainders and moments (2 + 4 B)
  // on the host.
  in.state = model::parse_state_options("remainder", "bf16", "master+moments", "test");
  const auto lean = train::plan_memory(c, in);
  EXPECT_DOUBLE_EQ(lean.state - lean.gathered, 6.0 * double(l.shard));
  EXPECT_DOUBLE_EQ(lean.host_state, 6.0 * double(l.shard));
  in.training = false;  // scoring: the masters alone
  EXPECT_DOUBLE_EQ(train::plan_memory(c, in).host_state, 2.0 * double(l.shard));
}

// ZeRO with tensor parallelism (tp 2 x dp 2): each rank's tp-local tensors (the shards and the
// replicated ones) have their moments (ZeRO 1, 2) or everything (ZeRO 3) sharded over the 2
// data-parallel ranks holding the same tp slice, exactly as the engines lay them out; ZeRO 3 with
// the lean pair (bf16 weights + remainders: 2 + 2 + 4 B, fp32 moments 8) holds 16 B per element
// of its shard instead of 18.
TEST(RankState, ZeroWithTensorParallelShardsTheLocalTensors) {
  const model::Config c = fixture("dense_text_mtp");
  model::TensorMap host;
  int64_t local = 0, largest = 0;
  for (const model::ParamSpec& s : model::param_specs(c)) {
    core::Shape shape = s.shape;
    const model::TpSplit split = model::tp_split(c, s.name);
    if (split.dim >= 0) shape[size_t(split.dim)] /= 2;
    local += core::numel(shape);
    largest = std::max(largest, core::numel(shape));
    host.emplace(s.name, core::Tensor(shape));
  }
  const model::Params p(core::Device::cpu, core::DType::f32, host);
  const int64_t share = ceil_div(local, 2) + largest;
  const auto z1 = train::plan_memory(c, input(layout(2, 1, 1, 2)));
  EXPECT_EQ(z1.local_params, local);
  EXPECT_DOUBLE_EQ(z1.state, 10.0 * double(local) + 8.0 * double(share));
  EXPECT_LE(train::zero_shards(p, 2).largest(), share);
  const auto z2 = train::plan_memory(c, input(layout(2, 2, 1, 2)));
  EXPECT_DOUBLE_EQ(z2.state, z1.state);
  EXPECT_DOUBLE_EQ(z2.staging, 3.0 * double(std::min<int64_t>(share, 1 << 22)) * 4);
  model::StateOptions gathered;
  gathered.gathered = true;
  const model::Params pg(core::Device::cpu, core::DType::f32, host, gathered);
  const train::Zero3Layout l = train::zero3_layout(pg, c, 2, 0);
  const auto z3 = train::plan_memory(c, input(layout(2, 3, 1, 2)));
  EXPECT_DOUBLE_EQ(z3.state - z3.gathered, 18.0 * double(l.shard));
  train::PlanInput lean = input(layout(2, 3, 1, 2));
  lean.state = model::parse_state_options("remainder", "fp32", "none", "test");
  const auto z3_lean = train::plan_memory(c, lean);
  EXPECT_DOUBLE_EQ(z3_lean.state - z3_lean.gathered, 16.0 * double(l.shard));
  EXPECT_DOUBLE_EQ(z3_lean.gathered, z3.gathered);
  std::printf("  dense_text_mtp, tp 2 x dp 2, zero 3: %s\n  lean: %s\n",
              train::describe(z3).c_str(), train::describe(z3_lean).c_str());
}

// ZeRO with tensor and expert parallelism (tp 2 x dp 4, ep 2 among the dp ranks: 8 ranks): each
// rank's tp-local tensors, its routed-expert tensors also its ep slice (E / 2 experts of F / 2
// columns); the replicated tensors' and tp shards' moments (ZeRO 1, 2) or everything (ZeRO 3)
// over the 4 data-parallel ranks of its tp slice, the expert slices' over the 2 of them holding
// the same experts, exactly as the engines lay them out.
TEST(RankState, ZeroWithTensorAndExpertParallelShardsEachGroup) {
  const model::Config c = fixture("moe_vlm_mtp");
  const model::Params p = local_store(c, 2, 2);
  int64_t nd = 0, ne = 0, dense_largest = 0, expert_largest = 0;
  for (const std::string& name : p.names()) {
    const int64_t n = p.entry(name).numel;
    const bool e = model::is_routed_expert_tensor(name);
    (e ? ne : nd) += n;
    int64_t& largest = e ? expert_largest : dense_largest;
    largest = std::max(largest, n);
  }
  ASSERT_GT(ne, 0);
  EXPECT_EQ(ne * 4, count(c, model::is_routed_expert_tensor).first);  // ep 2 x tp 2
  const int64_t dense_share = ceil_div(nd, 4) + dense_largest;
  const int64_t expert_share = ceil_div(ne, 2) + expert_largest;
  const auto z1 = train::plan_memory(c, input(layout(4, 1, 2, 2)));
  EXPECT_EQ(z1.local_params, nd + ne);
  EXPECT_DOUBLE_EQ(z1.state, 10.0 * double(nd + ne) + 8.0 * double(dense_share + expert_share));
  const train::TensorFilter dense = [](const std::string& name) {
    return !model::is_routed_expert_tensor(name);
  };
  EXPECT_LE(train::zero_shards(p, 4, dense).largest(), dense_share);
  EXPECT_LE(train::zero_shards(p, 2, model::is_routed_expert_tensor).largest(), expert_share);
  model::StateOptions gathered;
  gathered.gathered = true;
  const train::Zero3Layout l = train::zero3_layout(local_store(c, 2, 2, gathered), c, 4, 0, 2, 0);
  const auto z3 = train::plan_memory(c, input(layout(4, 3, 2, 2)));
  EXPECT_DOUBLE_EQ(z3.state - z3.gathered, 18.0 * double(l.shard));
  std::printf("  moe_vlm_mtp, tp 2 x dp 4, ep 2: zero 1: %s\n  zero 3: %s\n",
              train::describe(z1).c_str(), train::describe(z3).c_str());
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
  // The host weights: this rank's ZeRO 3 pieces of its share (its expert slices, every other
  // tensor's pieces over the 8 ranks: train::zero3_slices) in f32 and the loader's staging, not
  // the whole model.
  int64_t largest = 0;
  for (const model::ParamSpec& s : model::param_specs(c))
    largest = std::max(largest, core::numel(s.shape));
  const int64_t shard = train::rank_state(c, in).shard;
  EXPECT_LT(shard, p.local_params);
  EXPECT_DOUBLE_EQ(p.host_weights, 4.0 * double(shard) + 8.0 * double(largest));
  EXPECT_LT(p.host_weights, 4.0 * double(p.params) / 4);
  // The save streams the state to rank 0 one tensor at a time (12 B x the largest tensor, the
  // 0.54B-element embedding: 6 GiB) instead of gathering it on every rank (12 B/param, 387 GiB):
  // 8 ranks' shares and save buffers (34.1 GiB each, 273 GiB) fit a 560 GiB host.
  EXPECT_DOUBLE_EQ(p.host_save, 12.0 * double(largest));
  const train::Available host560{79.0 * kGiB, 560.0 * kGiB};
  train::check_memory_plan(c, in, host560, "35b.toml");
  EXPECT_LT(8 * p.host_total(), 300.0 * kGiB);
  // A resume reads this rank's ZeRO 3 pieces of the masters and moments alone (8 B x the shard's
  // elements; before, the moments of its whole ep share: 8 B x 6.47B = 48 GiB per rank, 611 GiB
  // for 8, refused on that host): it fits the 560 GiB host.
  train::PlanInput resume = in;
  resume.resuming = true;
  const train::MemoryPlan pr = train::plan_memory(c, resume);
  EXPECT_DOUBLE_EQ(pr.host_save, 8.0 * double(shard));
  std::printf("  35b-a3b, dp 8, zero 3, ep 8, resumed: %s\n", train::describe(pr).c_str());
  train::check_memory_plan(c, resume, host560, "35b.toml");
  EXPECT_LT(8 * pr.host_total(), 460.0 * kGiB);
  // ZeRO 1 with ep 8 shards only the moments: the bf16 weights, fp32 masters and gradients of
  // every local tensor stay (10 B x 6.47B), and with the activations do not fit.
  in.layout = layout(8, 1, 8);
  const train::MemoryPlan z1 = train::plan_memory(c, in);
  EXPECT_GT(z1.device_total(), 79.0 * kGiB);
}

namespace {

// A LoRA run's plan input: rank-4 adapters on the default targets and the routed experts.
train::PlanInput lora_input(const model::Config& c, const train::PlanLayout& l, int64_t r = 4) {
  train::PlanInput in = input(l);
  model::LoraOptions o;
  o.r = r;
  o.experts = true;
  const auto mods = model::lora_modules(c, o, "test");
  in.lora_params = model::lora_param_count(mods, r);
  for (const auto& m : mods) {
    if (m.experts) in.lora_expert_params += model::lora_param_count({m}, r);
    const int64_t E = std::max<int64_t>(m.experts, 1);
    int64_t split = 0;
    if (model::is_tp_sharded(c, model::lora_a_key(m.name))) split += E * m.in * r;
    if (model::is_tp_sharded(c, model::lora_b_key(m.name))) split += E * m.out * r;
    in.lora_tp_split_params += split;
    if (m.experts) in.lora_expert_tp_split_params += split;
    in.lora_largest =
        std::max(in.lora_largest, std::max<int64_t>(m.experts, 1) * std::max(m.in, m.out) * r);
  }
  return in;
}

}  // namespace

// LoRA under the layouts: the frozen base is its weights alone (2 B/param in bf16) over the
// rank's tensors (ep: its expert slices; ZeRO 1/2 shard nothing of it; ZeRO 3: its pieces, the
// gathered units' weights without gradients or f32 copies, the routers' f32 weights whole); the
// adapters 10 B (fp32 master, bf16 copy, gradient) whole, the routed-expert ones / ep, and 8 B of
// moments, sharded over dp (the expert adapters' over the dp / ep ranks holding them) under ZeRO.
// LoRA with tensor and expert parallelism (tp 2 x dp 4, ep 2; no ZeRO, then ZeRO 1): the base's
// and the adapters' elements on a rank are those of their real slices (an expert adapter's ep
// slice, then its tp slice where its factor is split), the adapters' moments over the dp ranks
// (the expert adapters' over the dp / ep ranks holding them; the plan's formula: the trainer
// still refuses LoRA with tp and ZeRO).
TEST(RankState, LoraWithTensorAndExpertParallel) {
  const model::Config c = fixture("moe_vlm_mtp");
  const int64_t dp = 4, ep = 2, tp = 2;
  model::LoraOptions o;
  o.r = 4;
  o.experts = true;
  int64_t dense = 0, experts = 0, dense_big = 0, expert_big = 0;
  for (const auto& [name, t] : model::lora_init(model::lora_modules(c, o, "test"), 4, 0)) {
    core::Shape shape = t.shape;
    const bool e = model::is_routed_expert_tensor(name);
    if (e) shape[0] /= ep;
    if (const model::TpSplit split = model::tp_split(c, name); split.dim >= 0)
      shape[size_t(split.dim)] /= tp;
    (e ? experts : dense) += core::numel(shape);
    int64_t& big = e ? expert_big : dense_big;
    big = std::max(big, core::numel(shape));
  }
  ASSERT_GT(experts, 0);
  const model::Params base = local_store(c, ep, tp);
  int64_t base_local = 0;
  for (const std::string& name : base.names()) base_local += base.entry(name).numel;
  const train::MemoryPlan z0 = train::plan_memory(c, lora_input(c, layout(dp, 0, ep, tp)));
  EXPECT_EQ(z0.local_params, base_local);  // the base's tp x ep slices
  EXPECT_DOUBLE_EQ(z0.state, 2 * double(z0.local_params) + 18 * double(dense + experts));
  const train::PlanInput in = lora_input(c, layout(dp, 1, ep, tp));
  const double shard = double(std::min(dense, ceil_div(dense, dp) + in.lora_largest) +
                              std::min(experts, ceil_div(experts, dp / ep) + in.lora_largest));
  const train::MemoryPlan z1 = train::plan_memory(c, in);
  EXPECT_DOUBLE_EQ(z1.state,
                   2 * double(z1.local_params) + 10 * double(dense + experts) + 8 * shard);
  EXPECT_LE(dense_big, in.lora_largest);
  EXPECT_LE(expert_big, in.lora_largest);
}

TEST(RankState, LoraFrozenBaseAndAdapters) {
  const model::Config c = fixture("moe_vlm_mtp");
  const int64_t dp = 4, ep = 2;
  const train::PlanInput one = lora_input(c, {});
  const int64_t na = one.lora_params, ne = one.lora_expert_params, big = one.lora_largest;
  ASSERT_GT(ne, 0);
  ASSERT_LT(ne, na);
  const double n = double(model::param_count(c));
  EXPECT_DOUBLE_EQ(train::plan_memory(c, one).state, 2 * n + 18 * double(na));
  // ep 2, no ZeRO: the base's expert slices, the expert adapters' slices.
  const auto [experts, e_largest] = count(c, model::is_routed_expert_tensor);
  const int64_t local = int64_t(n) - experts / ep, local_adapters = na - ne + ne / ep;
  const train::MemoryPlan e2 = train::plan_memory(c, lora_input(c, layout(dp, 0, ep)));
  EXPECT_EQ(e2.local_params, local);
  EXPECT_DOUBLE_EQ(e2.state, 2 * double(local) + 18 * double(local_adapters));
  // ZeRO 1 and 2: the base whole, the adapters' moments sharded (2: and their staging).
  const double shard = double(std::min(na - ne, ceil_div(na - ne, dp) + big) +
                              std::min(ne / ep, ceil_div(ne / ep, dp / ep) + big));
  for (int zero : {1, 2}) {
    const train::MemoryPlan z = train::plan_memory(c, lora_input(c, layout(dp, zero, ep)));
    EXPECT_DOUBLE_EQ(z.state, 2 * double(local) + 10 * double(local_adapters) + 8 * shard)
        << "zero " << zero;
    EXPECT_EQ(z.staging > 0, zero == 2);
  }
  // ZeRO 3: the base's pieces (exactly the frozen store's shard) and its gathered weights.
  const model::Params p = local_store(c, ep);
  const train::Zero3Layout l = train::zero3_layout(p, c, int(dp), 0, int(dp / ep));
  double gathered = 0, routers = 0;
  for (const bool expert : {false, true}) {
    int64_t layer = 0;
    for (size_t u = 0; u < l.units.size(); ++u) {
      const auto& unit = l.units[u];
      if (unit.expert != expert || unit.numel == 0) continue;
      const int64_t full = unit.piece * l.ranks_of(unit);
      if (int(u) % l.model_units == 0)
        gathered += 2.0 * double(full);  // bf16 weights only
      else
        layer = std::max(layer, full);
    }
    gathered += 2 * 2.0 * double(layer);  // the running and the prefetched layer
  }
  for (const auto& t : l.tensors)
    if (model::keeps_f32_weight(t.name)) routers += 4.0 * double(train::zero3_aligned(t.numel));
  ASSERT_GT(routers, 0);
  const train::MemoryPlan z3 = train::plan_memory(c, lora_input(c, layout(dp, 3, ep)));
  EXPECT_DOUBLE_EQ(z3.gathered, gathered);
  EXPECT_DOUBLE_EQ(z3.state - z3.gathered,
                   2.0 * double(l.shard) + routers + 10 * double(local_adapters) + 8 * shard);
  std::printf("  moe_vlm_mtp LoRA r 4, dp 4, zero 3, ep 2: %s\n", train::describe(z3).c_str());
  // tp 2: the base's shards, the adapters' split factors halved (one of A, B per module).
  const int64_t split = one.lora_tp_split_params;
  ASSERT_GT(split, 0);
  ASSERT_LT(split, na);
  int64_t base_tp = 0;
  for (const model::ParamSpec& s : model::param_specs(c))
    base_tp += core::numel(s.shape) / (model::is_tp_sharded(c, s.name) ? 2 : 1);
  const train::MemoryPlan t2 = train::plan_memory(c, lora_input(c, layout(1, 0, 1, 2)));
  EXPECT_EQ(t2.local_params, base_tp);
  EXPECT_DOUBLE_EQ(t2.state, 2 * double(base_tp) + 18 * double(na - split / 2));
  // tp 2 x dp 2 with ZeRO: the local adapters' moments sharded over the 2 data-parallel ranks
  // holding the same slice; ZeRO 3 also the base's tp shards (exactly the frozen store's shard
  // of the tp-local tensors; the routers, replicated under tp, whole in f32).
  const int64_t local_tp = na - split / 2;
  const double shard_tp = double(std::min(local_tp, ceil_div(local_tp, 2) + big));
  for (int zero : {1, 2}) {
    const train::MemoryPlan z = train::plan_memory(c, lora_input(c, layout(2, zero, 1, 2)));
    EXPECT_DOUBLE_EQ(z.state, 2 * double(base_tp) + 10 * double(local_tp) + 8 * shard_tp)
        << "tp 2 x dp 2, zero " << zero;
  }
  model::TensorMap tp_host;
  double tp_routers = 0;
  for (const model::ParamSpec& s : model::param_specs(c)) {
    core::Shape shape = s.shape;
    const model::TpSplit sp = model::tp_split(c, s.name);
    if (sp.dim >= 0) shape[size_t(sp.dim)] /= 2;
    if (model::keeps_f32_weight(s.name))
      tp_routers += 4.0 * double(train::zero3_aligned(core::numel(shape)));
    tp_host.emplace(s.name, core::Tensor(shape));
  }
  model::StateOptions pieces;
  pieces.gathered = true;
  const train::Zero3Layout lt = train::zero3_layout(
      model::Params(core::Device::cpu, core::DType::f32, tp_host, pieces), c, 2, 0);
  const train::MemoryPlan z3t = train::plan_memory(c, lora_input(c, layout(2, 3, 1, 2)));
  EXPECT_DOUBLE_EQ(z3t.state - z3t.gathered,
                   2.0 * double(lt.shard) + tp_routers + 10 * double(local_tp) + 8 * shard_tp);
}

// The large MoE presets with LoRA (r 16, default targets and the routed experts, bf16, moments
// bf16, recomputation, 4096-token micro-batches): the 122B's frozen base (2 B/param: 228 GiB) is
// refused on one 80 GB card and fits ZeRO 3 + ep 8 on 8 GPUs; the 35B's fits ep 8 without ZeRO.
TEST(RankState, LoraLargeMoeFitsZero3ExpertParallel) {
  const train::Available h100{79.0 * kGiB, 8192.0 * kGiB};
  for (const char* preset : {"35b-a3b", "122b-a10b"}) {
    model::Config c = model::parse_config(train::preset_config(preset), preset);
    c.mtp_enabled = false;
    train::PlanInput in = lora_input(c, {}, 16);
    in.state = model::parse_state_options("fp32", "bf16", "none", "test");
    in.micro_batch_tokens = 4096;
    in.recompute = true;
    const train::MemoryPlan p1 = train::plan_memory(c, in);
    std::printf("  %s LoRA, one rank: %s\n", preset, train::describe(p1).c_str());
    for (const auto& [zero, ep] : {std::pair{0, 8}, std::pair{3, 8}}) {
      train::PlanLayout l = layout(8, zero, ep);
      in.layout = l;
      const train::MemoryPlan p = train::plan_memory(c, in);
      std::printf("  %s LoRA, dp 8, zero %d, ep %d: %s\n", preset, zero, ep,
                  train::describe(p).c_str());
      if (zero == 3) {
        EXPECT_LT(p.device_total(), 79.0 * kGiB) << preset;
        EXPECT_LT(p.state, p1.state / 4) << preset;
      }
    }
    if (std::string(preset) == "122b-a10b") {
      in.layout = {};
      dt_test::expect_error([&] { train::check_memory_plan(c, in, h100, "122b.toml"); },
                            {"122b.toml: this run does not fit in memory"});
    }
  }
}
