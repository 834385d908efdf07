// One pre-norm decoder layer (mixer + FFN, two residuals), shared by the trunk and the MTP head.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/device.h"
#include "data/pack.h"
#include "model/attn_block.h"
#include "model/config.h"
#include "model/gdn_block.h"
#include "model/mlp_block.h"
#include "model/moe_block.h"
#include "model/weights.h"

namespace deltatron::model {

// h = x + Mixer(RMSNorm_in(x));  y = h + FFN(RMSNorm_post(h))      (spec 2.3)
// Mixer: gated attention or Gated DeltaNet; FFN: dense SwiGLU or MoE (config.is_moe()).
struct LayerSaved {
  std::vector<float> x_in_ND, rstd1_N, n1_ND;  // layer input, input_layernorm output
  std::vector<float> h_ND, rstd2_N, n2_ND;     // after the mixer residual, post norm output
  AttnSaved attn;
  GdnSaved gdn;
  MlpSaved mlp;
  MoeSaved moe;
  RouterLossTerms router;  // filled by the caller after fwd when router losses are on
  bool has_router_terms = false;
};

struct DecoderLayer {
  std::string prefix;  // e.g. "model.layers.3." or "mtp.layers.0."
  LayerType type;

  std::string moe_prefix() const { return prefix + "mlp."; }
  // x_ND: in = layer input, out = layer output.
  void fwd(core::Device dev, const Config& c, const TensorMap& params, const data::Pack& pack,
           std::vector<float>& x_ND, LayerSaved& s) const;
  // dx_ND: in = gradient w.r.t. the layer output, out = w.r.t. the layer input. Parameter
  // gradients accumulate; router-loss gradients (if s.has_router_terms) are scaled by
  // router_scale.
  void bwd(core::Device dev, const Config& c, const TensorMap& params, TensorMap& grads,
           const data::Pack& pack, const LayerSaved& s, double router_scale,
           std::vector<float>& dx_ND) const;
};

}  // namespace deltatron::model
