// GPU decoder layer: x = x + Mixer(RMSNorm_in(x)); x = x + FFN(RMSNorm_post(x)) (spec 2.3), on
// the fp32 residual stream, with its explicit backward.
#pragma once

#include <memory>
#include <string>

#include "gpu/blocks.h"
#include "gpu/moe_block.h"

namespace deltatron::gpu {

struct LayerSaved {
  Buf x_in, rstd1, n1, h, rstd2, n2;  // x_in, h fp32 (residual); n1, n2 in dt
  AttnSaved attn;
  GdnSaved gdn;
  MlpSaved mlp;
  MoeSaved moe;
};

struct Layer {
  std::string prefix;  // "model.layers.3." or "mtp.layers.0."
  model::LayerType type;
  std::string moe_prefix() const { return prefix + "mlp."; }

  // x_ND (fp32): in = layer input, out = layer output.
  void fwd(const Ctx& cx, float* x_ND, LayerSaved& s) const;
  // dx_ND (fp32): in = gradient of the layer output, out = of its input. The MoE router-loss
  // gradient (s.moe.router_grad, if set) enters here.
  void bwd(const Ctx& cx, const LayerSaved& s, float* dx_ND) const;
};

}  // namespace deltatron::gpu
