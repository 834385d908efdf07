// Contract for the fused LM head + cross-entropy op: logits = x W^T, per-token CE, its gradient
// and the two backward GEMMs, chunked over tokens so the [N, V] logits are never materialised.
//
// Shape suffixes: N tokens, D hidden, V vocabulary. W is stored [V, D] (lm_head.weight or the
// tied embedding). Per token, cpu/cross_entropy.h composed with ops/linear.h:
//   logits[n,:] = x[n,:] W^T
//   loss[n]     = logsumexp(logits[n,:]) - logits[n, t_n]      (0 when t_n == -100)
//   dlogits[n,v]= dloss[n] (softmax(logits[n,:])_v - [v == t_n]) (0 rows when t_n == -100)
//   dx[n,:]     = dlogits[n,:] W            dW += dlogits^T x
// Views (one device for all): x_ND [N*D] and W_VD [V*D] in, one activation dtype (f32; bf16 on
// CUDA); targets_N [N] i32 in, each in [0, V) or -100 (the CPU throws on any other value, CUDA
// gives that token loss NaN); dloss_N [N] f32 in, or empty for forward only (then dx and dW must
// be empty); loss_N [N] f32 out, overwritten; correct_N [N] i32 out or empty: 1 where the first
// index of the largest logit equals the target, else 0 (0 for ignored tokens); dx_ND [N*D] in x's
// dtype, overwritten (0 rows for ignored tokens) or += when accumulate_dx, or empty; dW_VD [V*D]
// f32 inout, ACCUMULATED, or empty (frozen head).
// CPU: float32, the label rows in chunks of about 4M logits through cpu::linear_* and
// cpu::cross_entropy_* (bitwise model::lm_head_loss). CUDA: cuda::linear_cross_entropy.
#pragma once

#include <cstdint>

#include "core/view.h"

namespace deltatron::ops {

// accumulate_dw false: dW_VD is OVERWRITTEN instead (not read; the step's first write of the
// gradient, model::Params::g_target).
void linear_cross_entropy(const core::View& x_ND, const core::View& W_VD,
                          const core::View& targets_N, const core::View& dloss_N, int64_t N,
                          int64_t D, int64_t V, const core::View& loss_N,
                          const core::View& correct_N, const core::View& dx_ND, bool accumulate_dx,
                          const core::View& dW_VD, bool accumulate_dw = true);

}  // namespace deltatron::ops
