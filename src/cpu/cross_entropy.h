// CPU reference for the per-token softmax cross-entropy of the language-model head (spec 2.11),
// the kernel behind ops::linear_cross_entropy's CPU branch (ops/lm_head_ce.h).
//
// Shape suffixes: N tokens, V vocabulary size. Logits, losses and lse are contiguous T; targets
// are int32. The op is per token (reduction "none"): summing, dividing by the number of
// non-ignored tokens (HF num_items_in_batch) or masking (Megatron loss_mask) is the caller's job,
// and enters the backward through dloss_N.
#pragma once

#include <cstdint>

#include "core/constants.h"

namespace deltatron::cpu {

using core::kIgnoreIndex;  // core/constants.h

// Forward:
//   lse[n]  = log sum_v exp(logits[n,v])                (max-subtracted, summed in double)
//   loss[n] = lse[n] - logits[n, target[n]],  or 0 when target[n] == -100
//   logits_NV [N, V] in;  targets_N [N] in: each in [0, V) or -100, else core::Error
//   loss_N [N] out overwritten;  lse_N [N] out overwritten (also for ignored tokens)
// Saved for backward: logits_NV, targets_N, lse_N.
template <typename T>
void cross_entropy_fwd(const T* logits_NV, const int32_t* targets_N, int64_t N, int64_t V,
                       T* loss_N, T* lse_N);

// Backward:
//   dlogits[n,v] = dloss[n] * (exp(logits[n,v] - lse[n]) - [v == target[n]])
//   rows with target -100 are zero; a target outside [0, V) and not -100 is a core::Error.
//   lse_N [N] in (from the forward);  dloss_N [N] in
//   dlogits_NV [N, V] out OVERWRITTEN (may alias logits_NV to save a vocabulary-sized buffer)
template <typename T>
void cross_entropy_bwd(const T* logits_NV, const int32_t* targets_N, const T* lse_N,
                       const T* dloss_N, int64_t N, int64_t V, T* dlogits_NV);

}  // namespace deltatron::cpu
