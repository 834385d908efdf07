// Contract for the optimizer's device step: AdamW over many fp32 tensors at once (the update of
// train::AdamW::step, torch.optim.AdamW single-tensor path, amsgrad=False).
//
// Per tensor of n elements (master p, exp_avg m, exp_avg_sq v, gradient g, step t 1-based):
//   scalars in double, rounded to float once: step_size = lr / (1 - beta1^t), bc2_sqrt =
//   sqrt(1 - beta2^t), decay = 1 - lr * weight_decay, eps, beta1, beta2, 1 - beta1, 1 - beta2;
//   per element in float32, each operation rounded on its own, in this order:
//     g  = grad * grad_scale          (grad itself when grad_scale == 1; with args.gate, a
//                                      device scalar: grad_scale = float(gate[0]), and nothing
//                                      is written when gate[1] != 0)
//     p *= decay
//     m  = beta1 m + (1 - beta1) g
//     v  = beta2 v + (1 - beta2) (g g)
//     p -= step_size (m / (sqrt(v) / bc2_sqrt + eps))
//     compute_copy = p, or p rounded to bf16 with ties away from zero (when given)
// Bitwise the same on the CPU as train::AdamW::step (which calls this op) and on CUDA (built
// without FMA contraction, cuda/adamw.h).
//
// Storage of the state (training.master, training.moments; docs/lean-state.md):
//  - master "fp32": `master` is the f32 master (inout); `compute_copy` its copy (out), f32, or
//    bf16 rounded with ties away from zero (core/bf16.h: the rounding of the pair below, so both
//    modes compute with the same bf16 weights).
//  - master "remainder": no f32 master. `compute_copy` (bf16, inout) and `remainder` (u16,
//    inout) are the pair core::master_split makes of it; the step joins them (exact, bit for
//    bit), updates p and splits it again: the new weight is p's nearest bf16 (ties away from
//    zero), exactly the compute copy of the "fp32" mode, so training is bitwise the same.
//    `master`, when given, is out: the new p in f32 (the weights of a model that computes in
//    f32: the CPU, or CUDA in fp32 precision; and the f32 router weights of MoE layers).
//  - moments "fp32": m and v f32 (inout).
//  - moments "bf16": m and v bf16 (inout), read exactly; the update uses the f32 m and v it
//    computes, which are stored rounded stochastically (core::bf16_round_stochastic) with the
//    bits core::random_bits(core::random_key(seed, step), index + i): low 16 bits for m, the
//    next 16 for v. Why stochastic: v's update changes it by a relative (1 - beta2) (g^2/v - 1)
//    per step, below half a bf16 ulp (2^-9) whenever |g^2/v - 1| < 2 with beta2 = 0.999, so
//    round-to-nearest would freeze v (a shrinking gradient would never lower it and the steps
//    would stay too small); stochastic rounding is unbiased, so the stored moments follow the
//    fp32 averages in expectation. The bits are counter-based (seed, step, element), not a
//    stream: the same on the CPU and CUDA for any launch layout, and a resumed run draws what an
//    unbroken one draws, so resume stays bitwise.
#pragma once

#include <cstdint>
#include <span>

#include "core/adamw_args.h"
#include "core/view.h"

namespace deltatron::ops {

// The per-step scalars (core/adamw_args.h); seed keys the stochastic rounding of bf16 moments
// (see the top of the file).
using AdamWArgs = core::AdamWArgs;

// One parameter tensor, views of one element count n on one device. Master "fp32": master f32
// inout; compute_copy out or empty, f32 or bf16. Master "remainder": remainder u16 and
// compute_copy bf16 inout; master f32 out or empty. m, v inout, both f32 or both bf16; grad f32
// in. The CPU accepts bf16 and u16 here (the state's storage; its arithmetic is f32).
struct AdamWTensor {
  core::View master, m, v, grad, compute_copy;
  double weight_decay = 0;  // the decaying group's weight_decay, 0 for a no-decay tensor
  core::View remainder;     // empty: master "fp32"
  int64_t index = 0;        // element 0's counter for the stochastic rounding (bf16 moments)
};

// The update of every tensor (all views of all tensors on one device; an empty span does
// nothing). Asynchronous on CUDA (a few launches for all tensors).
void adamw_step_multi(std::span<const AdamWTensor> tensors, const AdamWArgs& args);

// training.offload: state that lives in host memory (pinned on CUDA) and is streamed through the
// device for the step. `moments`: every tensor's m and v are host views. `master`: the masters
// are host views (master "fp32": `master`, inout; "remainder": `remainder`) except those whose
// view is on the device (the MoE routers' f32 masters, which the model reads), used in place.
struct AdamWOffload {
  bool moments = false, master = false;
  int64_t chunk = int64_t(1) << 24;  // elements per staging slot (two slots on the device)
};

// adamw_step_multi over offloaded state, with the same result bit for bit: the tensors are cut
// into chunks of at most off.chunk elements; each chunk's host state is copied into one of two
// device staging slots, stepped there, and copied back, the copies of the next and previous
// chunks overlapping the step of this one (cuda/offload.h). On the CPU the chunks are staged
// with plain copies (the reference of the chunking). Returns when the host state is current.
void adamw_step_offloaded(std::span<const AdamWTensor> tensors, const AdamWArgs& args,
                          const AdamWOffload& off);

// Bytes of the two device staging slots of adamw_step_offloaded for `off` and moments of
// `moment_dt` (0 when nothing is offloaded); master_bytes = 4 (fp32 master) or 2 (remainder).
int64_t adamw_offload_staging_bytes(const AdamWOffload& off, core::DType moment_dt,
                                    int master_bytes);

// The compute copy of an f32 master (master "fp32"): copy = master (f32) or master rounded to
// bf16 with ties away from zero (core::bf16_round_ties_away), n elements each, one device.
void adamw_compute_copy(const core::View& master, const core::View& copy, int64_t n);

}  // namespace deltatron::ops
