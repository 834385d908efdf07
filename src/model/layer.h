// Decoder layer: x = x + Mixer(RMSNorm_in(x)); x = x + FFN(RMSNorm_post(x)) (spec 2.3), on the
// f32 residual stream, with its explicit backward.
#pragma once

#include <string>

#include "model/blocks.h"
#include "model/moe_block.h"

namespace deltatron::model {

// n1, n2: the norms' outputs, the blocks' inputs; with selective recomputation (Ctx::selective,
// not under sequence parallelism) dropped after each block's forward and recomputed by bwd from
// x_in, h (the forward's op on the same f32 input: the same bits).
struct LayerSaved {
  Buffer x_in, rstd1, n1, h, rstd2, n2;  // x_in, h f32 (residual); n1, n2 in dt
  Buffer n1_all, n2_all;  // sequence parallel: n1, n2 gathered over the group (the blocks' input)
  AttnSaved attn;
  GdnSaved gdn;
  MlpSaved mlp;
  MoeSaved moe;
};

struct Layer {
  std::string prefix;  // "model.layers.3." or "mtp.layers.0."
  LayerType type;
  std::string moe_prefix() const { return prefix + "mlp."; }

  // x_ND (f32, this rank's rows of the residual stream: Ctx::Nl): in = layer input, out = layer
  // output. Tensor parallel: the mixer and FFN run this rank's heads on every token
  // (model/tp_exchange.h).
  void fwd(const Ctx& cx, const View& x_ND, LayerSaved& s) const;
  // dx_ND (f32): in = gradient of the layer output, out = of its input. The MoE router-loss
  // gradient (s.moe.terms, if attached) enters here. s: the blocks' input views are pointed at
  // the recomputed norm outputs (selective recomputation).
  void bwd(const Ctx& cx, LayerSaved& s, const View& dx_ND) const;
};

}  // namespace deltatron::model
