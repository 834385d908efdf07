// CUDA Mixture-of-Experts ops: router, router losses, expert-major permutation, gather/combine,
// slot-weight backward and shared-expert gate (the grouped expert GEMMs are in grouped_linear.h).
// Contracts as ops/moe.h, with storage types (cuda/dtype.h) and device pointers.
//
// Shape suffixes: N tokens, D hidden, E experts, K experts per token (top-k), F FFN width,
// G router-loss groups, I / O input / output features of an expert GEMM, P = N*K routing slots
// in expert-major (permuted) order, R rows of a slice of that order. Slot n*K + j = the j-th
// choice of token n. Row-major, contiguous.
//
// Storage: router logits, probs, lse, top-k weights, their gradients, the shared-gate logit and
// every router-loss quantity are fp32 (`float*`). Token activations (x, gathered rows, expert
// outputs and their gradients) are stored in `dt` (bf16, or f32 in the debug mode of the same
// kernels) and passed as `void*`; a few outputs name their own DType (e.g. y into the fp32
// residual stream). Arithmetic is fp32; fp64 where the CPU reference uses double (loss sums,
// route counts). Expert ids, group ids and row indices are int32.
// Pointers are device memory unless the name ends in `_host`. Work is queued on the legacy
// default stream and is asynchronous, except the functions marked SYNCS, which wait for the
// device because they return host values (each such copy is counted by
// cuda::device_to_host_copies, cuda/memory.h). Results are bitwise deterministic: no float atomics,
// every sum has a fixed order (integer atomics only where the result is order-independent).
// Groups: group_N[t] in [-1, G), -1 = padding (excluded from every statistic); group_N ==
// nullptr means every token is in group 0.
#pragma once

#include <cstdint>

#include "cuda/dtype.h"

namespace deltatron::cuda {

// ---- router (fp32) -------------------------------------------------------------------------

// Value of *bad_token_1 after moe_router_fwd when every row of logits is finite.
constexpr int32_t kNoBadToken = 0x7f7f7f7f;

// Router forward, same contract as ops::moe_router_fwd:
//   lse[n] = logsumexp_e logits[n,e];  p = exp(logits - lse);  idx[n,:] = the K largest p,
//   descending, equal p: lower expert id first;  w[n,j] = p[idx[n,j]] / sum_j' p[idx[n,j']].
//   logits_NE [N, E] fp32 in;  probs_NE [N, E], lse_N [N], topk_w_NK [N, K] fp32 out;
//   topk_idx_NK [N, K] int32 out; all overwritten. Requires 0 < K <= E.
//   bad_token_1 [1] int32 inout (nullptr: unchecked), ACCUMULATED: the CPU throws on a
//   non-finite logit, which the device cannot do without a sync, so the smallest such token is
//   recorded here with an integer atomicMin (order-independent; the caller initialises the word
//   to kNoBadToken, e.g. once per pack, so one word collects every layer's router). moe_permute
//   with host offsets throws the CPU's error from it; the model reads it once per pack
//   (ops::moe_check_bad). A bad row gets p = 0, lse = 0, idx = 0..K-1, w = 0, as on the CPU.
//   One warp per token: softmax sums and the K arg-max passes are warp reductions (fixed order).
void moe_router_fwd(const float* logits_NE, int64_t N, int64_t E, int64_t K, float* probs_NE,
                    float* lse_N, int32_t* topk_idx_NK, float* topk_w_NK, int32_t* bad_token_1);

// Router backward, same contract as ops::moe_router_bwd (all fp32):
//   dlogits = [routed] w (dw - sum w dw) at the selected logits + [losses] p (dprobs - sum p
//   dprobs)
//             + dlse p.  dw_NK, dprobs_NE, dlse_N may each be nullptr (= zero).
//   dlogits_NE [N, E] out, OVERWRITTEN. A row with an expert id outside [0, E) gets NaN.
void moe_router_bwd(const float* probs_NE, const int32_t* topk_idx_NK, const float* topk_w_NK,
                    const float* dw_NK, const float* dprobs_NE, const float* dlse_N, int64_t N,
                    int64_t E, int64_t K, float* dlogits_NE);

// ---- router losses and statistics ----------------------------------------------------------

// L_aux = sum_g c_g sum_e F_ge sum_{t: group_N[t] == g} p[t,e]  (ops::moe_aux_loss_fwd). SYNCS.
//   probs_NE [N, E] fp32 in;  group_N [N] int32 in (or nullptr);  F_GE_host [G*E], c_G_host [G]
//   host doubles. Per-token sums in double, then a fixed-order tree over tokens. G == 0
//   returns 0. A group id outside [-1, G) throws core::Error (as the CPU).
double moe_aux_loss_fwd(const float* probs_NE, const int32_t* group_N, int64_t N, int64_t E,
                        int64_t G, const double* F_GE_host, const double* c_G_host);

// dprobs[t,e] = float(scale c_g F_ge) for g = group_N[t] >= 0, else 0  (ops::moe_aux_loss_bwd).
//   dprobs_NE [N, E] fp32 out, OVERWRITTEN (zero when G == 0). Asynchronous: F and c are copied
//   to a device staging buffer in stream order. A group id outside [-1, G) gives a NaN row.
void moe_aux_loss_bwd(const int32_t* group_N, int64_t N, int64_t E, int64_t G,
                      const double* F_GE_host, const double* c_G_host, double scale,
                      float* dprobs_NE);

// L_z = z_coef sum_{t: group_N[t] >= 0} lse[t]^2, summed in double  (ops::moe_z_loss_fwd).
//   SYNCS. lse_N [N] fp32 in. A group id below -1 throws core::Error.
double moe_z_loss_fwd(const float* lse_N, const int32_t* group_N, int64_t N, double z_coef);

// dlse[t] = float(scale 2 z_coef lse[t]) for counted tokens, else 0  (ops::moe_z_loss_bwd).
//   dlse_N [N] fp32 out, OVERWRITTEN. A group id below -1 gives NaN.
void moe_z_loss_bwd(const float* lse_N, const int32_t* group_N, int64_t N, double z_coef,
                    double scale, float* dlse_N);

// Routing statistics into host accumulators (ops::moe_count_routes), padding excluded. SYNCS.
// The device-resident form, without a sync, is cuda::moe_count_routes (cuda/router_loss.h).
//   counts_GE_host[g*E + e] += #{t : group_N[t] == g, e in idx[t,:]};  tokens_G_host[g] += #{t in
//   g} topk_idx_NK [N, K] int32 in;  group_N [N] int32 in (or nullptr);  G > 0. counts_GE_host
//   [G*E], tokens_G_host [G] host doubles inout, ACCUMULATED. Counted with integer atomics (exact,
//   order-independent). An id out of range throws core::Error before anything is accumulated.
void moe_count_routes_to_host(const int32_t* topk_idx_NK, const int32_t* group_N, int64_t N,
                              int64_t K, int64_t E, int64_t G, double* counts_GE_host,
                              double* tokens_G_host);

// ---- permutation, gather, combine -----------------------------------------------------------

// Expert-major permutation of the routing slots (ops::moe_permute), a stable counting sort:
//   rows_P[off[e] .. off[e+1]) = the slots n*K+j with idx[n,j] == e, ascending slot order;
//   pos_NK[rows_P[r]] = r (the inverse permutation, used by moe_scatter_add).
//   topk_idx_NK [N, K] int32 in;  rows_P [N*K], pos_NK [N*K] int32 out, overwritten.
//   offsets_E1 [E+1] int64 device out (may be nullptr only with offsets_E1_host).
//   bad_3 [3] int32 (or nullptr with offsets_E1_host): the per-pack error words of the MoE
//   ops (ops/moe.h): [0] the router's smallest token with non-finite logits (moe_router_fwd),
//   [1] the smallest token with an expert id outside [0, E), [2] that id.
//   With offsets_E1_host [E+1] (host int64 out): SYNCS to copy the offsets (the per-expert
//   cuBLASLt loop of grouped_linear needs them) and throws core::Error when bad_3[0] names a
//   token or an expert id is outside [0, E) (bad_3 not written).
//   With offsets_E1_host == nullptr: no host copy and no sync; this call's smallest bad token is
//   merged into bad_3[1], [2] in stream order (kept when not smaller than the one recorded), its
//   slots are left out of rows_P (rows_P and pos_NK are zeroed first, so every index stays in
//   range) and the caller checks the words later.
//   Needs E <= 12288. Kernels: per-chunk expert counts (256 slots a block, shared-memory
//   histogram), per-expert exclusive scan over chunks, scan over experts (which also merges the
//   error words), then each slot's rank among the earlier slots of its chunk with the same
//   expert.
void moe_permute(const int32_t* topk_idx_NK, int64_t N, int64_t K, int64_t E, int32_t* bad_3,
                 int64_t* offsets_E1, int64_t* offsets_E1_host, int32_t* rows_P, int32_t* pos_NK);

// Gather (ops::moe_gather): out[r,:] = s x[rows[r] / K, :], s = w_NK[rows[r]] or 1 (nullptr).
//   x_ND [N, D] dt in;  rows_R [R] int32 in;  w_NK [N*K] fp32 in or nullptr;
//   out_RD [R, D] dt out, overwritten.
void moe_gather(DType dt, const void* x_ND, const int32_t* rows_R, const float* w_NK, int64_t R,
                int64_t K, int64_t D, void* out_RD);

// Combine the expert rows back into their tokens (ops::moe_scatter_add over all experts at
// once), without atomics: one block per token sums its K rows in ascending permuted row, i.e.
// ascending expert id (the CPU's and HF's order), in fp32, starting from y when accumulating:
//   y[n,:] (= or += when accumulate) sum_j s_nj src[pos[n*K+j], :],  s = w_NK[n*K+j] or 1.
//   src_PD [N*K, D] dt_src in (rows in permuted order);  pos_NK [N*K] int32 in (moe_permute);
//   w_NK [N*K] fp32 in or nullptr;  y_ND [N, D] in `dt_y` (e.g. f32 for the residual stream),
//   overwritten or ACCUMULATED. Needs K <= 64.
void moe_scatter_add(DType dt_src, const void* src_PD, const int32_t* pos_NK, const float* w_NK,
                     int64_t N, int64_t K, int64_t D, DType dt_y, void* y_ND, bool accumulate);

// Slot-weight backward on expert rows (ops::moe_expert_weight_bwd):
//   dw_NK[rows[r]] = g[r,:] . h[r,:] (fp32, fixed-order warp reduction);  dh[r,:] = w[rows[r]]
//   g[r,:] h_RF, g_RF [R, F] dt in;  rows_R [R] int32 in;  w_NK [N*K] fp32 in; dw_NK fp32 out at
//   the slots of rows_R only;  dh_RF [R, F] dt out, overwritten (may alias g_RF).
void moe_expert_weight_bwd(DType dt, const void* h_RF, const void* g_RF, const int32_t* rows_R,
                           const float* w_NK, int64_t R, int64_t K, int64_t F, float* dw_NK,
                           void* dh_RF);

// ---- shared-expert gate ----------------------------------------------------------------------

// y[t,:] += o[t,:] sigmoid(g[t])  (ops::moe_shared_gate_fwd).
//   o_ND [N, D] dt in;  g_N [N] fp32 in (x w_sg^T, from linear_fwd with fp32 output);
//   y_ND [N, D] in `dt_y`, ACCUMULATED.
void moe_shared_gate_fwd(DType dt, const void* o_ND, const float* g_N, int64_t N, int64_t D,
                         DType dt_y, void* y_ND);

// do = dy sigmoid(g);  dg[t] = s (1 - s) sum_d dy[t,d] o[t,d]  (ops::moe_shared_gate_bwd).
//   o_ND, dy_ND [N, D] dt in;  g_N [N] fp32 in;  do_ND [N, D] dt out, OVERWRITTEN (may alias
//   dy_ND);  dg_N [N] fp32 out, OVERWRITTEN. One block per token, fixed-order block reduction.
void moe_shared_gate_bwd(DType dt, const void* o_ND, const float* g_N, const void* dy_ND, int64_t N,
                         int64_t D, void* do_ND, float* dg_N);

}  // namespace deltatron::cuda
