// CUDA LayerNorm with weight and bias (the vision tower's norms), fwd + bwd: contract
// ops/layernorm.h, here with storage types (cuda/dtype.h) and device pointers.
//
// Shape suffixes: N rows (patches), D normalised width. Row-major, contiguous. `void*` tensors are
// stored in the DType named beside them (f32 or bf16); float* tensors are fp32. Every kernel
// computes in fp32 (two-pass row statistics: the mean, then the mean squared deviation). Sizes:
// N >= 0, D >= 1. Work is queued on the legacy default stream, asynchronous to the host.
// Weight and bias gradients are deterministic: per-block partial column sums over fixed row
// ranges (a number of parts that depends only on N), then cuda::col_sum_add in part order. The
// partials live in a workspace owned by layernorm.cu that only grows (growing synchronizes).
#pragma once

#include <cstdint>

#include "cuda/dtype.h"

namespace deltatron::cuda {

// LayerNorm, same contract as ops::layernorm_fwd:
//   mean[n] = (1/D) sum_d x;  rstd[n] = 1 / sqrt((1/D) sum_d (x - mean)^2 + eps)
//   y[n,d]  = (x[n,d] - mean[n]) rstd[n] w[d] + b[d]
//   x_ND [N, D] xt in (xt = f32: the vision residual stream);  w_D, b_D [D] dt in
//   y_ND [N, D] dt out overwritten;  mean_N, rstd_N [N] fp32 out overwritten (saved for backward)
void layernorm_fwd(DType xt, const void* x_ND, DType dt, const void* w_D, const void* b_D,
                   int64_t N, int64_t D, double eps, void* y_ND, float* mean_N, float* rstd_N);

// LayerNorm backward, same contract as ops::layernorm_bwd (xh = (x - mean) rstd, g = dy w):
//   dx[n,j] (= or +=) rstd (g_j - mean_i g_i - xh_j mean_i g_i xh_i)
//   dw[d] += sum_n dy xh;  db[d] += sum_n dy
//   x_ND [N, D] xt in;  w_D [D] dt in;  mean_N, rstd_N fp32 in;  dy_ND [N, D] dt in
//   dx_ND [N, D] xt out: OVERWRITTEN, or ACCUMULATED when accumulate_dx; nullptr skips it; may
//         alias dy_ND when xt == dt
//   dw_D, db_D [D] fp32 inout ACCUMULATED (deterministic); nullptr skips either
void layernorm_bwd(DType xt, const void* x_ND, DType dt, const void* w_D, const float* mean_N,
                   const float* rstd_N, const void* dy_ND, int64_t N, int64_t D, void* dx_ND,
                   bool accumulate_dx, float* dw_D, float* db_D);

}  // namespace deltatron::cuda
