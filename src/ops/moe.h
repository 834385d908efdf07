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

}  // namespace deltatron::ops
