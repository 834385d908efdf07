// CPU reference for the fused LM head + cross-entropy (the contract of cuda/lm_head_ce.h).
#pragma once

#include <cstdint>

namespace deltatron::cpu {

// Legend: N tokens, D hidden, V vocabulary. Contract: src/ops/lm_head_ce.h.
// loss_N[t] = CE(x_t W^T, targets_N[t]) (0 for -100, overwritten); correct_N (or nullptr) = 1
// where the first largest logit is the target (0 for -100). With dloss_N: dx_ND (or nullptr)
// overwritten (0 rows for -100) or accumulated, dW_VD (or nullptr) += dlogits^T x. Label rows are
// gathered in chunks of about 4M logits and run through cpu::linear_* and cpu::cross_entropy_*,
// the same kernels in the same order as model::lm_head_loss.
template <typename T>
void linear_cross_entropy(const T* x_ND, const T* W_VD, const int32_t* targets_N, const T* dloss_N,
                          int64_t N, int64_t D, int64_t V, T* loss_N, int32_t* correct_N, T* dx_ND,
                          bool accumulate_dx, T* dW_VD);

}  // namespace deltatron::cpu
