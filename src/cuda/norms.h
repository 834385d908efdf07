// CUDA RMSNorm (zero-centred and gated) and L2 norm, fwd + bwd: contracts are ops/rmsnorm.h and
// ops/l2norm.h, here with storage types (cuda/dtype.h) and device pointers.
//
// Shape suffixes: N rows (tokens, or tokens x heads for a per-head norm), D normalised width.
// Row-major and contiguous. `void*` tensors are stored in the DType named beside them (f32 or
// bf16), float* tensors are fp32. Every kernel computes in fp32; row statistics are fp32 sums.
// Sizes: N >= 0, 1 <= D <= 8192 (fast paths for D % 8 == 0 in bf16 and D % 4 == 0 in f32 with
// 16-byte aligned pointers; any other size or offset takes a scalar path).
// Work is queued on the legacy default stream, asynchronous to the host.
// Weight gradients are deterministic: per-block partial column sums into a workspace owned by
// this file (one per device), then a fixed-order sum (cuda::col_sum_add). The workspace only
// grows; a backward call that grows it (the first ones, <= 512 x D floats) synchronizes the
// device once. Single host thread per device.
#pragma once

#include <cstdint>

#include "cuda/dtype.h"

namespace deltatron::cuda {

// Zero-centred RMSNorm, same contract as ops::rmsnorm_fwd:
//   rstd[n] = 1 / sqrt(mean_d x[n,d]^2 + eps);  y[n,d] = x[n,d] * rstd[n] * (1 + w[d])
//   x_ND   [N, D] xt in   (xt = f32 for the residual stream, = dt for per-head q/k norms)
//   w_D    [D]    dt in   the HF weight (offset form)
//   y_ND   [N, D] dt out  overwritten
//   rstd_N [N]    fp32 out overwritten; saved for backward (with x_ND and w_D)
//   x_copy [N, D] xt out or nullptr: a copy of x_ND made in the same pass
void rmsnorm_fwd(DType xt, const void* x_ND, DType dt, const void* w_D, int64_t N, int64_t D,
                 double eps, void* y_ND, float* rstd_N, void* x_copy = nullptr);

// Zero-centred RMSNorm backward, same contract as ops::rmsnorm_bwd (g = dy (1 + w), r = rstd):
//   dx[n,j] (= or +=) r g_j - (r^3 / D) x_j sum_i g_i x_i
//   dw[d]  += sum_n dy[n,d] x[n,d] r[n]
//   x_ND [N, D] xt in;  w_D [D] dt in;  rstd_N [N] fp32 in (from rmsnorm_fwd);  dy_ND [N, D] dt in
//   dx_ND [N, D] xt out: OVERWRITTEN, or ACCUMULATED when accumulate_dx (the residual gradient);
//         may alias dy_ND when xt == dt
//   dw_D  [D] fp32 inout ACCUMULATED (deterministic); nullptr skips it
//   dx_cast [N, D] dt out or nullptr: the new dx_ND rounded to dt in the same pass (bitwise a
//         cast of dx_ND afterwards); must not alias dx_ND, x_ND or dy_ND
void rmsnorm_bwd(DType xt, const void* x_ND, DType dt, const void* w_D, const float* rstd_N,
                 const void* dy_ND, int64_t N, int64_t D, void* dx_ND, bool accumulate_dx,
                 float* dw_D, void* dx_cast = nullptr);

// Gated RMSNorm (GDN output norm), same contract as ops::rmsnorm_gated_fwd:
//   rstd[n] = 1 / sqrt(mean_d x[n,d]^2 + eps);  y[n,d] = x[n,d] rstd[n] w[d] silu(z[n,d])
//   (PLAIN weight). x_ND, z_ND [N, D] dt in;  w_D [D] dt in;  y_ND [N, D] dt out overwritten;
//   rstd_N [N] fp32 out overwritten, saved for backward (with x_ND, z_ND, w_D).
void rmsnorm_gated_fwd(DType dt, const void* x_ND, const void* z_ND, const void* w_D, int64_t N,
                       int64_t D, double eps, void* y_ND, float* rstd_N);

// Gated RMSNorm backward, same contract as ops::rmsnorm_gated_bwd (g = dy w silu(z), r = rstd):
//   dx[n,j] = r g_j - (r^3 / D) x_j sum_i g_i x_i
//   dz[n,d] = dy w x r silu'(z);  dw[d] += sum_n dy x r silu(z)
//   x_ND, z_ND, dy_ND [N, D] dt in;  w_D [D] dt in;  rstd_N [N] fp32 in
//   dx_ND, dz_ND [N, D] dt out OVERWRITTEN (either may alias dy_ND);
//   dw_D [D] fp32 inout ACCUMULATED (deterministic); nullptr skips it
void rmsnorm_gated_bwd(DType dt, const void* x_ND, const void* z_ND, const void* w_D,
                       const float* rstd_N, const void* dy_ND, int64_t N, int64_t D, void* dx_ND,
                       void* dz_ND, float* dw_D);

// L2 norm (GDN q and k), same contract as ops::l2norm_fwd:
//   rstd[n] = 1 / sqrt(sum_d x[n,d]^2 + eps);  y[n,d] = x[n,d] rstd[n]
//   x_ND [N, D] dt in, row n at (n / heads) ld + (n % heads) D (ops::RowPitch; ld 0: heads D);
//   y_ND [N, D] dt out overwritten;  rstd_N [N] fp32 out overwritten.
//   Saved for backward: y_ND and rstd_N.
void l2norm_fwd(DType dt, const void* x_ND, int64_t N, int64_t D, double eps, void* y_ND,
                float* rstd_N, int64_t heads = 1, int64_t ld = 0);

// L2 norm backward, same contract as ops::l2norm_bwd:
//   dx[n,:] = rstd[n] (dy[n,:] - y[n,:] (y[n,:] . dy[n,:]))
//   y_ND, dy_ND [N, D] dt in;  rstd_N [N] fp32 in;  dx_ND [N, D] dt out OVERWRITTEN (may alias dy
//   when contiguous), rows laid out as x of the forward
void l2norm_bwd(DType dt, const void* y_ND, const float* rstd_N, const void* dy_ND, int64_t N,
                int64_t D, void* dx_ND, int64_t heads = 1, int64_t ld = 0);

}  // namespace deltatron::cuda
