// The training objective's normalisation: what one optimizer step's micro-batches contain and
// the loss scales that follow, so that packing and micro-batching never change the objective.
#pragma once

#include <vector>

#include "data/pack.h"
#include "model/model.h"
#include "train/train_config.h"

namespace deltatron::train {

// Counts over all micro-batches of one optimizer step.
struct StepCounts {
  int64_t label_tokens = 0, mtp_tokens = 0, real_tokens = 0, samples = 0;
};

StepCounts count_step(const std::vector<data::Pack>& packs, bool mtp);

// Model options for every micro-batch of a step. The objective is
//   sum CE / label_tokens + mtp_scale * sum CE_mtp / mtp_tokens
//   + per MoE layer: aux (global: counts accumulated over the step's micro-batches so far;
//     seq: mean over the step's samples; micro_batch: per pack) + z_coef * mean lse^2 over the
//     step's real tokens.
// The caller sets running_counts (with step_tokens = real_tokens) for the global aux loss.
model::ModelOptions step_options(const TrainConfig& cfg, const model::Config& c,
                                 const StepCounts& n);

}  // namespace deltatron::train
