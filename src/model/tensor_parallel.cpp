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
// from the full tensor of shape `full` (local runs in order).
template <typename F>
void for_each_run(const TpSplit& s, const core::Shape& full, int64_t r, int64_t P,
                  const std::string& name, F&& f) {
  const int64_t along = s.dim == 0 ? full.at(0) : full.back();
  int64_t sum = 0;
  for (int64_t len : s.segments) {
    DT_CHECK(len % P == 0, name, ": a segment of ", len, " is not divisible by ", P, " ranks");
    sum += len;
  }
  DT_CHECK(sum == along && (s.dim == 0 || full.size() == 2), name, ": shape ",
           core::shape_str(full), " does not match its tensor-parallel split");
  const int64_t total = core::numel(full);
  if (s.dim == 0) {  // rows: each piece is contiguous
    const int64_t inner = total / along;
    int64_t seg0 = 0, local = 0;
    for (int64_t len : s.segments) {
      const int64_t rows = len / P;
      f((seg0 + r * rows) * inner, local, rows * inner);
      local += rows * inner;
      seg0 += len;
    }
    return;
  }
  const int64_t R = full.at(0), C = along, Cl = C / P;  // columns: one run per row and segment
  for (int64_t i = 0; i < R; ++i) {
    int64_t seg0 = 0, local = i * Cl;
    for (int64_t len : s.segments) {
      const int64_t cols = len / P;
      f(i * C + seg0 + r * cols, local, cols);
      local += cols;
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

TpSplit tp_split(const Config& c, const std::string& name) {
  const std::string s = layer_suffix(c, name);
  if (s.empty()) return {};
  const int64_t H = c.num_attention_heads, J = c.num_key_value_heads, K = c.head_dim;
  const int64_t HK = c.linear_num_key_heads * c.linear_key_head_dim;
  const int64_t G = c.linear_num_value_heads, GV = G * c.linear_value_head_dim;
  const int64_t F = c.intermediate_size;
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
  return {};
}

bool is_tp_sharded(const Config& c, const std::string& name) { return tp_split(c, name).dim >= 0; }

void check_tensor_parallel(const Config& c, int64_t P, const std::string& where) {
  DT_CHECK(P >= 1, where, ": the tensor-parallel size must be >= 1, got ", P);
  if (P == 1) return;
  DT_CHECK(!c.is_moe(), where, ": tensor parallelism (", P,
           ") with a MoE model is not built yet (the experts' FFN split, the router and the "
           "expert-parallel exchange under tp); use tp = 1 (expert parallelism: ep)");
  const auto divisible = [&](const char* what, int64_t n) {
    DT_CHECK(n % P == 0, where, ": tensor parallelism over ", P, " ranks splits ", what, " (", n,
             ") into equal parts; it is not divisible by ", P);
  };
  divisible("num_attention_heads", c.num_attention_heads);
  divisible("num_key_value_heads", c.num_key_value_heads);
  divisible("linear_num_key_heads", c.linear_num_key_heads);
  divisible("linear_num_value_heads", c.linear_num_value_heads);
  divisible("intermediate_size", c.intermediate_size);
}

core::Tensor tp_slice(const Config& c, const std::string& name, const core::Tensor& full, int64_t r,
                      int64_t P) {
  const TpSplit s = tp_split(c, name);
  if (s.dim < 0 || P == 1) return full;
  core::Shape ls = full.shape;
  (s.dim == 0 ? ls[0] : ls.back()) /= P;
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
  if (s.dim >= 0) (s.dim == 0 ? fs[0] : fs.back()) *= P;
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
  const std::string s = layer_suffix(c, name);
  if (s == "self_attn.q_norm.weight" || s == "self_attn.k_norm.weight" ||
      s == "linear_attn.norm.weight")
    return true;
  if (!sp || is_tp_sharded(c, name)) return false;
  // Sequence parallel: every replicated tensor but the embedding and the LM head (which run on
  // the gathered tokens) sees this rank's token shard only.
  return name != c.name("embed_tokens.weight") && name != lm_head_name(c);
}

TpGrads::TpGrads(const Config& c, const Params& p, const TensorParallel& tp) : tp_(tp) {
  int64_t total = 0;
  for (const std::string& name : p.names()) {
    if (!tp_partial_grad(c, name, tp.sp) || p.g(name).empty()) continue;
    names_.push_back(name);
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

void TpGrads::reduce_into(const Params& p) const {
  if (names_.empty()) return;
  const int64_t total = offsets_.back() + core::numel(shapes_.back());
  tp_.comm->all_reduce(flat_.view().slice(0, total), dist::ReduceOp::sum);
  for (size_t i = 0; i < names_.size(); ++i) {
    const int64_t n = core::numel(shapes_[i]);
    ops::add_inplace(p.g(names_[i]), flat_.view().slice(offsets_[i], n), n);
  }
}

}  // namespace deltatron::model
