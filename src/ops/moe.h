// Contract for the Mixture-of-Experts op family: softmax top-k router, the expert-major token
// permutation, gathers and the combine, the grouped expert GEMMs and the shared expert's sigmoid
// gate (spec 2.10, 4). Router statistics and losses are in ops/router_loss.h.
//
// Shape suffixes: N tokens in the pack, D hidden, E experts, K experts per token (top-k),
// F FFN width, P = N*K routing slots in expert-major (permuted) order, R rows of one expert's
// slice [offsets[e], offsets[e+1]) of that order (or all P rows).
// A routing SLOT is n*K + j: the j-th choice of token n (j = 0 is the most probable expert).
// The expert FFNs are grouped_linear_* below and ops::swiglu_* on gathered rows.
//
// Views (docs/ops-views.md), one device per call, the signatures of cuda/moe.h and
// cuda/grouped_linear.h. Element types: router quantities (logits, probs, lse, top-k weights and
// their gradients, the shared-gate logit) f32; expert ids, rows and positions i32; token
// activations (x, gathered rows, expert outputs, their gradients) f32, or bf16 on CUDA, one dtype
// per call; outputs into the residual stream (y of moe_scatter_add and moe_shared_gate_fwd) f32 or
// the activation dtype; expert weight gradients f32. The CPU takes f32 only. An optional argument
// (nullptr in the CUDA header) is an empty view. Views may be flat: each is checked by element
// count.
#pragma once

#include <cstdint>

#include "core/view.h"

namespace deltatron::ops {

// The MoE ops' error words, bad_3: [3] i32 on the ops' device, each kNoBadToken (=
// cuda::kNoBadToken) until an error is recorded; the caller sets them once (e.g. per pack) and
// reads them once with moe_check_bad, so a device needs no per-layer copy to the host:
//   [0] the smallest token with a non-finite router logit (moe_router_fwd, any layer);
//   [1] the smallest token with an expert id outside [0, E) (moe_permute without host offsets),
//   [2] that expert id.
// The CPU throws at once instead, and never writes the words.
constexpr int32_t kNoBadToken = 0x7f7f7f7f;
constexpr int64_t kMoeBadWords = 3;

// Router forward (spec 2.10; fp32 as Megatron's moe_router_dtype=fp32):
//   lse[n]     = log sum_e exp(logits[n,e])          (max-subtracted)
//   p[n,e]     = exp(logits[n,e] - lse[n])           softmax over all E experts
//   idx[n,:]   = the K experts of largest p, in descending p; equal p: lower expert id first
//   w[n,j]     = p[n, idx[n,j]] / sum_j' p[n, idx[n,j']]   (renormalised; = softmax over the
//                selected logits)
//   logits_NE [N, E] in (x W_gate^T);  probs_NE [N, E], lse_N [N], topk_idx_NK [N, K] (i32),
//   topk_w_NK [N, K] out, overwritten. Requires 0 < K <= E.
//   bad_3 [3] i32 inout or empty. CPU: a token with a non-finite logit throws core::Error
//   "moe_router_fwd: router logits of token n are not finite". CUDA: the smallest such token is
//   recorded in bad_3[0] (atomicMin: kept across calls, order-independent), its row gets p = 0,
//   lse = 0, idx = 0..K-1, w = 0 (as the CPU computes before throwing), and the error is raised
//   later by moe_permute with host offsets or by moe_check_bad.
// Saved for backward: probs_NE, lse_N, topk_idx_NK, topk_w_NK.
void moe_router_fwd(const core::View& logits_NE, int64_t N, int64_t E, int64_t K,
                    const core::View& probs_NE, const core::View& lse_N,
                    const core::View& topk_idx_NK, const core::View& topk_w_NK,
                    const core::View& bad_3);

// Throws the first recorded error of bad_3 ([3] i32, see above) with the text of the op that
// found it ("moe_router_fwd: router logits of token n are not finite", else "moe_permute: expert
// id e of token n is outside [0, E)"). One 12-byte copy to the host: SYNCS on CUDA.
void moe_check_bad(const core::View& bad_3, int64_t E);
// The same over words already on the host (bad_3_host [3]): throws the first recorded error, else
// returns.
void moe_fail_bad(const int32_t* bad_3_host, int64_t E);

// Router backward. Three optional incoming gradients, summed into dlogits:
//   from the routed path (dw = dL/dw[n,j]): only the selected logits receive gradient,
//     dlogits[n, idx[n,j]] += w[n,j] (dw[n,j] - sum_j' w[n,j'] dw[n,j'])
//   from the router losses through p (dprobs): dlogits[n,e] += p (dprobs[n,e] - sum_e' p dprobs)
//   from the router losses through lse (dlse):  dlogits[n,e] += dlse[n] p[n,e]
//   probs_NE, topk_idx_NK, topk_w_NK in (from moe_router_fwd).
//   dw_NK [N, K], dprobs_NE [N, E], dlse_N [N] in; each may be empty (= zero).
//   dlogits_NE [N, E] out, OVERWRITTEN.
void moe_router_bwd(const core::View& probs_NE, const core::View& topk_idx_NK,
                    const core::View& topk_w_NK, const core::View& dw_NK,
                    const core::View& dprobs_NE, const core::View& dlse_N, int64_t N, int64_t E,
                    int64_t K, const core::View& dlogits_NE);

// Expert-major permutation: offsets_E1 [E+1] i64 out on the ops' device (on the CPU: host
// memory, enough for grouped_linear); rows_P [N*K] i32 out; pos_NK [N*K] i32 out, the inverse
// (pos[rows_P[r]] = r). bad_3 [3] i32 (see above) or empty.
//   offsets_E1_host [E+1] host int64 out, or nullptr. CPU: when given, a copy of offsets_E1;
//   an out-of-range expert id or a token in bad_3[0] throws. CUDA with offsets_E1_host: SYNCS
//   to copy the offsets to the host (the grouped GEMMs' host-offset path), and throws as the
//   CPU. CUDA with nullptr: no host copy, no sync, no throw; an out-of-range expert id is
//   recorded in bad_3[1], [2] (required then), its slots left out of rows_P.
void moe_permute(const core::View& topk_idx_NK, int64_t N, int64_t K, int64_t E,
                 const core::View& bad_3, const core::View& offsets_E1, int64_t* offsets_E1_host,
                 const core::View& rows_P, const core::View& pos_NK);

// Gather the tokens of (a slice of) the permuted order, optionally scaled by the slot weight:
//   out[r,:] = s * x[rows[r] / K, :],  s = w_NK[rows[r]], or 1 when w_NK is empty.
//   x_ND [N*D] with N = x_ND.numel() / D;  rows_R [R] i32 in [0, N*K) (a slice of rows_P);
//   w_NK [N*K] f32 or empty;  out_RD [R*D] in x's dtype, overwritten.
void moe_gather(const core::View& x_ND, const core::View& rows_R, const core::View& w_NK, int64_t R,
                int64_t K, int64_t D, const core::View& out_RD);

// Combine all experts' rows into their tokens: per token, its K rows summed in ascending
// permuted row order (ascending expert id, HF's order), in fp32, starting from y when
// accumulating:
//   y[n,:] (= or +=) sum_j s_nj src[pos[n*K+j], :],  s = w_NK[n*K+j], or 1 when w_NK is empty.
// src_PD [N*K*D] activation dtype in; pos_NK [N*K] i32 in (moe_permute); w_NK [N*K] f32 or
// empty; y_ND [N*D] f32 or src's dtype, OVERWRITTEN or ACCUMULATED. The sum order does not depend
// on the thread count (bitwise cpu::moe_scatter_add per expert in ascending expert order).
void moe_scatter_add(const core::View& src_PD, const core::View& pos_NK, const core::View& w_NK,
                     int64_t N, int64_t K, int64_t D, const core::View& y_ND, bool accumulate);

// Backward of the slot weight on one expert's rows, given g = dy_gathered W_down (unweighted):
//   out = w * (h W_down^T)  =>  dw[rows[r]] = g[r,:] . h[r,:],  dh[r,:] = w[rows[r]] g[r,:]
//   h_RF [R*F] in (the expert's SwiGLU output), g_RF [R*F] in, one activation dtype;
//   rows_R [R] i32;  w_NK, dw_NK f32 of one size, a multiple of K.
//   dw_NK out: OVERWRITTEN at the slots of rows_R only;  dh_RF [R*F] out in h's dtype,
//   overwritten (may alias g_RF).
void moe_expert_weight_bwd(const core::View& h_RF, const core::View& g_RF, const core::View& rows_R,
                           const core::View& w_NK, int64_t R, int64_t K, int64_t F,
                           const core::View& dw_NK, const core::View& dh_RF);

// Shared-expert gate, one scalar per token broadcast over D:
//   y[t,:] += o[t,:] sigmoid(g[t])
//   o_ND [N*D] activation dtype in (shared expert output);  g_N [N] f32 in (x w_sg^T);
//   y_ND [N*D] f32 or o's dtype inout, ACCUMULATED.
// Saved for backward: o_ND, g_N.
void moe_shared_gate_fwd(const core::View& o_ND, const core::View& g_N, int64_t N, int64_t D,
                         const core::View& y_ND);

// Shared-expert gate backward:  do = dy sigmoid(g);  dg[t] = s (1 - s) sum_d dy[t,d] o[t,d].
//   o_ND, dy_ND, do_ND [N*D] one activation dtype (do OVERWRITTEN, may alias dy);
//   g_N, dg_N [N] f32 (dg OVERWRITTEN).
void moe_shared_gate_bwd(const core::View& o_ND, const core::View& g_N, const core::View& dy_ND,
                         int64_t N, int64_t D, const core::View& do_ND, const core::View& dg_N);

// Grouped expert GEMMs: rows [off[e], off[e+1]) of the permuted order times W[e] ([O, I] at
// W_EOI + e*O*I). off[0] = 0, non-decreasing; R = off[E] (host offsets) or x_RI.numel() / I.
//   fwd: y[r,:] = x[r,:] W[e]^T.  x_RI [R*I], W_EOI [E*O*I], y_RO [R*O], one activation dtype;
//        y overwritten.
//   bwd: dx[r,:] = dy[r,:] W[e] (x's dtype, OVERWRITTEN, or empty to skip);
//        dW[e] += dy_e^T x_e (f32, ACCUMULATED, or empty to skip).
// The offsets: offsets_E1 [E+1] i64 on the ops' device (from moe_permute) and offsets_E1_host
// [E+1] host int64 or nullptr, the same values.
//   With offsets_E1_host: R = off[E] (checked); offsets_E1 may be empty.
//   Without: CPU reads offsets_E1 (host memory; R = off[E], checked). CUDA runs the bf16
//   grouped kernel from the device offsets (no host copy, no sync; the offsets are trusted) with
//   R = x_RI.numel() / I rows at most (the views are sized for that bound, off[E] <= R; rows past
//   off[E] are not written); a shape it cannot run (grouped_linear_needs_host_offsets) is an
//   error. Bitwise the same results as with host offsets.
// CPU: one cpu::linear_* call per non-empty expert.
void grouped_linear_fwd(const core::View& x_RI, const core::View& W_EOI,
                        const core::View& offsets_E1, const int64_t* offsets_E1_host, int64_t E,
                        int64_t I, int64_t O, const core::View& y_RO);
// accumulate_dw false: dW_EOI is OVERWRITTEN (never read; an empty expert's slice = 0): the
// step's first write of the gradient (model::Params::g_target).
void grouped_linear_bwd(const core::View& x_RI, const core::View& W_EOI, const core::View& dy_RO,
                        const core::View& offsets_E1, const int64_t* offsets_E1_host, int64_t E,
                        int64_t I, int64_t O, const core::View& dx_RI, const core::View& dW_EOI,
                        bool accumulate_dw = true);

// Whether grouped_linear on `dev` with activation dtype dt and these I, O needs
// offsets_E1_host (so the caller must ask moe_permute for them). CPU: never (the offsets view is
// host memory). CUDA: unless the bf16 grouped kernel runs it (dt bf16, I and O positive
// multiples of 8); the fp32 debug mode and odd shapes use one cuBLASLt call per expert, which
// needs the offsets on the host.
bool grouped_linear_needs_host_offsets(core::Device dev, core::DType dt, int64_t I, int64_t O);

}  // namespace deltatron::ops
