// Gated full-attention mixer (Qwen3.5 `self_attn`): explicit forward and backward.
#pragma once

#include <string>
#include <vector>

#include "core/device.h"
#include "data/pack.h"
#include "model/config.h"
#include "model/weights.h"

namespace deltatron::model {

// Legend: N tokens, D hidden, H query heads, J kv heads, K head_dim (256 in releases).
// Forward (spec 2.4), x_ND is the input-layernormed residual stream:
//   qg = x q_proj^T viewed [N, H, 2K]; q = qg[..., :K], gate = qg[..., K:]
//   q = RMSNorm_zc(q; q_norm), k = RMSNorm_zc(x k_proj^T; k_norm), v = x v_proj^T
//   q, k = partial RoPE(positions); a = causal-softmax attention inside each segment (GQA)
//   y = (a * sigmoid(gate)) o_proj^T
struct AttnSaved {
  std::vector<float> x_ND;                  // block input
  std::vector<float> q_raw_NHK, k_raw_NJK;  // before q_norm / k_norm
  std::vector<float> rstd_q_NH, rstd_k_NJ;
  std::vector<float> q_NHK, k_NJK, v_NJK;      // after norm + RoPE (attention inputs)
  std::vector<float> gate_NHK, a_NHK, lse_NH;  // output gate logits, attention output, lse
  std::vector<float> gated_NHK;                // o_proj input
};

struct AttnBlock {
  std::string prefix;  // e.g. "model.layers.3.self_attn."

  void fwd(core::Device dev, const Config& c, const TensorMap& params, const data::Pack& pack,
           const float* x_ND, float* y_ND, AttnSaved& s) const;
  // dx_ND is overwritten; parameter gradients accumulate into grads.
  void bwd(core::Device dev, const Config& c, const TensorMap& params, TensorMap& grads,
           const data::Pack& pack, const AttnSaved& s, const float* dy_ND, float* dx_ND) const;
};

}  // namespace deltatron::model
