// GPU blocks of the Qwen3.5 model, each an explicit forward and backward (the same math and
// order as src/model/*_block.cpp, on device buffers; see docs/gpu-model.md for the precision
// policy). Residual-stream tensors are fp32; block inputs and activations are in the compute
// dtype; mixers and FFNs ADD their output into the fp32 residual stream.
#pragma once

#include <string>

#include "gpu/context.h"
#include "model/config.h"

namespace deltatron::gpu {

struct AttnSaved {
  const void* x = nullptr;  // block input (owned by the layer)
  Buf q_raw, gate, k_raw, v, q, k, rstd_q, rstd_k, a, lse, gated;
};
struct GdnSaved {
  const void* x = nullptr;
  Buf qkv, q, k, v, rstd_q, rstd_k, z, b, a, beta, g, o, yn, rstd_o;
};
struct MlpSaved {
  const void* x = nullptr;
  Buf gate, up, h;
};

// fwd: resid_ND (fp32) += Block(x_ND). bwd: dx_ND (dt) = d/dx of <dy, Block(x)>, overwritten;
// parameter gradients accumulate.
void attn_fwd(const Ctx& cx, const std::string& prefix, const void* x_ND, float* resid_ND,
              AttnSaved& s);
void attn_bwd(const Ctx& cx, const std::string& prefix, const AttnSaved& s, const void* dy_ND,
              void* dx_ND);
void gdn_fwd(const Ctx& cx, const std::string& prefix, const void* x_ND, float* resid_ND,
             GdnSaved& s);
void gdn_bwd(const Ctx& cx, const std::string& prefix, const GdnSaved& s, const void* dy_ND,
             void* dx_ND);
void mlp_fwd(const Ctx& cx, const std::string& prefix, const void* x_ND, float* resid_ND,
             MlpSaved& s);
void mlp_bwd(const Ctx& cx, const std::string& prefix, const MlpSaved& s, const void* dy_ND,
             void* dx_ND);

}  // namespace deltatron::gpu
