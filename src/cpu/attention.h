// CPU reference for the varlen GQA softmax attention core: causal (the gated full attention) or
// bidirectional inside each segment (the vision tower).
#pragma once

#include <cstdint>

#include "core/segments.h"

namespace deltatron::cpu {

// o = softmax(scale q k^T, inside each segment of seg, causal unless !causal) v; query head h reads
// kv head h / (H / J). lse_NH = log-sum-exp of each query row's scaled scores (saved for backward).
template <typename T>
void attention_fwd(const T* q_NHK, const T* k_NJK, const T* v_NJK, core::Segments seg, int64_t N,
                   int64_t H, int64_t J, int64_t K, T scale, T* o_NHK, T* lse_NH,
                   bool causal = true);

// Gradients of attention_fwd from its inputs, output and lse; dq, dk, dv overwritten.
template <typename T>
void attention_bwd(const T* q_NHK, const T* k_NJK, const T* v_NJK, const T* o_NHK, const T* lse_NH,
                   const T* do_NHK, core::Segments seg, int64_t N, int64_t H, int64_t J, int64_t K,
                   T scale, T* dq_NHK, T* dk_NJK, T* dv_NJK, bool causal = true);

}  // namespace deltatron::cpu
