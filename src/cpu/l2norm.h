// CPU reference for the L2 normalisation of GDN queries and keys.
#pragma once

#include <cstdint>

namespace deltatron::cpu {

// y = x * rstd, rstd[n] = 1 / sqrt(sum_d x[n,d]^2 + eps). Row n of x at (n / heads) * ld +
// (n % heads) * D (ops::RowPitch; ld 0: heads * D, rows back to back).
template <typename T>
void l2norm_fwd(const T* x_ND, int64_t N, int64_t D, double eps, T* y_ND, T* rstd_N,
                int64_t heads = 1, int64_t ld = 0);

// dx = rstd * (dy - y * (y . dy)), overwritten; row n of dx laid out as x of the forward.
template <typename T>
void l2norm_bwd(const T* y_ND, const T* rstd_N, const T* dy_ND, int64_t N, int64_t D, T* dx_ND,
                int64_t heads = 1, int64_t ld = 0);

}  // namespace deltatron::cpu
