// Parameter count and activation plan (footprint.h).
#include "model/footprint.h"

#include <algorithm>

namespace deltatron::model {

int64_t param_count(const Config& c) {
  int64_t n = 0;
  for (const ParamSpec& s : param_specs(c)) n += core::numel(s.shape);
  return n;
}

int64_t frozen_param_count(const Config& c) {
  int64_t n = 0;
  for (const ParamSpec& s : vision_param_specs(c))
    if (!vision_trains(c, s.name)) n += core::numel(s.shape);
  return n;
}

namespace {

// One layer of type t on N tokens, everything its forward keeps.
double layer_bytes(const Config& c, LayerType t, double N, double e) {
  const double D = double(c.hidden_size);
  double b = N * D * (8 + 2 * e);  // x_in, h (f32), the two norms' outputs
  if (t == LayerType::full_attention) {
    b += N * (6.0 * c.num_attention_heads + 3.0 * c.num_key_value_heads) * c.head_dim * e;
  } else {
    const double qk = 2.0 * c.linear_num_key_heads * c.linear_key_head_dim;
    const double vv = double(c.linear_num_value_heads) * c.linear_value_head_dim;
    b += N * (2.0 * (qk + vv) + 4.0 * vv) * e;
  }
  if (c.is_moe()) {
    const double k = double(c.num_experts_per_tok);
    b += N * k * (3.0 * c.moe_intermediate_size + 2.0 * D) * e;  // expert rows, permuted in/out
    b += N * (3.0 * c.shared_expert_intermediate_size) * e;
    b += N * double(c.num_experts) * 4 * 2;  // f32 router logits and probabilities
  } else {
    b += N * 3.0 * c.intermediate_size * e;
  }
  return b;
}

}  // namespace

double activation_bytes(const Config& c, int64_t N, core::DType dt, bool recompute) {
  const double e = double(core::dtype_size(dt)), n = double(N), D = double(c.hidden_size);
  double total = 0, largest = 0;
  for (LayerType t : c.layer_types) {
    const double b = layer_bytes(c, t, n, e);
    largest = std::max(largest, b);
    total += recompute ? n * D * e : b;
  }
  if (recompute) total += largest;
  if (c.mtp_enabled) total += layer_bytes(c, LayerType::full_attention, n, e) + 4 * n * D * e;
  return total;
}

double vision_activation_bytes(const Config& c, int64_t P) {
  if (c.vision_mode == VisionMode::off || P <= 0) return 0;
  const VisionConfig& v = c.vision;
  const double D = double(v.hidden_size), I = double(v.intermediate_size);
  const double C = double(v.in_channels * v.temporal_patch_size * v.patch_size * v.patch_size);
  // Per patch, in floats: a block keeps x_in, n1, q, k, v, attention out, h, n2 (8 D), fc1 and
  // its GELU (2 I), four LayerNorm statistics and the attention's lse (H); its forward also
  // holds the fused qkv (3 D). The merger keeps its input, LN output, fc1 and GELU rows (4 D; the
  // merged rows are 4 patches wide) and two statistics.
  const double block = 8 * D + 2 * I + 4 + double(v.num_heads);
  const double merger = 4 * D + 2;
  double kept = 0;
  if (c.vision_mode == VisionMode::full) kept = double(v.depth) * block + merger;
  if (c.vision_mode == VisionMode::merger) kept = merger;
  // Alive while the tower runs: the pixels, the residual stream, one block's temporaries (and
  // in the backward their gradients).
  const double transient = C + D + 2 * (block + 3 * D);
  return 4.0 * double(P) * (kept + transient);
}

}  // namespace deltatron::model
