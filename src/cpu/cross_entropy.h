// CPU reference for the per-token softmax cross-entropy of the language-model head.
#pragma once

#include <cstdint>

#include "core/constants.h"

namespace deltatron::cpu {

using core::kIgnoreIndex;  // core/constants.h

// lse[n] = logsumexp(logits[n,:]); loss[n] = lse[n] - logits[n, target[n]], 0 when ignored.
template <typename T>
void cross_entropy_fwd(const T* logits_NV, const int32_t* targets_N, int64_t N, int64_t V,
                       T* loss_N, T* lse_N);

// dlogits[n,:] = dloss[n] * (softmax(logits[n,:]) - onehot(target[n])), 0 rows when ignored.
template <typename T>
void cross_entropy_bwd(const T* logits_NV, const int32_t* targets_N, const T* lse_N,
                       const T* dloss_N, int64_t N, int64_t V, T* dlogits_NV);

}  // namespace deltatron::cpu
