// CUDA GDN short convolution (causal depthwise conv1d + SiLU over a pack): contract ops/conv1d.h.
//
// Shape suffixes: N tokens in the pack, C channels (2*Kd + Vd of the GDN qkv projection, 8192 or
// 6144 in the released presets), W kernel width (linear_conv_kernel_dim, 4; 1 <= W <= 8 here).
// Row-major. `void*` tensors are stored in `dt` (bf16, or f32 in the debug mode); `float*` are
// fp32. Every pointer is device memory. Arithmetic is fp32 whatever the storage type.
// Work is queued on the legacy default stream, asynchronous to the host (no synchronisation).
#pragma once

#include <cstdint>

#include "cuda/dtype.h"

namespace deltatron::cuda {

// Forward, same formula as ops::conv1d_fwd. For token t in segment [s0, s1) and channel c:
//   y[t,c] = silu( sum_{i<W, t-(W-1)+i >= s0} w[c,i] x[t-(W-1)+i, c] )
// No tap reads across a segment start: a segment's first W-1 outputs see only their own tokens.
//   x_NC  [N, C]    dt     in
//   w_CW  [C, W]    dt     in   w[c, W-1] multiplies the current token
//   cu_dev [nseg+1] int32  in   segment boundaries, cu[0] = 0, cu[nseg] = N, non-decreasing
//                               (empty segments allowed); the caller validates them on the host
//                               (as cpu::conv1d_fwd does). nseg >= 1 when N > 0.
//   y_NC  [N, C]    dt     out  overwritten; must not alias x_NC
// Throws core::Error for W outside [1, 8] (unsupported on CUDA) or negative sizes.
void conv1d_fwd(DType dt, const void* x_NC, const void* w_CW, const int32_t* cu_dev, int nseg,
                int64_t N, int64_t C, int64_t W, void* y_NC);

// Backward, same formula as ops::conv1d_bwd, with g[t,c] = dy[t,c] silu'(a[t,c]) and the
// pre-activation a recomputed from x and w:
//   dx[u,c]  = sum_{i: t = u+(W-1)-i in u's segment} w[c,i] g[t,c]
//   dw[c,i] += sum_t g[t,c] x[t-(W-1)+i, c]          (in-segment taps only)
//   x_NC, dy_NC [N, C]  dt     in
//   w_CW  [C, W]        dt     in
//   cu_dev, nseg               as in conv1d_fwd
//   dx_NC [N, C]        dt     out    OVERWRITTEN; must not alias x_NC or dy_NC
//   dw_CW [C, W]        fp32   inout  ACCUMULATED (+=). Deterministic: fp32 partial sums over
//                                     fixed 64-token tiles, then the tiles summed in order by a
//                                     second kernel (no atomics); bitwise the same run to run.
// Temporary device memory: ceil(N/64) * C * W fp32 partials (16 MiB at N = C = 8192, W = 4) in
// a process-wide scratch buffer kept for later calls (growing it is a cudaFree + cudaMalloc).
void conv1d_bwd(DType dt, const void* x_NC, const void* w_CW, const int32_t* cu_dev, int nseg,
                const void* dy_NC, int64_t N, int64_t C, int64_t W, void* dx_NC, float* dw_CW);

}  // namespace deltatron::cuda
