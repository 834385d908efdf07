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

double activation_bytes(const Config& c, int64_t N, core::DType dt, const ActivationOptions& o) {
  return activation_account(c, N, dt, o).peak;
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
