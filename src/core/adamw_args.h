// The per-step scalars of one AdamW update (train::AdamW::step), shared by the op contract
// (ops::AdamWArgs) and both backends (cpu:: and cuda::AdamWStepArgs), so no layer copies them
// field by field.
#pragma once

#include <cstdint>

namespace deltatron::core {

struct AdamWArgs {
  double lr = 0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  // The optimizer's step count after the increment: 1-based (the first update has step = 1).
  int64_t step = 1;
  // Multiplied into every gradient element in fp32 before use (g = grad * grad_scale), as
  // train::clip_grad_norm scales the gradients in place; 1 leaves them exactly as they are.
  float grad_scale = 1.0f;
  // Optional: the clip decided on the device (core::StepScalars' grad_scale and skip), [2] f64
  // in memory on the tensors' device, read by the update in place of grad_scale so the host does
  // not wait for it: gate[0] the scale (a float value), gate[1] nonzero: no update (nothing is
  // written). nullptr: grad_scale as above, always an update.
  const double* gate = nullptr;
  // Keys the stochastic rounding of bf16 moments: core::random_key(seed, step).
  uint64_t seed = 0;
};

}  // namespace deltatron::core
