// CPU reference for the zero-centred RMSNorm and the gated RMSNorm of the GDN output.
#pragma once

#include <cstdint>

namespace deltatron::cpu {

// y = x * rstd * (1 + w), rstd[n] = 1 / sqrt(mean_d(x[n,d]^2) + eps).
template <typename T>
void rmsnorm_fwd(const T* x_ND, const T* w_D, int64_t N, int64_t D, double eps, T* y_ND, T* rstd_N);

// dx overwritten, dw accumulated (+=).
template <typename T>
void rmsnorm_bwd(const T* x_ND, const T* w_D, const T* rstd_N, const T* dy_ND, int64_t N, int64_t D,
                 T* dx_ND, T* dw_D);

// y = x * rstd * w * silu(z) (plain weight, no 1 + w).
template <typename T>
void rmsnorm_gated_fwd(const T* x_ND, const T* z_ND, const T* w_D, int64_t N, int64_t D, double eps,
                       T* y_ND, T* rstd_N);

// dx, dz overwritten, dw accumulated (+=).
template <typename T>
void rmsnorm_gated_bwd(const T* x_ND, const T* z_ND, const T* w_D, const T* rstd_N, const T* dy_ND,
                       int64_t N, int64_t D, T* dx_ND, T* dz_ND, T* dw_D);

}  // namespace deltatron::cpu
