// Contract for the RMSNorm op family: zero-centred RMSNorm and the GDN gated RMSNorm (spec 2.2).
//
// Shape suffixes: N rows (tokens, or tokens x heads when a norm runs per head), D normalised
// width (hidden size, head dim, or dv for the gated form). Views (docs/ops-views.md), one device
// per call. Storage: xt (x, dx of the plain norm) and dt (w, y, dy, z, ...) are f32 or bf16 on
// CUDA, f32 on the CPU; rstd and dw are f32. Row statistics are accumulated in double on the CPU;
// rstd is stored per row for the backward.
#pragma once

#include <cstdint>

#include "core/view.h"

namespace deltatron::ops {

// Zero-centred RMSNorm (Qwen3_5RMSNorm: input/post-attention/q/k/final/MTP norms):
//   rstd[n] = 1 / sqrt(mean_d x[n,d]^2 + eps)
//   y[n,d]  = x[n,d] * rstd[n] * (1 + w[d])        (w stored as an offset, ~0 at init)
//   x_ND    [N, D]  in   xt
//   w_D     [D]     in   dt; the HF weight (offset form)
//   y_ND    [N, D]  out  dt; overwritten
//   rstd_N  [N]     out  f32; overwritten; saved for backward
//   x_copy  [N, D]  out  xt, or empty: a copy of x_ND made in the same pass (the decoder layer's
//                        saved residual); must not alias x_ND
// Saved for backward: x_ND, rstd_N (and w_D).
void rmsnorm_fwd(const core::View& x_ND, const core::View& w_D, int64_t N, int64_t D, double eps,
                 const core::View& y_ND, const core::View& rstd_N, const core::View& x_copy = {});

// Zero-centred RMSNorm backward, with g = dy * (1 + w), r = rstd[n]:
//   dx[n,j] = r g_j - (r^3 / D) x_j sum_i g_i x_i
//   dw[d]  += sum_n dy[n,d] x[n,d] r[n]
//   x_ND, w_D, rstd_N (from rmsnorm_fwd), dy_ND [N, D] (dt)  in
//   dx_ND [N, D]  out    xt; OVERWRITTEN, or ACCUMULATED when accumulate_dx (the residual
//                        gradient); may alias dy_ND when x and dy share a dtype
//   dw_D  [D]     inout  f32; ACCUMULATED, summed over rows in a fixed order (deterministic); an
//                        empty view skips it
//   dx_cast [N, D] out   dt, or empty: the new dx_ND rounded to dt in the same pass (bitwise a
//                        cast of dx_ND afterwards: the next block's output gradient); must not
//                        alias dx_ND, x_ND or dy_ND
void rmsnorm_bwd(const core::View& x_ND, const core::View& w_D, const core::View& rstd_N,
                 const core::View& dy_ND, int64_t N, int64_t D, const core::View& dx_ND,
                 bool accumulate_dx, const core::View& dw_D, const core::View& dx_cast = {});

// Gated RMSNorm (Qwen3_5RMSNormGated, linear_attn.norm; norm first, gate second):
//   rstd[n] = 1 / sqrt(mean_d x[n,d]^2 + eps)
//   y[n,d]  = x[n,d] * rstd[n] * w[d] * silu(z[n,d])   (PLAIN weight, init 1; HF convention)
//   x_ND [N, D] in (o of one head per row);  z_ND [N, D] in (pre-activation gate);  w_D [D] in
//   y_ND [N, D] out overwritten;  rstd_N [N] out (f32) overwritten, saved for backward
//   x, z, w, y: dt.
// Saved for backward: x_ND, z_ND, rstd_N (and w_D).
void rmsnorm_gated_fwd(const core::View& x_ND, const core::View& z_ND, const core::View& w_D,
                       int64_t N, int64_t D, double eps, const core::View& y_ND,
                       const core::View& rstd_N);

// Gated RMSNorm backward, with g = dy * w * silu(z), r = rstd[n]:
//   dx[n,j] = r g_j - (r^3 / D) x_j sum_i g_i x_i
//   dz[n,d] = dy w x r silu'(z),  silu'(z) = s (1 + z (1 - s)), s = sigmoid(z)
//   dw[d]  += sum_n dy x r silu(z)
//   dx_ND, dz_ND [N, D] out (dt), OVERWRITTEN (either may alias dy_ND);
//   dw_D [D] inout (f32), ACCUMULATED (deterministic order), may be empty.
void rmsnorm_gated_bwd(const core::View& x_ND, const core::View& z_ND, const core::View& w_D,
                       const core::View& rstd_N, const core::View& dy_ND, int64_t N, int64_t D,
                       const core::View& dx_ND, const core::View& dz_ND, const core::View& dw_D);

}  // namespace deltatron::ops
