// Tensor and sequence parallelism (issue 15, Megatron-style): which parameters a group of ranks
// splits and how, this rank's slice of a full tensor and the full tensor back from every rank's
// slice, and the gradients of replicated parameters that each rank only holds a part of.
//
// Rank r of a group of P ranks holds (heads, FFN columns split in P contiguous equal parts):
//   attention  q_proj [H 2K, D], k_proj, v_proj [J K, D]: rows of heads [r H/P, (r+1) H/P) (and
//              kv heads [r J/P, ...)); q_proj's rows are per-head interleaved (query K, gate K),
//              so a head's 2K rows stay together. o_proj [D, H K]: the same heads' columns.
//   GDN        in_proj_qkv [2HK + GV, D] and conv1d.weight [2HK + GV, 1, W]: the q, k (key heads)
//              and v (value heads) segments each split, the local tensor their concatenation;
//              in_proj_z [GV, D], in_proj_b, in_proj_a [G, D], A_log, dt_bias [G]: value heads;
//              out_proj [D, GV]: the value heads' columns. Value head j reads key head j / (G/H)
//              (repeat_interleave), so a rank's value heads read its own key heads.
//   dense MLP  gate_proj, up_proj [F, D]: rows; down_proj [D, F]: columns.
//   MoE        every routed expert's FFN columns (Megatron's expert tensor parallelism):
//              experts.gate_up_proj [E, 2F, D] its gate rows [0, F) and up rows [F, 2F) of each
//              expert split (axis 1, two segments); experts.down_proj [E, D, F]: axis 2. The
//              shared expert like the dense MLP. The router (mlp.gate) and shared_expert_gate are
//              replicated: every rank routes every token of the pack (gathered with sp) on the
//              same logits, so the top-k and the router losses are one rank's on each.
//   the rest   replicated: embeddings, lm_head, every RMSNorm weight (q_norm, k_norm and the GDN
//              gated norm are per head dim: every rank's heads use them), MTP fc, the vision tower
//              (model.visual.*: every rank runs it whole on the pack's images).
//   LoRA       (model/adapters.h) a column-parallel base's lora_B [out, r] (experts [E, out, r]) is
//              split as the base's output axis, its lora_A replicated; a row-parallel base's
//              lora_A [r, in] ([E, r, in]) split as the base's input axis, its lora_B replicated.
//              So a column-parallel adapter computes h = x A^T whole and its rows of s h B^T; a
//              row-parallel one its columns' share of h, and s h_r B^T joins the partial output
//              the group sums. The replicated factor's gradient is partial (below), as are both
//              factors' of a base whose own gradient is (the router, shared_expert_gate).
// Each mixer and FFN is a column-parallel input (no communication) and a row-parallel output
// whose partial sums are all-reduced (or, with sp, reduce-scattered to the token shards); the
// backward all-reduces (reduce-scatters) the input gradient (model/tp_exchange.h).
//
// The routed experts' outputs (slot-weighted, each rank's FFN columns) and the shared expert's
// (gated) are partial sums added into one buffer, reduced in one all-reduce (reduce-scatter).
//
// Replicated parameters whose gradient a rank only partly computes are "partial": q_norm, k_norm
// and linear_attn.norm (the rank's heads only); the MoE router and shared_expert_gate (their
// logits' gradients are sums over the FFN columns: each rank has its columns' share; the router
// losses' gradient enters on the group's rank 0 alone, so the group's sum counts it once); with
// sp also every other replicated parameter
// that sees the token shards (the layer norms, the final norm, the MTP norms and fc). Their
// per-pack gradients go to a TpGrads store and are summed over the group at the end of the
// backward; the embedding and lm_head run on every token (gathered) and are complete, and so is
// the vision tower (its backward runs whole on every rank from the merged rows' gradient, which
// with sp is gathered from the ranks' rows first: model/vision_tower.h).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/buffer.h"
#include "core/tensor.h"
#include "dist/comm.h"
#include "model/config.h"

namespace deltatron::model {

class Params;

struct TensorParallel {
  dist::Comm* comm = nullptr;  // the tensor-parallel group; null: off
  bool sp = false;             // sequence parallel: the residual stream split by tokens
  bool on() const { return comm != nullptr && comm->size() > 1; }
  int64_t size() const { return on() ? comm->size() : 1; }
  int64_t rank() const { return on() ? comm->rank() : 0; }
};

// How `name` is split over the group: dim -1 replicated, else the axis split (0 rows, 1 the
// columns of a 2-D tensor, 1 or 2 for the [E, ., .] expert tensors). Along that axis the tensor
// is a run of `segments` (lengths), each split in P equal contiguous pieces; rank r's tensor is
// piece r of every segment, concatenated (for every index of the axes before it).
struct TpSplit {
  int dim = -1;
  std::vector<int64_t> segments;
};
TpSplit tp_split(const Config& c, const std::string& name);
bool is_tp_sharded(const Config& c, const std::string& name);

// An error naming `where` unless the model can be split over P ranks: attention heads, kv heads,
// GDN key and value heads and the FFN widths (intermediate_size; a MoE model's
// moe_intermediate_size and shared_expert_intermediate_size) divide by P.
void check_tensor_parallel(const Config& c, int64_t P, const std::string& where);

// Rank r's slice of the full tensor `full` (shape checked against the split).
core::Tensor tp_slice(const Config& c, const std::string& name, const core::Tensor& full, int64_t r,
                      int64_t P);
// The contiguous runs of the full tensor's row-major elements (offset, count) that make rank r's
// slice, in the slice's order (what tp_slice copies; empty for a replicated tensor): a loader
// reads only these.
std::vector<std::pair<int64_t, int64_t>> tp_runs(const Config& c, const std::string& name,
                                                 const core::Shape& full, int64_t r, int64_t P);
// The full tensor from the P ranks' slices, laid end to end in `slices` (rank q's at q numel).
core::Tensor tp_join(const Config& c, const std::string& name, const float* slices,
                     const core::Shape& local_shape, int64_t P);

// Whether `name`'s gradient is partial on each rank (summed over the group per pack).
bool tp_partial_grad(const Config& c, const std::string& name, bool sp);

// The trunk layer of a parameter (i for one under c.name("layers.<i>.")), else -1 (the outer
// unit of model/param_gather.h: embeddings, final norm, heads, the MTP layer).
int trunk_layer_of(const Config& c, const std::string& name);

// One pack's partial gradients: a zeroed f32 buffer per partial parameter (one flat buffer),
// summed over the group and added to the parameters' gradients by reduce_into.
class TpGrads {
 public:
  TpGrads(const Config& c, const Params& p, const TensorParallel& tp);
  // The store's view for `name` (shaped like it), or an empty view when it is not partial.
  core::View at(const std::string& name) const;
  // all_reduce over the group, then p.g(name) += the sum, for every partial parameter.
  void reduce_into(const Params& p) const;
  // The same for the partial parameters of one unit only (trunk_layer_of: a layer, or -1 the
  // outer unit): under ZeRO 3 a layer's gradient is bound only while the layer runs, so its
  // partial gradients are summed over the group before the layer is released (then reduced over
  // the data-parallel ranks into their shards). One all_reduce per run of the unit's partial
  // parameters in the flat buffer (p.names() order: a layer's tensors are one run).
  void reduce_unit_into(const Params& p, int unit) const;

 private:
  void reduce_range_into(const Params& p, size_t first, size_t last) const;
  const TensorParallel& tp_;
  std::vector<std::string> names_;
  std::vector<int> units_;  // trunk_layer_of each name
  std::vector<int64_t> offsets_;
  std::vector<core::Shape> shapes_;
  core::Buffer flat_;
};

}  // namespace deltatron::model
