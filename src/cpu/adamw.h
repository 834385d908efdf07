// CPU AdamW update of one tensor: the per-element arithmetic of train::AdamW::step (and of
// cuda::adamw_step), the one place that formula is written for the CPU, over every storage of
// the state (fp32 master or the lean bf16 weight + remainder, fp32 or bf16 moments).
#pragma once

#include <cstdint>

#include "core/adamw_args.h"

namespace deltatron::cpu {

// The per-step scalars (core/adamw_args.h).
using AdamWStepArgs = core::AdamWArgs;

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

// Where one tensor's state lives (n elements each; exactly one master form, one moment form).
struct AdamWStorage {
  int64_t n = 0;
  // The master: fp32 (master inout), or the lean pair (weight and remainder inout, core/bf16.h's
  // master_split / master_join), in which case master is out (the new master in fp32) or nullptr.
  float* master = nullptr;
  uint16_t* weight = nullptr;
  uint16_t* remainder = nullptr;
  // The moments: fp32 (m_f32, v_f32) or bf16 (m_bf16, v_bf16), inout.
  float* m_f32 = nullptr;
  float* v_f32 = nullptr;
  uint16_t* m_bf16 = nullptr;
  uint16_t* v_bf16 = nullptr;
  const float* grad = nullptr;  // in
  // fp32 master only, out or nullptr: p as is, or rounded to bf16 (core::bf16_round_ties_away,
  // the rounding the lean pair's weight has).
  float* copy_f32 = nullptr;
  uint16_t* copy_bf16 = nullptr;
  int64_t counter = 0;  // element i draws core::random_bits(key, counter + i)
  double weight_decay = 0;
};

// The update above on any storage. With args.gate (host memory on the CPU): grad_scale =
// float(gate[0]), and nothing is written when gate[1] != 0. The master is read (fp32, or joined
// from the pair) and, after the update, written in the same form (the pair by master_split: its
// weight is the nearest bf16, ties away from zero). bf16 moments are read exactly, the update uses
// the fp32 m and v it computes, and they are stored rounded stochastically
// (core::bf16_round_stochastic) with bits = core::random_bits(core::random_key(args.seed,
// args.step), counter + i): the low 16 bits round m, the next 16 round v. Elementwise and
// counter-based: independent of the thread count.
void adamw_step(const AdamWStorage& t, const AdamWStepArgs& args);

// copy = master rounded to bf16 with ties away from zero (the compute copy of the fp32-master
// mode, matching the lean pair's weight), [n] each.
void adamw_compute_copy(const float* master, uint16_t* copy, int64_t n);

}  // namespace deltatron::cpu
