// The Qwen3.5 blocks, each an explicit forward and backward over ops:: on the model's device
// (docs/gpu-model.md has the precision policy). Residual-stream tensors are f32; block inputs
// and activations are in the compute dtype (bf16 on CUDA, f32 on the CPU or in the fp32 mode);
// mixers and FFNs ADD their output into the f32 residual stream.
#pragma once

#include <string>

#include "model/context.h"

namespace deltatron::model {

// Gated full attention (spec 2.4): qg = x q_proj^T viewed [N, H, 2K] (per head: K query, then
// K gate columns); q, k = RMSNorm_zc(q; q_norm), RMSNorm_zc(x k_proj^T; k_norm); v = x v_proj^T;
// partial MRoPE on q, k; a = causal softmax attention inside each segment (GQA);
// y = (a * sigmoid(gate)) o_proj^T.
// Saved: x, q_raw, gate, k_raw, v, a, lse; without selective recomputation (Ctx::selective)
// also q, k (normed, rotated), their rstd and gated, which the backward otherwise recomputes.
struct AttnSaved {
  View x;  // block input (owned by the layer; with selective recomputation set by Layer::bwd)
  Buffer q_raw, gate, k_raw, v, q, k, rstd_q, rstd_k, a, lse, gated;
};
// Gated DeltaNet (spec 2.5-2.8): qkv = conv1d+SiLU(x in_proj_qkv^T) split into q, k (L2-normed)
// and v; z, b, a projections; beta = sigmoid(b), g = -exp(A_log) softplus(a + dt_bias);
// o = gated delta rule (chunked); y = RMSNormGated(o, z) out_proj^T.
// Saved: x, qkv (before the conv), z, b, a, o; without selective recomputation also q, k, v
// (conv + SiLU, L2-normed), their rstd, beta, g, yn and its rstd.
struct GdnSaved {
  View x;
  Buffer qkv, q, k, v, rstd_q, rstd_k, z, b, a, beta, g, o, yn, rstd_o;
};
// Dense SwiGLU: y = (silu(x gate^T) * x up^T) down^T.
// Saved: x, gate, up; without selective recomputation also h = silu(gate) * up.
struct MlpSaved {
  View x;
  Buffer gate, up, h;
};

// fwd: resid_ND (f32) += Block(x_ND). bwd: dx_ND (compute dtype) = d/dx of <dy, Block(x)>,
// overwritten; parameter gradients accumulate.
void attn_fwd(const Ctx& cx, const std::string& prefix, const View& x_ND, const View& resid_ND,
              AttnSaved& s);
void attn_bwd(const Ctx& cx, const std::string& prefix, const AttnSaved& s, const View& dy_ND,
              const View& dx_ND);
void gdn_fwd(const Ctx& cx, const std::string& prefix, const View& x_ND, const View& resid_ND,
             GdnSaved& s);
void gdn_bwd(const Ctx& cx, const std::string& prefix, const GdnSaved& s, const View& dy_ND,
             const View& dx_ND);
void mlp_fwd(const Ctx& cx, const std::string& prefix, const View& x_ND, const View& resid_ND,
             MlpSaved& s);
void mlp_bwd(const Ctx& cx, const std::string& prefix, const MlpSaved& s, const View& dy_ND,
             const View& dx_ND);

}  // namespace deltatron::model
