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

// Value of bad_token_1 after moe_router_fwd when every row of logits is finite
// (cuda::kNoBadToken).
constexpr int32_t kNoBadToken = 0x7f7f7f7f;

// Router forward (spec 2.10; fp32 as Megatron's moe_router_dtype=fp32):
//   lse[n]     = log sum_e exp(logits[n,e])          (max-subtracted)
//   p[n,e]     = exp(logits[n,e] - lse[n])           softmax over all E experts
//   idx[n,:]   = the K experts of largest p, in descending p; equal p: lower expert id first
//   w[n,j]     = p[n, idx[n,j]] / sum_j' p[n, idx[n,j']]   (renormalised; = softmax over the
//                selected logits)
//   logits_NE [N, E] in (x W_gate^T);  probs_NE [N, E], lse_N [N], topk_idx_NK [N, K] (i32),
//   topk_w_NK [N, K] out, overwritten. Requires 0 < K <= E.
//   bad_token_1 [1] i32 out or empty: CUDA stores the smallest token with a non-finite logit there
//   (kNoBadToken when none) and moe_permute throws; the CPU throws here (core::Error
//   "moe_router_fwd: router logits of token n are not finite") and otherwise stores kNoBadToken.
// Saved for backward: probs_NE, lse_N, topk_idx_NK, topk_w_NK.
void moe_router_fwd(const core::View& logits_NE, int64_t N, int64_t E, int64_t K,
                    const core::View& probs_NE, const core::View& lse_N,
                    const core::View& topk_idx_NK, const core::View& topk_w_NK,
                    const core::View& bad_token_1);

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

// Expert-major permutation of the routing slots (deterministic: a stable counting sort):
//   rows_P[offsets[e] .. offsets[e+1]) = the slots n*K+j with idx[n,j] == e, ascending n;
//   pos_NK[rows_P[r]] = r (the inverse).
//   A token selects distinct experts, so the rows of one expert belong to distinct tokens.
//   topk_idx_NK [N*K] i32 in;  offsets_E1_host [E+1] host int64 out;  rows_P, pos_NK [N*K] i32
//   out.  bad_token_1 [1] i32 in (from moe_router_fwd) or empty: a token other than kNoBadToken
//   throws the router's error. SYNCS on CUDA.
void moe_permute(const core::View& topk_idx_NK, int64_t N, int64_t K, int64_t E,
                 const core::View& bad_token_1, int64_t* offsets_E1_host, const core::View& rows_P,
                 const core::View& pos_NK);

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
// element e*O*I of W_EOI). offsets_E1_host [E+1] host int64, off[0] = 0, non-decreasing;
// R = off[E].
//   fwd: y[r,:] = x[r,:] W[e]^T.  x_RI [R*I], W_EOI [E*O*I], y_RO [R*O], one activation dtype;
//        y overwritten.
//   bwd: dx[r,:] = dy[r,:] W[e] (x's dtype, OVERWRITTEN, or empty to skip);
//        dW[e] += dy_e^T x_e (f32, ACCUMULATED, or empty to skip).
// CPU: one cpu::linear_* call per non-empty expert.
void grouped_linear_fwd(const core::View& x_RI, const core::View& W_EOI,
                        const int64_t* offsets_E1_host, int64_t E, int64_t I, int64_t O,
                        const core::View& y_RO);
void grouped_linear_bwd(const core::View& x_RI, const core::View& W_EOI, const core::View& dy_RO,
                        const int64_t* offsets_E1_host, int64_t E, int64_t I, int64_t O,
                        const core::View& dx_RI, const core::View& dW_EOI);

}  // namespace deltatron::ops
