// One rank's share of the training state under a parallel layout (rank_state.h).
#include "train/rank_state.h"

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/expert_parallel.h"
#include "model/params.h"
#include "model/tensor_parallel.h"
#include "train/zero3.h"

namespace deltatron::train {

namespace {

// This rank's tensors: each as the rank's store holds it (an expert slice, a tp shard).
struct LocalTensor {
  std::string name;
  int64_t numel = 0;
  bool expert = false;  // a routed-expert slice sharded over the same-experts ranks (ep > 1)
};

std::vector<LocalTensor> local_tensors(const model::Config& c, const PlanLayout& l) {
  std::vector<LocalTensor> out;
  for (const model::ParamSpec& s : model::param_specs(c)) {
    LocalTensor t{s.name, core::numel(s.shape), l.ep > 1 && model::is_routed_expert_tensor(s.name)};
    if (t.expert) t.numel /= l.ep;
    if (l.tp > 1 && model::is_tp_sharded(c, s.name)) t.numel /= l.tp;
    out.push_back(std::move(t));
  }
  return out;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The adapters of a LoRA run (rank_state.h): weights, masters, gradients whole (the routed-expert
// adapters / ep), moments sharded as ZeRO 1/2 shards them (ZeRO 3: as stage 1).
void add_adapters(RankState& r, const PlanInput& in) {
  const PlanLayout& l = in.layout;
  model::StateOptions so;
  so.moments = in.state.moments;
  const model::StateBytes ab = model::state_bytes(in.compute, so);
  const double moments = in.training ? ab.train - ab.held : 0;
  // Without ep one group over every adapter; with ep the expert adapters' slices apart. tp: the
  // split factors' slices (an expert adapter's of its ep slice).
  const int64_t split = l.tp > 1 ? in.lora_tp_split_params : 0;
  const int64_t esplit = l.tp > 1 ? in.lora_expert_tp_split_params : 0;
  const int64_t local = in.lora_params - split + split / l.tp;  // every adapter, tp-local
  const int64_t experts = in.lora_expert_params - esplit + esplit / l.tp;
  const int64_t count[2] = {l.ep > 1 ? local - experts : local, l.ep > 1 ? experts / l.ep : 0};
  const int64_t ranks[2] = {l.dp, l.dp / l.ep};
  double shard = 0;
  for (int g = 0; g < 2; ++g) {
    if (count[g] == 0) continue;
    const bool sharded = l.zero > 0 && ranks[g] > 1;
    const int64_t share =
        !sharded ? count[g] : std::min(count[g], ceil_div(count[g], ranks[g]) + in.lora_largest);
    shard += double(share);
    if (l.zero == 2 && sharded)
      r.staging = std::max(
          r.staging, double(ranks[g] + 1) * double(std::min<int64_t>(int64_t(1) << 22, share)) * 4);
  }
  r.state += ab.held * double(count[0] + count[1]) + moments * shard;
}

}  // namespace

RankState rank_state(const model::Config& c, const PlanInput& in) {
  const PlanLayout& l = in.layout;
  DT_CHECK(l.dp >= 1 && l.ep >= 1 && l.tp >= 1 && l.zero >= 0 && l.zero <= 3,
           "memory plan: a layout of dp ", l.dp, ", zero ", l.zero, ", ep ", l.ep, ", tp ", l.tp);
  DT_CHECK(l.ep == 1 || l.dp % l.ep == 0, "memory plan: ep ", l.ep, " does not divide dp ", l.dp);
  // A LoRA run: the base is a frozen store (its weights alone), the adapters added at the end.
  const bool lora = in.lora_params >= 0;
  model::StateOptions base = in.state;
  if (lora) base = model::StateOptions{}, base.frozen = true;
  const model::StateBytes b = model::state_bytes(in.compute, base);
  const double moments = in.training && !lora ? b.train - b.held : 0;  // on the device, per element
  const std::vector<LocalTensor> ts = local_tensors(c, l);
  RankState r;
  for (const LocalTensor& t : ts) r.params += t.numel;
  // Offloaded state per element (host memory): the moments only while training.
  const double moment_bytes = in.state.moments == core::DType::bf16 ? 4 : 8;
  const double host =
      lora ? 0 : b.host - (!in.training && in.state.offload_moments ? moment_bytes : 0);
  r.host = host * double(r.params);
  const auto done = [&] {
    if (lora) add_adapters(r, in);
    return r;
  };
  // ZeRO's groups: 0, the replicated tensors over the dp ranks; 1, the expert slices over the
  // dp / ep ranks holding the same experts.
  const int64_t ranks[2] = {l.dp, l.dp / l.ep};

  // The whole state of every local tensor (a LoRA base: ZeRO 1/2 shard only the adapters').
  if (l.zero == 0 || (l.zero < 3 && (l.dp == 1 || lora))) {
    r.state = (b.held + moments) * double(r.params);
    return done();
  }

  if (l.zero <= 2) {
    // The moments of this rank's shards: a shard holds the tensors whose midpoint falls in its
    // even share, so it is never larger than the share plus the group's largest tensor.
    int64_t count[2] = {0, 0}, largest[2] = {0, 0};
    for (const LocalTensor& t : ts) {
      count[t.expert] += t.numel;
      largest[t.expert] = std::max(largest[t.expert], t.numel);
    }
    double shard = 0;
    for (int g = 0; g < 2; ++g) {
      if (count[g] == 0) continue;
      const int64_t share =
          ranks[g] == 1 ? count[g] : std::min(count[g], ceil_div(count[g], ranks[g]) + largest[g]);
      shard += double(share);
      if (l.zero == 2 && ranks[g] > 1)
        r.staging = std::max(r.staging, double(ranks[g] + 1) *
                                            double(std::min<int64_t>(int64_t(1) << 22, share)) * 4);
    }
    r.state = b.held * double(r.params) + moments * shard;
    r.host = host * shard;  // each rank offloads its shards' moments and masters alone
    return done();
  }

  // ZeRO 3: the units of train/zero3.h (the model's units; with ep their expert slices apart),
  // each cut into ranks pieces of ceil(n / ranks) rounded up to 64 elements. A frozen base
  // (LoRA) gathers its weights alone: no gradients, no reduced piece, and in a bf16 model the
  // routers' f32 weights are held whole on every rank instead of gathered.
  struct Unit {
    int64_t numel = 0;
    bool f32_read = false;  // a bf16 model gathers its f32 weights too (the routers)
  };
  std::map<int, Unit> units[2];
  const bool bf16 = in.compute != core::DType::f32;
  double routers = 0;  // a frozen bf16 base: the routers' f32 weights, whole
  for (const LocalTensor& t : ts) {
    Unit& u = units[t.expert][zero3_model_unit(c, t.name)];
    u.numel += zero3_aligned(t.numel);
    const bool f32_read = bf16 && model::keeps_f32_weight(t.name);
    if (lora && f32_read) routers += 4 * double(zero3_aligned(t.numel));
    u.f32_read = u.f32_read || (f32_read && !lora);
  }
  const double dt = bf16 ? 2 : 4;
  const double grads = in.training && !lora ? 4 : 0;  // the gathered gradient buffers (f32)
  int64_t shard = 0, largest_piece = 0;
  for (int g = 0; g < 2; ++g) {
    int64_t layer = 0;  // the largest gathered layer unit
    bool layer_f32 = false;
    for (const auto& [unit, u] : units[g]) {
      const int64_t piece = zero3_aligned(ceil_div(u.numel, ranks[g]));
      const int64_t full = piece * ranks[g];
      shard += piece;
      largest_piece = std::max(largest_piece, piece);
      if (unit == model::ParamGather::kOuterUnit) {  // gathered for the whole pack
        r.gathered += double(full) * (dt + (u.f32_read ? 4 : 0) + grads);
      } else {
        layer = std::max(layer, full);
        layer_f32 = layer_f32 || u.f32_read;
      }
    }
    // The layer running and the prefetched one (weights, f32 copies), one layer's gradient: the
    // pools' buffers all have the largest layer's size.
    r.gathered += double(layer) * (2 * dt + (layer_f32 ? 2 * 4 : 0) + grads);
  }
  if (!lora) r.gathered += 4 * double(largest_piece);  // a reduce_scatter's result
  r.state = (b.held + moments) * double(shard) + routers;
  r.host = host * double(shard);  // each rank offloads its pieces' moments and masters alone
  r.shard = shard;
  return done();
}

}  // namespace deltatron::train
