// CPU reference for the MoE op family: router, router losses, token permutation, shared gate.
#pragma once

#include <cstdint>

namespace deltatron::cpu {

// Legend: N tokens, D hidden, E experts, K experts per token (top-k), F FFN width, G loss groups,
// R rows of one expert's slice of the permuted order. Contracts: src/ops/moe.h.

// probs = softmax(logits), lse = logsumexp(logits), top-k of probs (descending, ties to the lower
// expert index), weights = renormalised selected probs. All outputs overwritten.
template <typename T>
void moe_router_fwd(const T* logits_NE, int64_t N, int64_t E, int64_t K, T* probs_NE, T* lse_N,
                    int32_t* topk_idx_NK, T* topk_w_NK);

// dlogits (overwritten) from d topk weights (softmax over the selected logits), plus optional
// d probs (softmax over all logits) and d lse (gradient p).
template <typename T>
void moe_router_bwd(const T* probs_NE, const int32_t* topk_idx_NK, const T* topk_w_NK,
                    const T* dw_NK, const T* dprobs_NE, const T* dlse_N, int64_t N, int64_t E,
                    int64_t K, T* dlogits_NE);

// sum_g c_g sum_e F_ge sum_{t: group_N[t] == g} p_te, summed in double.
template <typename T>
double moe_aux_loss_fwd(const T* probs_NE, const int32_t* group_N, int64_t N, int64_t E, int64_t G,
                        const double* F_GE, const double* c_G);

// dprobs[t,e] = scale * c_g * F_ge for g = group_N[t] >= 0, else 0 (overwritten).
template <typename T>
void moe_aux_loss_bwd(const int32_t* group_N, int64_t N, int64_t E, int64_t G, const double* F_GE,
                      const double* c_G, double scale, T* dprobs_NE);

// z_coef * sum_{t: group_N[t] >= 0} lse_t^2, summed in double.
template <typename T>
double moe_z_loss_fwd(const T* lse_N, const int32_t* group_N, int64_t N, double z_coef);

// dlse[t] = scale * 2 z_coef lse_t for counted tokens, else 0 (overwritten).
template <typename T>
void moe_z_loss_bwd(const T* lse_N, const int32_t* group_N, int64_t N, double z_coef, double scale,
                    T* dlse_N);

// counts_GE[g*E+e] += #{t in g selecting e}; tokens_G[g] += #{t in g} (not templated: integer
// routing decisions only).
void moe_count_routes(const int32_t* topk_idx_NK, const int32_t* group_N, int64_t N, int64_t K,
                      int64_t E, int64_t G, double* counts_GE, double* tokens_G);

// Expert-major permutation of the N*K routing slots, ascending token order inside an expert.
void moe_permute(const int32_t* topk_idx_NK, int64_t N, int64_t K, int64_t E, int64_t* offsets_E1,
                 int32_t* rows_P);

// out[r] = (w_NK ? w_NK[rows[r]] : 1) * x[rows[r] / K] (overwritten).
template <typename T>
void moe_gather(const T* x_ND, const int32_t* rows_R, const T* w_NK, int64_t R, int64_t K,
                int64_t D, T* out_RD);

// y[rows[r] / K] += (w_NK ? w_NK[rows[r]] : 1) * src[r]; tokens of rows_R must be distinct.
template <typename T>
void moe_scatter_add(const T* src_RD, const int32_t* rows_R, const T* w_NK, int64_t R, int64_t K,
                     int64_t D, T* y_ND);

// Combine over all experts: per token n, acc = (accumulate ? y[n] : 0), then for its K rows in
// ascending permuted row order acc += (w_NK ? w_NK[n*K+j] : 1) * src[pos[n*K+j]]; y[n] = acc.
// The same sums as moe_scatter_add once per expert in ascending expert order (bitwise).
template <typename T>
void moe_scatter_add(const T* src_PD, const int32_t* pos_NK, const T* w_NK, int64_t N, int64_t K,
                     int64_t D, T* y_ND, bool accumulate);

// dw_NK[rows[r]] = g[r] . h[r] (overwritten at those slots); dh[r] = w_NK[rows[r]] * g[r].
template <typename T>
void moe_expert_weight_bwd(const T* h_RF, const T* g_RF, const int32_t* rows_R, const T* w_NK,
                           int64_t R, int64_t K, int64_t F, T* dw_NK, T* dh_RF);

// y[t,:] += o[t,:] * sigmoid(g[t]) (accumulated).
template <typename T>
void moe_shared_gate_fwd(const T* o_ND, const T* g_N, int64_t N, int64_t D, T* y_ND);

// do = dy * sigmoid(g); dg[t] = sigmoid'(g_t) sum_d dy[t,d] o[t,d] (both overwritten).
template <typename T>
void moe_shared_gate_bwd(const T* o_ND, const T* g_N, const T* dy_ND, int64_t N, int64_t D,
                         T* do_ND, T* dg_N);

}  // namespace deltatron::cpu
