// CPU reference for LayerNorm with weight and bias (the vision tower's norms).
#pragma once

#include <cstdint>

namespace deltatron::cpu {

// y = (x - mean) rstd w + b per row; mean, rstd stored per row.
template <typename T>
void layernorm_fwd(const T* x_ND, const T* w_D, const T* b_D, int64_t N, int64_t D, double eps,
                   T* y_ND, T* mean_N, T* rstd_N);

// dx overwritten (or accumulated when accumulate_dx; skipped when nullptr); dw, db accumulated
// (skipped when nullptr).
template <typename T>
void layernorm_bwd(const T* x_ND, const T* w_D, const T* mean_N, const T* rstd_N, const T* dy_ND,
                   int64_t N, int64_t D, T* dx_ND, bool accumulate_dx, T* dw_D, T* db_D);

}  // namespace deltatron::cpu
