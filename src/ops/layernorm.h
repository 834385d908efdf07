// Contract for the LayerNorm op family (weight and bias): the vision tower's norms (spec 3.5, 3.6).
//
// Shape suffixes: N rows (patches), D normalised width. Views (docs/ops-views.md), one device per
// call. Storage: xt (x, dx) and dt (w, b, y, dy) are f32 or bf16 on CUDA, f32 on the CPU; mean,
// rstd, dw, db are f32. Row statistics are accumulated in double on the CPU, in fp32 (two-pass)
// on CUDA (cuda/layernorm.h).
#pragma once

#include <cstdint>

#include "core/view.h"

namespace deltatron::ops {

// LayerNorm (torch.nn.LayerNorm, biased variance):
//   mean[n] = (1/D) sum_d x[n,d]
//   rstd[n] = 1 / sqrt((1/D) sum_d (x[n,d] - mean[n])^2 + eps)
//   y[n,d]  = (x[n,d] - mean[n]) * rstd[n] * w[d] + b[d]
//   x_ND [N, D] in;  w_D, b_D [D] in;  y_ND [N, D] out, overwritten
//   mean_N, rstd_N [N] out, overwritten; saved for backward
// Saved for backward: x_ND, mean_N, rstd_N (and w_D).
void layernorm_fwd(const core::View& x_ND, const core::View& w_D, const core::View& b_D, int64_t N,
                   int64_t D, double eps, const core::View& y_ND, const core::View& mean_N,
                   const core::View& rstd_N);

// LayerNorm backward, with xh = (x - mean) rstd, g = dy * w:
//   dx[n,j] = rstd (g_j - (1/D) sum_i g_i - xh_j (1/D) sum_i g_i xh_i)
//   dw[d]  += sum_n dy[n,d] xh[n,d];   db[d] += sum_n dy[n,d]
//   x_ND, w_D, mean_N, rstd_N (from layernorm_fwd), dy_ND [N, D]  in
//   dx_ND [N, D] out: OVERWRITTEN, or ACCUMULATED when accumulate_dx (the residual gradient); an
//                     empty view skips it (a norm whose input needs no gradient)
//   dw_D, db_D [D] inout: ACCUMULATED, summed over rows in a fixed order; empty views skip them
void layernorm_bwd(const core::View& x_ND, const core::View& w_D, const core::View& mean_N,
                   const core::View& rstd_N, const core::View& dy_ND, int64_t N, int64_t D,
                   const core::View& dx_ND, bool accumulate_dx, const core::View& dw_D,
                   const core::View& db_D);

}  // namespace deltatron::ops
