// CPU step-scalar ops (ops/step_scalars.h): a pack's loss sums into the step's, and the step's
// clip and skip decision; the reference the CUDA kernels (cuda/step_scalars.h) repeat bit for bit.
#pragma once

#include <cstdint>

#include "core/step_scalars.h"

namespace deltatron::cpu {

// *sum += sum over samples s < S in order of (sum over t in [cu[s], cu[s+1]) with targets[t] !=
// -100, in order, of double(loss[t])); each sample's sum starts at 0. A core::Error when the
// bounds do not run from cu[0] = 0 up to at most N without decreasing.
void step_loss_sum_add(const float* loss, const int32_t* targets, const int32_t* cu, int64_t S,
                       int64_t N, double* sum);

// The first MoE error: when s->moe_error == 0 and bad[0] or bad[1] != none, moe_error = 1 and
// moe_bad = bad (ops::step_moe_errors).
void step_moe_errors(const int32_t* bad, int32_t none, core::StepScalars* s);

// grad_norm, grad_scale and skip of s from its grad_squares, ce_sum and router_sum
// (ops::step_gate).
void step_gate(core::StepScalars* s, double max_norm, double label_tokens);

}  // namespace deltatron::cpu
