// Contract for the optimizer's device step: AdamW over many fp32 tensors at once (the update of
// train::AdamW::step, torch.optim.AdamW single-tensor path, amsgrad=False).
//
// Per tensor of n elements (master p, exp_avg m, exp_avg_sq v, gradient g, step t 1-based):
//   scalars in double, rounded to float once: step_size = lr / (1 - beta1^t), bc2_sqrt =
//   sqrt(1 - beta2^t), decay = 1 - lr * weight_decay, eps, beta1, beta2, 1 - beta1, 1 - beta2;
//   per element in float32, each operation rounded on its own, in this order:
//     g  = grad * grad_scale          (grad itself when grad_scale == 1)
//     p *= decay
//     m  = beta1 m + (1 - beta1) g
//     v  = beta2 v + (1 - beta2) (g g)
//     p -= step_size (m / (sqrt(v) / bc2_sqrt + eps))
//     compute_copy = p rounded (RNE) to the compute copy's dtype (when given)
// Bitwise the same on the CPU as train::AdamW::step (which calls this op) and on CUDA (built
// without FMA contraction, cuda/adamw.h).
#pragma once

#include <cstdint>
#include <span>

#include "core/view.h"

namespace deltatron::ops {

// The per-step scalars. step = the optimizer's step count after the increment (first update 1).
struct AdamWArgs {
  double lr = 0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  int64_t step = 1;
  // Multiplied into every gradient element in fp32 before use, as train::clip_grad_norm scales
  // the gradients in place; 1 leaves them exactly as they are.
  float grad_scale = 1.0f;
};

// One parameter tensor: master, m, v inout and grad in, f32 views of one element count;
// compute_copy out or empty: the same count in f32 (CPU), f32 or bf16 (CUDA).
struct AdamWTensor {
  core::View master, m, v, grad, compute_copy;
  double weight_decay = 0;  // the decaying group's weight_decay, 0 for a no-decay tensor
};

// The update of every tensor (all views of all tensors on one device; an empty span does
// nothing). Asynchronous on CUDA (a few launches for all tensors).
void adamw_step_multi(std::span<const AdamWTensor> tensors, const AdamWArgs& args);

}  // namespace deltatron::ops
