// CUDA router statistics and losses resident on the device (ops/router_loss.h): route counts,
// token totals and loss sums are f64 device memory, and no function waits for the device.
// Device-pointer overloads of the cuda/moe.h loss names (whose host-coefficient forms, SYNCS,
// serve the older tests; the host-accumulator route count is
// cuda::moe_count_routes_to_host there). moe_z_loss_bwd is cuda/moe.h's, already asynchronous.
//
// Shape suffixes: N tokens, E experts, K experts per token, G router-loss groups. Row-major,
// contiguous. probs_NE, lse_N, dprobs_NE fp32; topk_idx_NK, group_N int32 (group_N == nullptr:
// every token in group 0; -1 = padding, excluded); counts_GE, tokens_G, loss_1 double.
// Every pointer is device memory. Work is queued on the legacy default stream and is asynchronous
// (a scratch buffer reused across calls; growing it, on the first calls, waits for the device).
// Results are bitwise deterministic: integer atomics only for counts, every float sum in a fixed
// order. Bad ids cannot throw without a sync, so they give NaN (documented per function).
// Aux coefficient of group g (model::make_router_terms, evaluated in the same order):
//   c_g = 0 if T_g <= 0, else numer / (k * T2),  T2 = step_tokens > 0 ? T_g step_tokens : T_g^2,
//   T_g = tokens_G[g], read on the device.
#pragma once

#include <cstdint>

namespace deltatron::cuda {

// counts_GE[g*E + e] += #{t : group_N[t] == g, e in idx[t,:]};  tokens_G[g] += #{t in g}.
//   topk_idx_NK [N*K] int32 in;  G > 0;  counts_GE [G*E], tokens_G [G] double inout, ACCUMULATED
//   (exact). Integer counts per call (64-bit integer atomics into scratch: order-independent),
//   then one kernel adds them to the accumulators. A group id outside [-1, G) or an expert id
//   outside [0, E) makes every entry of counts_GE and tokens_G NaN.
void moe_count_routes(const int32_t* topk_idx_NK, const int32_t* group_N, int64_t N, int64_t K,
                      int64_t E, int64_t G, double* counts_GE, double* tokens_G);

// loss_1[0] += sum_g c_g sum_e F_ge sum_{t: group_N[t] == g} p[t,e],  F = counts_GE.
//   probs_NE [N*E] fp32 in;  counts_GE [G*E], tokens_G [G] double in;  loss_1 [1] double inout.
//   One warp per token: contrib[t] = c_g (sum_e F_ge p_te) (double; lanes stride e, xor-butterfly
//   warp sum), then one block adds the contributions in a fixed tree to loss_1. G == 0 or N == 0
//   adds nothing. A group id outside [-1, G) adds NaN.
void moe_aux_loss_fwd(const float* probs_NE, const int32_t* group_N, int64_t N, int64_t E,
                      int64_t G, const double* counts_GE, const double* tokens_G, double numer,
                      double k, double step_tokens, double* loss_1);

// dprobs[t,e] = float(scale * c_g * F_ge) for g = group_N[t] >= 0, else 0: the CPU's double
// expression, so bitwise equal to it. dprobs_NE [N*E] fp32 out, OVERWRITTEN (zero when G == 0).
//   One thread per element. A group id outside [-1, G) (G > 0) gives a NaN row.
void moe_aux_loss_bwd(const int32_t* group_N, int64_t N, int64_t E, int64_t G,
                      const double* counts_GE, const double* tokens_G, double numer, double k,
                      double step_tokens, double scale, float* dprobs_NE);

// loss_1[0] += z_coef * sum_{t: group_N[t] >= 0} lse[t]^2 (per-token squares in double, then a
// fixed tree in one block). lse_N [N] fp32 in;  loss_1 [1] double inout. A group id below -1
// adds NaN. N == 0 adds nothing.
void moe_z_loss_fwd(const float* lse_N, const int32_t* group_N, int64_t N, double z_coef,
                    double* loss_1);

}  // namespace deltatron::cuda
