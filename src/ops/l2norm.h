// Contract for the L2 normalisation op family (GDN q and k, spec 2.2 item 3 and 2.6).
//
// Shape suffixes: N rows (tokens x key heads), D normalised width (dk). Views
// (docs/ops-views.md), one device per call: x, y, dy, dx one storage type dt (f32 or bf16 on
// CUDA, f32 on the CPU); rstd f32.
#pragma once

#include <cstdint>

#include "core/view.h"

namespace deltatron::ops {

// Where the rows of an op's strided operand (x of the forward, dx of the backward) lie: `heads`
// rows of D per token, token t's row h at element t * ld + h * D (ld >= heads * D); the view then
// holds exactly (N / heads - 1) * ld + heads * D elements (N a multiple of heads). The default
// (heads 1, ld 0 = D): rows back to back, [N, D]. The GDN block reads q and k straight out of
// its conv output [T, C] so, and writes their gradients straight into d(conv output).
struct RowPitch {
  int64_t heads = 1;
  int64_t ld = 0;  // 0: heads * D
};

// Forward: rstd[n] = 1 / sqrt(sum_d x[n,d]^2 + eps),  y[n,d] = x[n,d] * rstd[n].
//   The model uses eps = 1e-6 (FLA l2norm). The q scale dk^-0.5 is NOT applied here.
//   x_ND   [N, D]  in   rows laid out by x_pitch
//   y_ND   [N, D]  out  overwritten; saved for backward
//   rstd_N [N]     out  overwritten; saved for backward
// Saved for backward: y_ND and rstd_N (x is not needed).
void l2norm_fwd(const core::View& x_ND, int64_t N, int64_t D, double eps, const core::View& y_ND,
                const core::View& rstd_N, RowPitch x_pitch = {});

// Backward: dx[n,:] = rstd[n] * (dy[n,:] - y[n,:] * (y[n,:] . dy[n,:])).
//   y_ND, rstd_N (from l2norm_fwd), dy_ND [N, D]  in
//   dx_ND [N, D]  out  OVERWRITTEN, rows laid out by dx_pitch (may alias dy_ND when contiguous);
//                      the elements between the rows are left as they are
void l2norm_bwd(const core::View& y_ND, const core::View& rstd_N, const core::View& dy_ND,
                int64_t N, int64_t D, const core::View& dx_ND, RowPitch dx_pitch = {});

}  // namespace deltatron::ops
