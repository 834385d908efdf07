// Contract of the gated delta rule ops (Gated DeltaNet core, spec 2.6-2.8): recurrent + chunked.
#pragma once

#include <cstdint>

#include "core/segments.h"
#include "core/view.h"

// Shape suffixes (row-major):
//   N tokens in the pack, H key/query heads, G value heads (G % H == 0, R = G / H),
//   K key head dim, V value head dim, S physical segments (seg.n).
// Head map: value head j reads key/query head h = j / R (repeat_interleave, not tiling).
//
// Inputs, all `in`:
//   q_NHK, k_NHK  queries and keys, already L2-normalised per head by the caller; q NOT scaled.
//   v_NGV         values.
//   g_NG          log-decay, <= 0 (g = -exp(A_log) softplus(a + dt_bias)); any magnitude is
//                 safe: only exponentials of non-positive numbers are formed.
//   beta_NG       write strength in (0, 1).
//   seg           physical segments [cu[s], cu[s+1]) covering [0, N); state is 0 at every
//                 segment start and nothing crosses a boundary. Empty segments are allowed.
//   scale         query scale (dk^-0.5 for Qwen3.5), applied inside the op.
//
// Recurrence, per segment and value head j (h = j / R), state S [K, V], S = 0 at the start:
//   S'  = exp(g_t) S_{t-1}
//   u_t = S'^T k_t;   delta_t = beta_t (v_t - u_t);   S_t = S' + k_t delta_t^T
//   o_t = S_t^T (scale q_t)                              (uses the updated state)
//
// Two algorithms compute this contract: cpu::gdn_recurrent_* (per token, host pointers; the test
// oracle, cpu/gdn.h) and the op below, gdn_chunk_* (chunked WY / UT-transform form of spec 2.7,
// chunk C = 64 restarting at every segment start, the last chunk of a segment may be short;
// parallel over (segment, value head)). Backward derivation: docs/ops/gdn.md.
//
// Views (docs/ops-views.md), one device per call: q, k, v, o, do, dq, dk, dv one storage type dt
// (f32 or bf16 on CUDA, f32 on the CPU); g, beta, dg, dbeta and state f32. cu: the [seg.n + 1]
// i32 bounds on the ops' device; seg: the same on the host.

namespace deltatron::ops {

// Forward.
//   o_NGV       out, overwritten: o_t per value head.
//   state_SGKV  out, overwritten, may be empty: final state S of each segment [S, G, K, V]
//               (zeros for an empty segment).
// Saved for backward: nothing beyond the inputs (the backward recomputes the chunk states).
void gdn_chunk_fwd(const core::View& q_NHK, const core::View& k_NHK, const core::View& v_NGV,
                   const core::View& g_NG, const core::View& beta_NG, const core::View& cu,
                   core::Segments seg, int64_t N, int64_t H, int64_t G, int64_t K, int64_t V,
                   float scale, const core::View& o_NGV, const core::View& state_SGKV);

// Backward of the forward above for the loss gradient do_NGV (in). No gradient flows into the
// final states (they are not trained through). All outputs `out`, OVERWRITTEN:
//   dq_NHK   dL/dq for the unscaled q (includes the factor scale), summed over the R value heads
//            that read key head h;
//   dk_NHK   dL/dk, summed the same way;
//   dv_NGV, dg_NG, dbeta_NG   per value head.
// Deterministic (fixed summation order over value heads).
void gdn_chunk_bwd(const core::View& q_NHK, const core::View& k_NHK, const core::View& v_NGV,
                   const core::View& g_NG, const core::View& beta_NG, const core::View& cu,
                   core::Segments seg, int64_t N, int64_t H, int64_t G, int64_t K, int64_t V,
                   float scale, const core::View& do_NGV, const core::View& dq_NHK,
                   const core::View& dk_NHK, const core::View& dv_NGV, const core::View& dg_NG,
                   const core::View& dbeta_NG);

}  // namespace deltatron::ops
