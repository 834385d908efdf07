// CUDA AdamW update (fp32 master or the lean bf16 weight + remainder, fp32 or bf16 moments,
// optional compute copy) and the deterministic sum of squares behind the global gradient norm:
// the same arithmetic as cpu/adamw.cpp (the storage forms are ops/adamw.h's).
//
// Every pointer is device memory unless marked host. Updates are queued on the legacy default
// stream, asynchronous to the host; sum_squares and sum_squares_multi synchronise (they return a
// host value), the *_to forms do not. The update's clip may be read from device memory
// (AdamWStepArgs::gate), so a trainer need not wait for the norm.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>

#include "core/adamw_args.h"
#include "cuda/dtype.h"

namespace deltatron::cuda {

// The per-step scalars of train::AdamW::step (core/adamw_args.h).
using AdamWStepArgs = core::AdamWArgs;

// One parameter tensor of a multi-tensor step.
struct AdamWTensor {
  float* master = nullptr;       // [n] fp32  inout  master weights p (with a remainder: out, the
                                 //                  new p, or nullptr)
  void* m = nullptr;             // [n] moment_dt  inout  exp_avg
  void* v = nullptr;             // [n] moment_dt  inout  exp_avg_sq
  const float* grad = nullptr;   // [n] fp32  in     gradient (unscaled; see grad_scale)
  void* compute_copy = nullptr;  // [n] dt    out    p after the step (bf16: rounded with ties
                                 //                  away from zero); nullptr skips it. With a
                                 //                  remainder: the pair's bf16 weight, inout
  int64_t n = 0;
  double weight_decay = 0;        // the decaying group's weight_decay, 0 for a no-decay tensor
  uint16_t* remainder = nullptr;  // [n] u16 inout: the lean master (core/bf16.h), or nullptr
  int64_t index = 0;              // element i's stochastic-rounding counter is index + i
};

// AdamW step, bitwise the CPU's (train::AdamW::step, torch.optim.AdamW single-tensor path).
// Host, in double, rounded to float once (exactly as the CPU does):
//   bc1 = 1 - beta1^t, bc2 = 1 - beta2^t, step_size = float(lr / bc1),
//   bc2_sqrt = float(sqrt(bc2)), decay = float(1 - lr * weight_decay), eps = float(eps),
//   beta1, beta2, 1 - beta1, 1 - beta2 each rounded to float.
// Device, per element in fp32, each operation rounded on its own (no FMA contraction), in this
// order:
//   g  = grad * grad_scale          (grad_scale = float(gate[0]) with args.gate; gate[1] != 0:
//                                    nothing is written)
//   p  = p * decay
//   m  = beta1 * m + (1 - beta1) * g
//   v  = beta2 * v + (1 - beta2) * (g * g)
//   p  = p - step_size * (m / (sqrt(v) / bc2_sqrt + eps))
//   compute_copy = round_to_dt(p)   (when not nullptr; bf16: core::bf16_round_ties_away)
// With the CPU built without FMA contraction (the x86-64 default), results are bitwise equal.
// The lean master and bf16 moments are read and written as cpu::adamw_step(AdamWStorage) does
// (ops/adamw.h): p = master_join(weight, remainder) before, master_split(p) after; bf16 m and v
// read exactly, stored with core::bf16_round_stochastic and core::random_bits(key, index + i).
void adamw_step(float* master, float* m, float* v, const float* grad, int64_t n,
                const AdamWStepArgs& args, double weight_decay, DType dt, void* compute_copy);

// The same update over many tensors with few launches (up to 48 tensors per launch, passed as
// kernel parameters; no host->device copies). tensors is a host span; empty tensors are skipped.
// dt is the storage type of every compute copy, moment_dt (f32 or bf16) that of every moment;
// either every tensor has a remainder (then dt is bf16) or none has.
void adamw_step_multi(std::span<const AdamWTensor> tensors, const AdamWStepArgs& args, DType dt,
                      DType moment_dt = DType::f32);

// copy[i] = master[i] (dt f32) or core::bf16_round_ties_away(master[i]) (dt bf16), [n] each:
// the compute copy of an fp32 master, rounded as the lean pair's weight.
void adamw_compute_copy(const float* master, DType dt, void* copy, int64_t n);

// sum_i x[i]^2 in fp64, returned to the host (synchronises). Deterministic: fixed blocks of 64 Ki
// elements (each: 256 threads with strided fp64 sums, then a fixed shuffle tree), block sums added
// in a fixed tree by one block; the order depends only on n. Temporary device memory: 8 bytes per
// block in a process-wide scratch buffer kept for later calls; the result comes back through a
// pinned host slot.
double sum_squares(const float* x, int64_t n);

// The same sum written to out (one double in device memory) instead of returned: queued on the
// legacy default stream, no host synchronisation (the trainer's gradient norm, core::StepScalars).
// Bitwise the value sum_squares returns.
void sum_squares_to(const float* x, int64_t n, double* out);

// sum over tensors k and elements i of xs[k][i]^2, fp64, one synchronisation for all tensors;
// xs and ns are host spans of equal length (device pointers, element counts). Deterministic as
// sum_squares. The global gradient norm is sqrt(sum_squares_multi(grads)).
double sum_squares_multi(std::span<const float* const> xs, std::span<const int64_t> ns);
// The same written to out (device memory; asynchronous, as sum_squares_to).
void sum_squares_multi_to(std::span<const float* const> xs, std::span<const int64_t> ns,
                          double* out);

// train::clip_grad_norm's factor: float(max_norm / (norm + 1e-6)) when max_norm > 0, the norm is
// finite and that coefficient is < 1; otherwise 1 (no clipping). A non-finite norm means the
// trainer skips the step altogether (as on the CPU).
inline float grad_clip_scale(double norm, double max_norm) {
  if (!std::isfinite(norm) || max_norm <= 0) return 1.0f;
  const double coef = max_norm / (norm + 1e-6);
  return coef >= 1.0 ? 1.0f : static_cast<float>(coef);
}

}  // namespace deltatron::cuda
