// CPU AdamW update of one fp32 tensor: the per-element arithmetic of train::AdamW::step (and of
// cuda::adamw_step), the one place that formula is written for the CPU.
#pragma once

#include <cstdint>

namespace deltatron::cpu {

// The per-step scalars (cuda::AdamWStepArgs): step t is 1-based (the first update has t = 1);
// grad_scale multiplies every gradient element in fp32 before use, as train::clip_grad_norm
// scales the gradients in place (1 leaves them exactly as they are).
struct AdamWStepArgs {
  double lr = 0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  int64_t step = 1;
  float grad_scale = 1.0f;
};

// One tensor of n elements, torch.optim.AdamW's single-tensor path. Scalars in double, rounded to
// float once: bc1 = 1 - beta1^t, bc2 = 1 - beta2^t, step_size = float(lr / bc1), bc2_sqrt =
// float(sqrt(bc2)), decay = float(1 - lr * weight_decay), eps, beta1, beta2, 1 - beta1, 1 - beta2
// each rounded to float. Per element in float32, in this order:
//   g = grad * grad_scale  (grad itself when grad_scale == 1)
//   p *= decay;  m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) (g g)
//   p -= step_size (m / (sqrt(v) / bc2_sqrt + eps));  compute_copy = p (when not nullptr)
// Elementwise (OpenMP for large n), so the result does not depend on the thread count.
// master, m, v inout; grad in (not modified); compute_copy out or nullptr.
void adamw_step(float* master, float* m, float* v, const float* grad, int64_t n,
                const AdamWStepArgs& args, double weight_decay, float* compute_copy);

}  // namespace deltatron::cpu
