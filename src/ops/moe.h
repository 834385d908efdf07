// Contract for the Mixture-of-Experts op family: softmax top-k router, router losses (aux, z),
// the expert-major token permutation, and the shared expert's sigmoid gate (spec 2.10, 4).
//
// Shape suffixes: N tokens in the pack, D hidden, E experts, K experts per token (top-k),
// F FFN width, G router-loss groups, P = N*K routing slots in expert-major (permuted) order,
// R rows of one expert's slice [offsets[e], offsets[e+1]) of that order.
// A routing SLOT is n*K + j: the j-th choice of token n (j = 0 is the most probable expert).
// Contiguous row-major float32; expert ids and group ids int32; loss statistics in double.
// Groups: group_N[t] in [-1, G) says which router-loss group token t belongs to; -1 = padding,
// excluded from every statistic. group_N == nullptr means every token is in group 0.
// The expert FFNs themselves are ops::linear_* and ops::swiglu_* on gathered rows.
#pragma once

#include <cstdint>

#include "core/device.h"
#include "core/view.h"

namespace deltatron::ops {

// Router forward (spec 2.10; fp32 as Megatron's moe_router_dtype=fp32):
//   lse[n]     = log sum_e exp(logits[n,e])          (max-subtracted, summed in double)
//   p[n,e]     = exp(logits[n,e] - lse[n])           softmax over all E experts
//   idx[n,:]   = the K experts of largest p, in descending p; equal p: lower expert id first
//   w[n,j]     = p[n, idx[n,j]] / sum_j' p[n, idx[n,j']]   (renormalised; = softmax over the
//                selected logits)
//   logits_NE [N, E] in (x W_gate^T, every value finite, else core::Error)
//   probs_NE [N, E], lse_N [N], topk_idx_NK [N, K], topk_w_NK [N, K] out, overwritten.
//   Requires 0 < K <= E.  Saved for backward: probs_NE, lse_N, topk_idx_NK, topk_w_NK.
void moe_router_fwd(core::Device dev, const float* logits_NE, int64_t N, int64_t E, int64_t K,
                    float* probs_NE, float* lse_N, int32_t* topk_idx_NK, float* topk_w_NK);

// Router backward. Three optional incoming gradients, summed into dlogits:
//   from the routed path (dw = dL/dw[n,j]): only the selected logits receive gradient,
//     dlogits[n, idx[n,j]] += w[n,j] (dw[n,j] - sum_j' w[n,j'] dw[n,j'])
//   from the router losses through p (dprobs): dlogits[n,e] += p (dprobs[n,e] - sum_e' p dprobs)
//   from the router losses through lse (dlse):  dlogits[n,e] += dlse[n] p[n,e]
//   probs_NE, topk_idx_NK, topk_w_NK in (from moe_router_fwd).
//   dw_NK [N, K], dprobs_NE [N, E], dlse_N [N] in; each may be nullptr (= zero).
//   dlogits_NE [N, E] out, OVERWRITTEN.
void moe_router_bwd(core::Device dev, const float* probs_NE, const int32_t* topk_idx_NK,
                    const float* topk_w_NK, const float* dw_NK, const float* dprobs_NE,
                    const float* dlse_N, int64_t N, int64_t E, int64_t K, float* dlogits_NE);

// Load-balancing loss, the one primitive behind every variant (spec 4.2, 4.3):
//   L_aux = sum_g c_g sum_e F_ge sum_{t: group_N[t] == g} p[t,e]
//   F and c are constants (no gradient through routing counts). The driver picks them:
//   micro-batch aux: one group of all real tokens, F = top-k counts N_e, c = coeff E/(K T^2);
//   seq_aux: one group per sample; global aux: F = counts accumulated over the step.
//   probs_NE [N, E] in;  group_N [N] in (ids in [-1, G));  F_GE [G*E], c_G [G] in (double).
//   Returns L_aux in double (summed serially in token order). G == 0 returns 0.
double moe_aux_loss_fwd(core::Device dev, const float* probs_NE, const int32_t* group_N, int64_t N,
                        int64_t E, int64_t G, const double* F_GE, const double* c_G);

// Load-balancing loss backward: dprobs[t,e] = scale c_g F_ge for g = group_N[t] >= 0, else 0.
//   dprobs_NE [N, E] out, OVERWRITTEN (all zero when G == 0).
void moe_aux_loss_bwd(core::Device dev, const int32_t* group_N, int64_t N, int64_t E, int64_t G,
                      const double* F_GE, const double* c_G, double scale, float* dprobs_NE);

// Router z-loss (spec 4.2): L_z = z_coef sum_{t: group_N[t] >= 0} lse[t]^2. Any averaging
// (1 / number of valid tokens) is folded into z_coef by the caller.
//   lse_N [N] in (from moe_router_fwd);  group_N [N] in (ids >= -1).  Returns L_z in double.
double moe_z_loss_fwd(core::Device dev, const float* lse_N, const int32_t* group_N, int64_t N,
                      double z_coef);

// z-loss backward: dlse[t] = scale 2 z_coef lse[t] for counted tokens, else 0.
//   dlse_N [N] out, OVERWRITTEN.
void moe_z_loss_bwd(core::Device dev, const float* lse_N, const int32_t* group_N, int64_t N,
                    double z_coef, double scale, float* dlse_N);

// Routing statistics for the aux losses and expert-bias counts (padding excluded):
//   counts_GE[g*E + e] += #{t : group_N[t] == g, e in idx[t,:]};  tokens_G[g] += #{t in g}
//   topk_idx_NK [N, K] in;  group_N [N] in (ids in [-1, G), G > 0);
//   counts_GE [G*E], tokens_G [G] inout, ACCUMULATED (double; exact for counts below 2^53).
void moe_count_routes(core::Device dev, const int32_t* topk_idx_NK, const int32_t* group_N,
                      int64_t N, int64_t K, int64_t E, int64_t G, double* counts_GE,
                      double* tokens_G);

// Expert-major permutation of the routing slots (deterministic: a stable counting sort):
//   rows_P[offsets[e] .. offsets[e+1]) = the slots n*K+j with idx[n,j] == e, ascending n.
//   A token selects distinct experts, so the rows of one expert belong to distinct tokens.
//   topk_idx_NK [N, K] in;  offsets_E1 [E+1] out (int64);  rows_P [N*K] out (int32).
void moe_permute(core::Device dev, const int32_t* topk_idx_NK, int64_t N, int64_t K, int64_t E,
                 int64_t* offsets_E1, int32_t* rows_P);

// Gather the tokens of a slice of the permuted order, optionally scaled by the slot weight:
//   out[r,:] = s * x[rows[r] / K, :],  s = w_NK[rows[r]] when w_NK != nullptr, else 1.
//   x_ND [N, D] in;  rows_R [R] in (a slice of rows_P);  w_NK [N*K] in or nullptr;
//   out_RD [R, D] out, overwritten.
void moe_gather(core::Device dev, const float* x_ND, const int32_t* rows_R, const float* w_NK,
                int64_t R, int64_t K, int64_t D, float* out_RD);

// Scatter-add a slice back to its tokens: y[rows[r] / K, :] += s * src[r, :] (s as in gather).
//   The tokens of rows_R must be distinct (true for one expert's slice of moe_permute).
//   src_RD [R, D] in;  y_ND [N, D] inout, ACCUMULATED. Call once per expert in ascending expert
//   order for a sum order independent of the thread count (HF's order).
void moe_scatter_add(core::Device dev, const float* src_RD, const int32_t* rows_R,
                     const float* w_NK, int64_t R, int64_t K, int64_t D, float* y_ND);

// Backward of the slot weight on one expert's rows, given g = dy_gathered W_down (unweighted):
//   out = w * (h W_down^T)  =>  dw[rows[r]] = g[r,:] . h[r,:],  dh[r,:] = w[rows[r]] g[r,:]
//   h_RF [R, F] in (expert's SwiGLU output);  g_RF [R, F] in;  w_NK [N*K] in.
//   dw_NK [N*K] out: OVERWRITTEN at the slots of rows_R only;  dh_RF [R, F] out, overwritten
//   (may alias g_RF).
void moe_expert_weight_bwd(core::Device dev, const float* h_RF, const float* g_RF,
                           const int32_t* rows_R, const float* w_NK, int64_t R, int64_t K,
                           int64_t F, float* dw_NK, float* dh_RF);

// Shared-expert gate, one scalar per token broadcast over D:
//   y[t,:] += o[t,:] sigmoid(g[t])
//   o_ND [N, D] in (shared expert output);  g_N [N] in (x w_sg^T);  y_ND [N, D] inout, ACCUMULATED.
// Saved for backward: o_ND, g_N.
void moe_shared_gate_fwd(core::Device dev, const float* o_ND, const float* g_N, int64_t N,
                         int64_t D, float* y_ND);

// Shared-expert gate backward:  do = dy sigmoid(g);  dg[t] = s (1 - s) sum_d dy[t,d] o[t,d].
//   do_ND [N, D], dg_N [N] out, OVERWRITTEN (do_ND may alias dy_ND).
void moe_shared_gate_bwd(core::Device dev, const float* o_ND, const float* g_N, const float* dy_ND,
                         int64_t N, int64_t D, float* do_ND, float* dg_N);

// ---- device forms over views ---------------------------------------------------------------
// The same contracts on core::View arguments (docs/ops-views.md), one device per call, the
// signatures of cuda/moe.h and cuda/grouped_linear.h. Element types: router quantities (logits,
// probs, lse, top-k weights and their gradients, the shared-gate logit) f32; expert ids, rows and
// positions i32; token activations (x, gathered rows, expert outputs, their gradients) f32, or
// bf16 on CUDA, one dtype per call; outputs into the residual stream (y of moe_scatter_add and
// moe_shared_gate_fwd) f32 or the activation dtype; expert weight gradients f32. The CPU takes
// f32 only. An optional argument (nullptr in the CUDA header) is an empty view. Views may be
// flat: each is checked by element count.

// The MoE ops' error words, bad_3: [3] i32 on the ops' device, each kNoBadToken (=
// cuda::kNoBadToken) until an error is recorded; the caller sets them once (e.g. per pack) and
// reads them once with moe_check_bad, so a device needs no per-layer copy to the host:
//   [0] the smallest token with a non-finite router logit (moe_router_fwd, any layer);
//   [1] the smallest token with an expert id outside [0, E) (moe_permute without host offsets),
//   [2] that expert id.
// The CPU throws at once instead, and never writes the words.
constexpr int32_t kNoBadToken = 0x7f7f7f7f;
constexpr int64_t kMoeBadWords = 3;

// Router forward. bad_3 [3] i32 inout or empty. CPU: a token with a non-finite logit throws
// core::Error "moe_router_fwd: router logits of token n are not finite". CUDA: the smallest such
// token is recorded in bad_3[0] (atomicMin: kept across calls, order-independent), its row gets
// p = 0, lse = 0, idx = 0..K-1, w = 0 (as the CPU computes before throwing), and the error is
// raised later by moe_permute with host offsets or by moe_check_bad.
void moe_router_fwd(const core::View& logits_NE, int64_t N, int64_t E, int64_t K,
                    const core::View& probs_NE, const core::View& lse_N,
                    const core::View& topk_idx_NK, const core::View& topk_w_NK,
                    const core::View& bad_3);

// Throws the first recorded error of bad_3 ([3] i32, see above) with the text of the op that
// found it ("moe_router_fwd: router logits of token n are not finite", else "moe_permute: expert
// id e of token n is outside [0, E)"). One 12-byte copy to the host: SYNCS on CUDA.
void moe_check_bad(const core::View& bad_3, int64_t E);

// Router backward; dw_NK, dprobs_NE, dlse_N may each be empty (= zero). dlogits OVERWRITTEN.
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

// Gather: out[r,:] = s x[rows[r] / K, :], s = w_NK[rows[r]] or 1 (w_NK empty). x_ND [N*D] with
// N = x_ND.numel() / D; rows_R [R] i32 in [0, N*K); w_NK [N*K] f32 or empty; out_RD [R*D] in x's
// dtype, overwritten.
void moe_gather(const core::View& x_ND, const core::View& rows_R, const core::View& w_NK, int64_t R,
                int64_t K, int64_t D, const core::View& out_RD);

// Combine all experts' rows into their tokens: per token, its K rows summed in ascending
// permuted row order (ascending expert id), in fp32, starting from y when accumulating:
//   y[n,:] (= or +=) sum_j s_nj src[pos[n*K+j], :],  s = w_NK[n*K+j] or 1 (w_NK empty).
// src_PD [N*K*D] activation dtype in; pos_NK [N*K] i32 in (moe_permute); w_NK [N*K] f32 or
// empty; y_ND [N*D] f32 or src's dtype, overwritten or ACCUMULATED. Bitwise the per-expert
// host-pointer moe_scatter_add called in ascending expert order.
void moe_scatter_add(const core::View& src_PD, const core::View& pos_NK, const core::View& w_NK,
                     int64_t N, int64_t K, int64_t D, const core::View& y_ND, bool accumulate);

// Slot-weight backward: dw_NK[rows[r]] = g[r,:] . h[r,:];  dh[r,:] = w[rows[r]] g[r,:].
// h_RF, g_RF [R*F] activation dtype in; rows_R [R] i32; w_NK, dw_NK f32 of one size, a multiple
// of K; dw written at the slots of rows_R only; dh_RF [R*F] in h's dtype, overwritten (may alias
// g_RF).
void moe_expert_weight_bwd(const core::View& h_RF, const core::View& g_RF, const core::View& rows_R,
                           const core::View& w_NK, int64_t R, int64_t K, int64_t F,
                           const core::View& dw_NK, const core::View& dh_RF);

// Shared-expert gate: y[t,:] += o[t,:] sigmoid(g[t]). o_ND [N*D] activation dtype; g_N [N] f32;
// y_ND [N*D] f32 or o's dtype, ACCUMULATED.
void moe_shared_gate_fwd(const core::View& o_ND, const core::View& g_N, int64_t N, int64_t D,
                         const core::View& y_ND);

// Shared-expert gate backward: do = dy sigmoid(g); dg[t] = s (1 - s) sum_d dy[t,d] o[t,d].
// o_ND, dy_ND, do_ND [N*D] one activation dtype (do OVERWRITTEN, may alias dy); g_N, dg_N [N] f32
// (dg OVERWRITTEN).
void moe_shared_gate_bwd(const core::View& o_ND, const core::View& g_N, const core::View& dy_ND,
                         int64_t N, int64_t D, const core::View& do_ND, const core::View& dg_N);

// Grouped expert GEMMs: rows [off[e], off[e+1]) of the permuted order times W[e] ([O, I] at
// W_EOI + e*O*I). off[0] = 0, non-decreasing.
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
void grouped_linear_bwd(const core::View& x_RI, const core::View& W_EOI, const core::View& dy_RO,
                        const core::View& offsets_E1, const int64_t* offsets_E1_host, int64_t E,
                        int64_t I, int64_t O, const core::View& dx_RI, const core::View& dW_EOI);

// Whether grouped_linear on `dev` with activation dtype dt and these I, O needs
// offsets_E1_host (so the caller must ask moe_permute for them). CPU: never (the offsets view is
// host memory). CUDA: unless the bf16 grouped kernel runs it (dt bf16, I and O positive
// multiples of 8); the fp32 debug mode and odd shapes use one cuBLASLt call per expert, which
// needs the offsets on the host.
bool grouped_linear_needs_host_offsets(core::Device dev, core::DType dt, int64_t I, int64_t O);

}  // namespace deltatron::ops
