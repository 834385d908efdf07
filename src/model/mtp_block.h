// Multi-Token Prediction head (Qwen3.5 `mtp.*`, one depth): explicit forward and backward.
#pragma once

#include <vector>

#include "core/device.h"
#include "data/pack.h"
#include "model/config.h"
#include "model/decoder_layer.h"
#include "model/weights.h"

namespace deltatron::model {

// Spec 3.2, per packed sample (rolls never cross a segment boundary):
//   e_j  = embed(x_{j+1}) (token 0 at each segment's last slot, whose target is masked)
//   u_j  = fc([RMSNorm(e_j; pre_fc_norm_embedding), RMSNorm(h_j; pre_fc_norm_hidden)])
//   r    = full-attention decoder layer "mtp.layers.0." over u (same segments and positions)
//   m_j  = RMSNorm(r_j; mtp.norm);  logits_j = m_j lm_head^T predict x_{j+2}
// h is the trunk's post-final-norm hidden state; the embedding and lm_head are shared.
struct MtpSaved {
  std::vector<int32_t> ids_N, targets_N;  // rolled inputs and MTP targets (-100 = none)
  std::vector<float> e_ND, h_ND, rstd_e_N, rstd_h_N, cat_N2D;
  LayerSaved layer;
  std::vector<float> r_ND, rstd_m_N, m_ND;
};

struct MtpBlock {
  DecoderLayer layer() const { return DecoderLayer{"mtp.layers.0.", LayerType::full_attention}; }

  void fwd(core::Device dev, const Config& c, const TensorMap& params, const data::Pack& pack,
           const float* h_ND, MtpSaved& s) const;
  // dm_ND: gradient w.r.t. m. dh_ND ACCUMULATES the gradient w.r.t. the trunk's hidden state;
  // parameter gradients (incl. the shared embedding) accumulate.
  void bwd(core::Device dev, const Config& c, const TensorMap& params, TensorMap& grads,
           const data::Pack& pack, const MtpSaved& s, const float* dm_ND, double router_scale,
           float* dh_ND) const;
};

}  // namespace deltatron::model
