// Gated DeltaNet mixer (Qwen3.5 `linear_attn`): explicit forward and backward.
#pragma once

#include <string>
#include <vector>

#include "core/device.h"
#include "data/pack.h"
#include "model/config.h"
#include "model/weights.h"

namespace deltatron::model {

// Legend: N tokens, D hidden, C = 2*Kd + Vd conv channels, H key heads (linear_num_key_heads),
// G value heads, K key dim, V value dim, W conv width.
// Forward (spec 2.6), x_ND is the input-layernormed residual stream:
//   c = silu(causal_conv(x in_proj_qkv^T)) split into q [N,H,K], k [N,H,K], v [N,G,V]
//   q, k = L2norm(q), L2norm(k);  z = x in_proj_z^T [N,G,V]
//   beta = sigmoid(x in_proj_b^T), g = -exp(A_log) softplus(x in_proj_a^T + dt_bias)   [N,G]
//   o = gated delta rule (chunked, state reset per segment, scale K^-1/2)
//   y = GatedRMSNorm(o; norm, z) out_proj^T
struct GdnSaved {
  std::vector<float> x_ND, qkv_NC, c_NC;
  std::vector<float> q_NHK, k_NHK, rstd_q_NH, rstd_k_NH, v_NGV;
  std::vector<float> z_NGV, b_NG, a_NG, beta_NG, g_NG;
  std::vector<float> o_NGV, rstd_o_NG, yn_NGV;
};

struct GdnBlock {
  std::string prefix;  // e.g. "model.layers.0.linear_attn."

  void fwd(core::Device dev, const Config& c, const TensorMap& params, const data::Pack& pack,
           const float* x_ND, float* y_ND, GdnSaved& s) const;
  // dx_ND is overwritten; parameter gradients accumulate into grads.
  void bwd(core::Device dev, const Config& c, const TensorMap& params, TensorMap& grads,
           const data::Pack& pack, const GdnSaved& s, const float* dy_ND, float* dx_ND) const;
};

}  // namespace deltatron::model
