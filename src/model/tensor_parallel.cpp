// Tensor parallelism: the split of every parameter, slices and joins, partial gradients
// (tensor_parallel.h).
#include "model/tensor_parallel.h"

#include <cstring>

#include "core/error.h"
#include "model/lm_head.h"
#include "model/params.h"
#include "ops/tensor.h"

namespace deltatron::model {

namespace {

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// Calls f(full_offset, local_offset, n) for every contiguous run of floats rank r's slice takes
// from the full tensor of shape `full` (local runs in order). The tensor is read as
// [outer, along, inner] around the split axis: each outer index holds one piece of every segment.
template <typename F>
void for_each_run(const TpSplit& s, const core::Shape& full, int64_t r, int64_t P,
                  const std::string& name, F&& f) {
  DT_CHECK(s.dim < int(full.size()), name, ": shape ", core::shape_str(full), " has no axis ",
           s.dim, " to split for tensor parallelism");
  const int64_t along = full.at(s.dim);
  int64_t sum = 0;
  for (int64_t len : s.segments) {
    DT_CHECK(len % P == 0, name, ": a segment of ", len, " is not divisible by ", P, " ranks");
    sum += len;
  }
  DT_CHECK(sum == along, name, ": shape ", core::shape_str(full),
           " does not match its tensor-parallel split");
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < s.dim; ++i) outer *= full[i];
  for (int i = s.dim + 1; i < int(full.size()); ++i) inner *= full[i];
  int64_t local = 0;
  for (int64_t o = 0; o < outer; ++o) {
    int64_t seg0 = 0;
    for (int64_t len : s.segments) {
      const int64_t piece = len / P;
      f((o * along + seg0 + r * piece) * inner, local, piece * inner);
      local += piece * inner;
      seg0 += len;
    }
  }
}

// The layer-local part of a name ("self_attn.q_proj.weight") when it belongs to a decoder layer
// of the text model (trunk or MTP); empty otherwise.
std::string layer_suffix(const Config& c, const std::string& name) {
  for (const std::string& pf : {c.name("layers."), std::string("mtp.layers.")}) {
    if (name.compare(0, pf.size(), pf) != 0) continue;
    const size_t dot = name.find('.', pf.size());
    if (dot != std::string::npos) return name.substr(dot + 1);
  }
  return "";
}

}  // namespace

namespace {

// A LoRA adapter tensor (model/adapters.h: "<module>.lora_A.weight" [.., r, in],
// "<module>.lora_B.weight" [.., out, r]): its base weight's split and which axis of the base is
// split. axis: 0 not split, 1 the output axis (column-parallel), 2 the input axis (row-parallel).
struct AdapterOf {
  bool adapter = false, a = false;  // an adapter tensor; its lora_A (else lora_B)
  std::string base;                 // the base weight's name
  TpSplit split;                    // the base's
  int axis = 0;
  int rank = 2;  // the base's axes: 2, or 3 for the routed experts [E, out, in]
};
AdapterOf adapter_of(const Config& c, const std::string& name) {
  AdapterOf o;
  for (const char* suf : {".lora_A.weight", ".lora_B.weight"})
    if (ends_with(name, suf)) {
      o.adapter = true;
      o.a = suf[6] == 'A';
      o.base = name.substr(0, name.size() - std::string(suf).size());
    }
  if (!o.adapter) return o;
  o.rank =
      ends_with(o.base, "mlp.experts.gate_up_proj") || ends_with(o.base, "mlp.experts.down_proj")
          ? 3
          : 2;
  if (o.rank == 2) o.base += ".weight";
  o.split = tp_split(c, o.base);
  if (o.split.dim >= 0) o.axis = o.split.dim == o.rank - 2 ? 1 : 2;
  return o;
}

}  // namespace

TpSplit tp_split(const Config& c, const std::string& name) {
  // LoRA: a column-parallel base's lora_B is split as its output rows, a row-parallel base's
  // lora_A as its input columns; the other factor is replicated (its gradient partial).
  if (const AdapterOf a = adapter_of(c, name); a.adapter) {
    if (a.axis == 1 && !a.a) return {a.rank - 2, a.split.segments};
    if (a.axis == 2 && a.a) return {a.rank - 1, a.split.segments};
    return {};
  }
  const std::string s = layer_suffix(c, name);
  if (s.empty()) return {};
  const int64_t H = c.num_attention_heads, J = c.num_key_value_heads, K = c.head_dim;
  const int64_t HK = c.linear_num_key_heads * c.linear_key_head_dim;
  const int64_t G = c.linear_num_value_heads, GV = G * c.linear_value_head_dim;
  const int64_t F = c.intermediate_size, Fe = c.moe_intermediate_size;
  const int64_t S = c.shared_expert_intermediate_size;
  if (s == "self_attn.q_proj.weight") return {0, {2 * H * K}};
  if (s == "self_attn.k_proj.weight" || s == "self_attn.v_proj.weight") return {0, {J * K}};
  if (s == "self_attn.o_proj.weight") return {1, {H * K}};
  if (s == "linear_attn.in_proj_qkv.weight" || s == "linear_attn.conv1d.weight")
    return {0, {HK, HK, GV}};
  if (s == "linear_attn.in_proj_z.weight") return {0, {GV}};
  if (s == "linear_attn.in_proj_b.weight" || s == "linear_attn.in_proj_a.weight" ||
      s == "linear_attn.A_log" || s == "linear_attn.dt_bias")
    return {0, {G}};
  if (s == "linear_attn.out_proj.weight") return {1, {GV}};
  if (s == "mlp.gate_proj.weight" || s == "mlp.up_proj.weight") return {0, {F}};
  if (s == "mlp.down_proj.weight") return {1, {F}};
  // MoE: every routed expert's FFN columns (Megatron's expert tensor parallelism), the gate and
  // up halves of the fused [E, 2F, D] tensor each split; the shared expert like the dense MLP.
  if (s == "mlp.experts.gate_up_proj") return {1, {Fe, Fe}};
  if (s == "mlp.experts.down_proj") return {2, {Fe}};
  if (s == "mlp.shared_expert.gate_proj.weight" || s == "mlp.shared_expert.up_proj.weight")
    return {0, {S}};
  if (s == "mlp.shared_expert.down_proj.weight") return {1, {S}};
  return {};
}

bool is_tp_sharded(const Config& c, const std::string& name) { return tp_split(c, name).dim >= 0; }

void check_tensor_parallel(const Config& c, int64_t P, const std::string& where) {
  DT_CHECK(P >= 1, where, ": the tensor-parallel size must be >= 1, got ", P);
  if (P == 1) return;
  const auto divisible = [&](const char* what, int64_t n) {
    DT_CHECK(n % P == 0, where, ": tensor parallelism over ", P, " ranks splits ", what, " (", n,
             ") into equal parts; it is not divisible by ", P);
  };
  divisible("num_attention_heads", c.num_attention_heads);
  divisible("num_key_value_heads", c.num_key_value_heads);
  divisible("linear_num_key_heads", c.linear_num_key_heads);
  divisible("linear_num_value_heads", c.linear_num_value_heads);
  if (!c.is_moe()) return divisible("intermediate_size", c.intermediate_size);
  divisible("moe_intermediate_size", c.moe_intermediate_size);
  if (c.shared_expert_intermediate_size > 0)
    divisible("shared_expert_intermediate_size", c.shared_expert_intermediate_size);
}

std::vector<std::pair<int64_t, int64_t>> tp_runs(const Config& c, const std::string& name,
                                                 const core::Shape& full, int64_t r, int64_t P) {
  std::vector<std::pair<int64_t, int64_t>> runs;
  const TpSplit s = tp_split(c, name);
  if (s.dim < 0 || P == 1) return runs;
  for_each_run(s, full, r, P, name, [&](int64_t fo, int64_t, int64_t n) {
    if (!runs.empty() && runs.back().first + runs.back().second == fo)
      runs.back().second += n;  // adjacent: one run
    else
      runs.emplace_back(fo, n);
  });
  return runs;
}

core::Tensor tp_slice(const Config& c, const std::string& name, const core::Tensor& full, int64_t r,
                      int64_t P) {
  const TpSplit s = tp_split(c, name);
  if (s.dim < 0 || P == 1) return full;
  core::Shape ls = full.shape;
  ls.at(s.dim) /= P;
  core::Tensor local(ls);
  for_each_run(s, full.shape, r, P, name, [&](int64_t fo, int64_t lo, int64_t n) {
    std::memcpy(local.ptr() + lo, full.ptr() + fo, size_t(n) * sizeof(float));
  });
  return local;
}

core::Tensor tp_join(const Config& c, const std::string& name, const float* slices,
                     const core::Shape& local_shape, int64_t P) {
  const TpSplit s = tp_split(c, name);
  core::Shape fs = local_shape;
  if (s.dim >= 0) fs.at(s.dim) *= P;
  core::Tensor full(fs);
  const int64_t nl = core::numel(local_shape);
  if (s.dim < 0 || P == 1) {  // replicated: rank 0's
    std::memcpy(full.ptr(), slices, size_t(nl) * sizeof(float));
    return full;
  }
  for (int64_t q = 0; q < P; ++q)
    for_each_run(s, fs, q, P, name, [&](int64_t fo, int64_t lo, int64_t n) {
      std::memcpy(full.ptr() + fo, slices + q * nl + lo, size_t(n) * sizeof(float));
    });
  return full;
}

bool tp_partial_grad(const Config& c, const std::string& name, bool sp) {
  // LoRA: the replicated factor of a split base (a column-parallel base's lora_A: dA = dh^T x
  // with dh = s dy B summed over the rank's rows; a row-parallel base's lora_B: dB = s dy^T h with
  // h the rank's columns' share), and both factors of a base whose own gradient is partial.
  if (const AdapterOf a = adapter_of(c, name); a.adapter)
    return a.axis == 1 ? a.a : a.axis == 2 ? !a.a : tp_partial_grad(c, a.base, sp);
  const std::string s = layer_suffix(c, name);
  if (s == "self_attn.q_norm.weight" || s == "self_attn.k_norm.weight" ||
      s == "linear_attn.norm.weight")
    return true;
  // MoE: the router's and the shared expert gate's logit gradients are partial (each rank's
  // routed experts' FFN columns, its shared-expert columns), so their weights' gradients are.
  if (s == "mlp.gate.weight" || s == "mlp.shared_expert_gate.weight") return true;
  if (!sp || is_tp_sharded(c, name)) return false;
  // The vision tower runs whole on every rank from the merged rows' whole gradient
  // (model/vision_tower.h): its gradients are complete on each rank, never summed.
  if (name.rfind("model.visual.", 0) == 0) return false;
  // Sequence parallel: every replicated tensor but the embedding and the LM head (which run on
  // the gathered tokens) sees this rank's token shard only.
  return name != c.name("embed_tokens.weight") && name != lm_head_name(c);
}

int trunk_layer_of(const Config& c, const std::string& name) {
  const std::string prefix = c.name("layers.");
  if (name.compare(0, prefix.size(), prefix) != 0) return -1;
  const size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos || dot == prefix.size()) return -1;
  int64_t i = 0;
  for (size_t k = prefix.size(); k < dot; ++k) {
    if (name[k] < '0' || name[k] > '9') return -1;
    i = i * 10 + (name[k] - '0');
  }
  return int(i);
}

TpGrads::TpGrads(const Config& c, const Params& p, const TensorParallel& tp) : tp_(tp) {
  int64_t total = 0;
  for (const std::string& name : p.names()) {
    // A gathered store (ZeRO 3) binds the gradients later; it holds trained tensors only.
    if (!tp_partial_grad(c, name, tp.sp) || (!p.gathered() && p.g(name).empty())) continue;
    names_.push_back(name);
    units_.push_back(trunk_layer_of(c, name));
    offsets_.push_back(total);
    shapes_.push_back(p.entry(name).shape);
    total += p.entry(name).numel;
  }
  flat_ = core::Buffer(p.device(), core::DType::f32, {std::max<int64_t>(total, 1)},
                       "tensor-parallel partial gradients");
  ops::zero(flat_);
}

core::View TpGrads::at(const std::string& name) const {
  for (size_t i = 0; i < names_.size(); ++i)
    if (names_[i] == name)
      return flat_.view().slice(offsets_[i], core::numel(shapes_[i])).reshaped(shapes_[i]);
  return core::View{};
}

void TpGrads::reduce_range_into(const Params& p, size_t first, size_t last) const {
  const int64_t begin = offsets_[first];
  const int64_t end = offsets_[last - 1] + core::numel(shapes_[last - 1]);
  tp_.comm->all_reduce(flat_.view().slice(begin, end - begin), dist::ReduceOp::sum);
  for (size_t i = first; i < last; ++i) {
    const int64_t n = core::numel(shapes_[i]);
    ops::add_inplace(p.g(names_[i]), flat_.view().slice(offsets_[i], n), n);
  }
}

void TpGrads::reduce_into(const Params& p) const {
  if (!names_.empty()) reduce_range_into(p, 0, names_.size());
}

void TpGrads::reduce_unit_into(const Params& p, int unit) const {
  for (size_t i = 0; i < names_.size();) {
    if (units_[i] != unit) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < names_.size() && units_[j] == unit) ++j;
    reduce_range_into(p, i, j);
    i = j;
  }
}

}  // namespace deltatron::model
