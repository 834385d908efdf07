// CUDA step-scalar ops (ops/step_scalars.h): a pack's loss sums into the step's and the step's
// clip and skip decision, on the device, bitwise the CPU's (cpu/step_scalars.h): the same f64
// adds in the same order, IEEE division and square root, no FMA. Every pointer is device memory;
// work is queued on the legacy default stream and nothing waits for the device.
#pragma once

#include <cstdint>

#include "core/step_scalars.h"

namespace deltatron::cuda {

// *sum += the per-sample loss sums in sample order (cpu::step_loss_sum_add). One block: the
// tokens are staged through shared memory in tiles, one thread adds them in order. Bounds past N
// are clamped (the CPU checks them).
void step_loss_sum_add(const float* loss, const int32_t* targets, const int32_t* cu, int64_t S,
                       int64_t N, double* sum);

// y[0] += x[0] (one thread).
void step_scalar_add(const double* x, double* y);

// The first MoE error into *s (cpu::step_moe_errors; one thread).
void step_moe_errors(const int32_t* bad, int32_t none, core::StepScalars* s);

// grad_norm, grad_scale and skip of *s (cpu::step_gate; one thread).
void step_gate(core::StepScalars* s, double max_norm, double label_tokens);

}  // namespace deltatron::cuda
