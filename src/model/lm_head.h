// The output projection + cross-entropy of a head (the LM head and the MTP head share it),
// fused so the logits are never materialised for the whole pack (ops/lm_head_ce.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/context.h"

namespace deltatron::model {

// Name of the output-projection matrix: embed_tokens when tied, else lm_head.weight.
std::string lm_head_name(const Config& c);

// Per-token losses CE(h_t W^T, targets_t) (0 where the target is -100), copied to the host.
// with_grads: dh_ND (dt, overwritten) = d(scale * sum_t loss_t)/dh and the head weight's
// gradient accumulates. correct (optional): 1 where the argmax equals the target.
// sum_1 (optional, [1] f64 on the device): the losses are not copied; their per-sample sums over
// label tokens are added to sum_1[0] in sample order on the device (ops::step_loss_sum_add), and
// the result is empty.
std::vector<double> head_loss(const Ctx& cx, const View& h_ND, const View& targets_N, float scale,
                              bool with_grads, const View& dh_ND, std::vector<uint8_t>* correct,
                              const View& sum_1 = {});

}  // namespace deltatron::model
