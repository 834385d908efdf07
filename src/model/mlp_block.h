// Dense SwiGLU feed-forward block (Qwen3.5 `mlp`): explicit forward and backward.
#pragma once

#include <string>
#include <vector>

#include "core/device.h"
#include "model/config.h"
#include "model/weights.h"

namespace deltatron::model {

// Legend: N tokens, D hidden, F intermediate_size.
// y = (silu(x gate_proj^T) * (x up_proj^T)) down_proj^T   (spec 2.9)
struct MlpSaved {
  std::vector<float> x_ND, gate_NF, up_NF, h_NF;
};

struct MlpBlock {
  std::string prefix;  // e.g. "model.layers.0.mlp."

  void fwd(core::Device dev, const Config& c, const TensorMap& params, int64_t N, const float* x_ND,
           float* y_ND, MlpSaved& s) const;
  // dx_ND is overwritten; parameter gradients accumulate into grads.
  void bwd(core::Device dev, const Config& c, const TensorMap& params, TensorMap& grads, int64_t N,
           const MlpSaved& s, const float* dy_ND, float* dx_ND) const;
};

}  // namespace deltatron::model
