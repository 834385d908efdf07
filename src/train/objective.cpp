// Normalisation of the training objective over one optimizer step.
#include "train/objective.h"

#include <algorithm>

namespace deltatron::train {

StepCounts count_step(const std::vector<data::Pack>& packs, bool mtp) {
  StepCounts s;
  for (const auto& p : packs) {
    for (int32_t t : p.targets) s.label_tokens += t != data::kIgnoreIndex;
    for (uint8_t pad : p.is_pad) s.real_tokens += !pad;
    s.samples += p.num_samples();
    if (mtp)
      for (int32_t t :
           data::roll_within_segments(p.targets, p.cu_seqlens_padded, data::kIgnoreIndex))
        s.mtp_tokens += t != data::kIgnoreIndex;
  }
  return s;
}

model::ModelOptions step_options(const TrainConfig& cfg, const model::Config& c,
                                 const StepCounts& n) {
  model::ModelOptions o;
  o.ce_scale = 1.f / float(std::max<int64_t>(1, n.label_tokens));
  o.mtp_ce_scale = float(cfg.mtp_scale) / float(std::max<int64_t>(1, n.mtp_tokens));
  if (c.is_moe()) {
    o.router.aux_coef = cfg.router_aux_coef >= 0 ? cfg.router_aux_coef : c.router_aux_loss_coef;
    o.router.aux_type = cfg.router_aux_type == "seq"           ? model::AuxLossType::seq
                        : cfg.router_aux_type == "micro_batch" ? model::AuxLossType::micro_batch
                                                               : model::AuxLossType::global;
    o.router.seq_weight = 1.0 / double(std::max<int64_t>(1, n.samples));
    o.router.z_coef = cfg.z_loss_coef;
    o.router.z_weight = 1.0 / double(std::max<int64_t>(1, n.real_tokens));
  }
  return o;
}

}  // namespace deltatron::train
