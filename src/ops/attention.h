// Contract for the attention core: varlen GQA softmax attention over a pack, causal (the text
// model, spec 2.4, 5) or bidirectional inside each segment (the vision tower, vision spec 3.5).
//
// Shape suffixes: N tokens in the pack, H query heads, J kv heads (H % J == 0), K head dim.
// The q/k norms, RoPE and the sigmoid output gate of the gated full attention are separate ops;
// this is only a = softmax(q k^T * scale) v.
// Views (docs/ops-views.md), one device per call: q, k, v, o, do, dq, dk, dv one storage type dt
// (f32 or bf16 on CUDA, f32 on the CPU); lse f32. cu: the [seg.n + 1] i32 bounds on the ops'
// device (on the CPU it may view seg.cu); seg: the same bounds on the host, physical segments
// covering [0, N).
#pragma once

#include <cstdint>

#include "core/segments.h"
#include "core/view.h"

namespace deltatron::ops {

// Forward. For token n in segment [a, b) of seg and query head h, with kv head j = h / (H/J)
// (GQA, repeat_interleave mapping) and the causal window W(n) = [a, n] (causal = true) or the
// whole segment W(n) = [a, b) (causal = false, the vision tower; CPU and CUDA):
//   s[n,h,m] = scale * q[n,h,:] . k[m,j,:]            for m in W(n)
//   lse[n,h] = log sum_{m in W(n)} exp(s[n,h,m])       (softmax in float32)
//   o[n,h,:] = sum_{m in W(n)} exp(s[n,h,m] - lse[n,h]) v[m,j,:]
// No token reads across a segment start; a segment of length 1 returns its own v.
//   q_NHK [N, H, K]  in;   k_NJK, v_NJK [N, J, K]  in
//   scale            1/sqrt(K) for Qwen3.5
//   o_NHK  [N, H, K] out  overwritten
//   lse_NH [N, H]    out  overwritten; saved for backward
// Saved for backward: q, k, v, o, lse (no N x N matrix is kept or formed).
void attention_fwd(const core::View& q_NHK, const core::View& k_NJK, const core::View& v_NJK,
                   const core::View& cu, core::Segments seg, int64_t N, int64_t H, int64_t J,
                   int64_t K, float scale, const core::View& o_NHK, const core::View& lse_NH,
                   bool causal = true);

// Backward. With P = exp(s - lse) recomputed, D[n,h] = do[n,h,:] . o[n,h,:] and
// ds[n,h,m] = P[n,h,m] (do[n,h,:] . v[m,j,:] - D[n,h]):
//   dq[n,h,:] = scale sum_{m in W(n)} ds[n,h,m] k[m,j,:]
//   dk[m,j,:] = scale sum_{h in group j} sum_{n: m in W(n)} ds[n,h,m] q[n,h,:]
//   dv[m,j,:] =       sum_{h in group j} sum_{n: m in W(n)} P[n,h,m] do[n,h,:]
//   q_NHK, k_NJK, v_NJK, o_NHK, lse_NH (as saved by attention_fwd), do_NHK [N, H, K]  in
//   dq_NHK [N, H, K], dk_NJK [N, J, K], dv_NJK [N, J, K]  out  OVERWRITTEN
// Deterministic: the result does not depend on the thread count.
void attention_bwd(const core::View& q_NHK, const core::View& k_NJK, const core::View& v_NJK,
                   const core::View& o_NHK, const core::View& lse_NH, const core::View& do_NHK,
                   const core::View& cu, core::Segments seg, int64_t N, int64_t H, int64_t J,
                   int64_t K, float scale, const core::View& dq_NHK, const core::View& dk_NJK,
                   const core::View& dv_NJK, bool causal = true);

}  // namespace deltatron::ops
