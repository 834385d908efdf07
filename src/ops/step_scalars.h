// Contract for the ops that keep one training step's scalars on the device (core::StepScalars):
// the per-pack loss sums, their sum over the step, and the step's clip and skip decision, so the
// trainer reads the device once per step instead of after every head and before the update.
//
// Every view is on one device; sums are f64 in the order the host code they replace used (the
// results are bitwise those of that code, on the CPU and on CUDA: IEEE double adds, division and
// square root in the same order, no FMA). No op waits for the device.
#pragma once

#include <cstdint>

#include "core/view.h"

namespace deltatron::ops {

// sum_1[0] += the per-sample sums of one pack's per-token losses, added in sample order:
//   for s < S:  acc_s = 0;  for t in [cu[s], cu[s+1]) with targets[t] != -100, in order:
//               acc_s += double(loss[t]);  then  sum_1[0] += acc_s
// (model::sum_per_sample followed by a serial sum of its sums: what the trainer added).
//   loss_N [N] f32 in (model::head_loss's per-token losses); targets_N [N] i32 in;
//   cu_S1 [S+1] i32 in (the pack's cu_seqlens_padded: 0 = cu[0] <= ... <= cu[S] <= N);
//   sum_1 [1] f64 inout. CUDA: one block, the tokens staged through shared memory, one thread
//   adding in order (about N dependent adds: tens of microseconds for 8192 tokens).
void step_loss_sum_add(const core::View& loss_N, const core::View& targets_N,
                       const core::View& cu_S1, int64_t S, int64_t N, const core::View& sum_1);

// y_1[0] += x_1[0], f64 [1] each (a pack's router loss into the step's).
void step_scalar_add(const core::View& x_1, const core::View& y_1);

// A pack's MoE error words (bad_3: [3] i32, ops/moe.h) into the step's scalars ([kStepScalars]
// f64): when no error is held yet (moe_error == 0) and bad_3 records one (a word other than
// kNoBadToken), moe_error = 1 and moe_bad = bad_3 (exact in f64). The host throws it at the end of
// the step with moe_fail_bad; step_gate skips the update.
void step_moe_errors(const core::View& bad_3, const core::View& scalars);

// The step's decision from its summed scalars (scalars: [core::kStepScalars] f64, a
// core::StepScalars; grad_squares, ce_sum, router_sum in; grad_norm, grad_scale, skip out):
//   grad_norm  = sqrt(grad_squares)
//   grad_scale = float(max_norm / (grad_norm + 1e-6)) when max_norm > 0, grad_norm is finite and
//                that quotient is < 1; else 1 (train::clip_scale)
//   skip       = 1 unless ce_sum / label_tokens, grad_norm and router_sum are all finite and
//                moe_error == 0, else 0
// label_tokens: the step's label tokens, at least 1 (the divisor of the logged loss).
void step_gate(const core::View& scalars, double max_norm, double label_tokens);

}  // namespace deltatron::ops
