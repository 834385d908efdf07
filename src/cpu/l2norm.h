// CPU reference for the L2 normalisation of GDN queries and keys.
#pragma once

#include <cstdint>

namespace deltatron::cpu {

// y = x * rstd, rstd[n] = 1 / sqrt(sum_d x[n,d]^2 + eps).
template <typename T>
void l2norm_fwd(const T* x_ND, int64_t N, int64_t D, double eps, T* y_ND, T* rstd_N);

// dx = rstd * (dy - y * (y . dy)), overwritten.
template <typename T>
void l2norm_bwd(const T* y_ND, const T* rstd_N, const T* dy_ND, int64_t N, int64_t D, T* dx_ND);

}  // namespace deltatron::cpu
