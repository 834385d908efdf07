// Contract for the GDN short convolution: causal depthwise conv1d + SiLU over a pack (spec 2.6, 5).
//
// Shape suffixes: N tokens in the pack, C channels (2*Kd + Vd of the GDN qkv projection),
// W kernel width (linear_conv_kernel_dim, 4). Views (docs/ops-views.md), one device per call:
// x, w, y, dy, dx one storage type dt (f32 or bf16 on CUDA, f32 on the CPU); dw f32. cu: the
// [seg.n + 1] i32 bounds on the ops' device; seg: the same on the host, physical segments
// covering [0, N). CUDA takes W <= 8 only.
#pragma once

#include <cstdint>

#include "core/segments.h"
#include "core/view.h"

namespace deltatron::ops {

// Forward. For token t in segment [s0, s1) of seg and channel c:
//   a[t,c] = sum_{i=0..W-1, t-(W-1)+i >= s0} w[c,i] x[t-(W-1)+i, c]
//   y[t,c] = silu(a[t,c])
// Inputs before the segment start are zeros: no tap crosses a segment boundary, so the first
// W-1 outputs of a segment see only their own segment; segments shorter than W are fine.
//   x_NC [N, C]  in
//   w_CW [C, W]  in   HF linear_attn.conv1d.weight [C, 1, W] viewed as [C, W]; w[c, W-1]
//                     multiplies the current token
//   y_NC [N, C]  out  overwritten; must not alias x_NC
// Saved for backward: x_NC (and w_CW); the pre-activation is recomputed, not saved.
void conv1d_fwd(const core::View& x_NC, const core::View& w_CW, const core::View& cu,
                core::Segments seg, int64_t N, int64_t C, int64_t W, const core::View& y_NC);

// Backward, with g[t,c] = dy[t,c] silu'(a[t,c]) (a recomputed from x, w):
//   dx[u,c]  = sum_{i: t = u+(W-1)-i in u's segment} w[c,i] g[t,c]
//   dw[c,i] += sum_t g[t,c] x[t-(W-1)+i, c]   (in-segment taps only)
//   x_NC, w_CW, dy_NC [N, C]  in
//   dx_NC [N, C]  out    OVERWRITTEN
//   dw_CW [C, W]  inout  ACCUMULATED; summed over tokens in a fixed order (deterministic)
void conv1d_bwd(const core::View& x_NC, const core::View& w_CW, const core::View& cu,
                core::Segments seg, const core::View& dy_NC, int64_t N, int64_t C, int64_t W,
                const core::View& dx_NC, const core::View& dw_CW);

}  // namespace deltatron::ops
