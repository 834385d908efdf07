// CPU reference for the grouped expert GEMMs of the MoE block (the contract of
// cuda/grouped_linear.h): each expert's rows of an expert-major row order times its weight slice.
#pragma once

#include <cstdint>

namespace deltatron::cpu {

// Legend: E experts, I / O input / output features, R = offsets_E1[E] rows. Rows
// [off[e], off[e+1]) use W[e] = W_EOI + e*O*I ([O, I]); offsets_E1 [E+1] host, off[0] = 0,
// non-decreasing (checked). Contract: src/ops/moe.h.

// y[r,:] = x[r,:] W[e]^T (overwritten), one cpu::linear_fwd per non-empty expert.
template <typename T>
void grouped_linear_fwd(const T* x_RI, const T* W_EOI, const int64_t* offsets_E1, int64_t E,
                        int64_t I, int64_t O, T* y_RO);

// dx[r,:] = dy[r,:] W[e] (OVERWRITTEN; nullptr skips); dW[e] += dy_e^T x_e (ACCUMULATED, or
// OVERWRITTEN without accumulate_dw: an empty expert's dW[e] = 0; nullptr skips), one
// cpu::linear_bwd per non-empty expert.
template <typename T>
void grouped_linear_bwd(const T* x_RI, const T* W_EOI, const T* dy_RO, const int64_t* offsets_E1,
                        int64_t E, int64_t I, int64_t O, T* dx_RI, T* dW_EOI,
                        bool accumulate_dw = true);

}  // namespace deltatron::cpu
