// Contract for the router statistics and losses of MoE layers resident on the ops' device: route
// counts, token totals and loss sums are f64 views on that device, so the model never copies
// per-layer router data to the host (the CPU kernels are cpu/moe.h and cpu/router_loss.h).
//
// Shape suffixes: N tokens in the pack, E experts, K experts per token (top-k), G router-loss
// groups. Dtypes: probs_NE, lse_N and their gradients f32; topk_idx_NK, group_N i32; counts_GE,
// tokens_G, loss_1 f64 (counts exact below 2^53). Every tensor view of one call is on one device;
// views may be flat, their element counts are checked against the dimensions.
//
// Groups: group_N [N] i32, ids in [-1, G); -1 = padding, excluded from every statistic, loss and
// gradient. An empty view (core::View{}) means every token is in group 0.
// Recipes (model::make_router_terms; spec 4.2, 4.3), F = counts_GE, T_g = tokens_G[g]:
//   micro_batch aux: G = 1 (every real token), counts of this pack (zero, then moe_count_routes).
//   seq aux:         one group per packed sample, counts of this pack, seq_weight in numer.
//   global aux:      G = 1, counts and tokens accumulated over the step (running counts) with
//                    step_tokens = the step's real tokens, or final counts with step_tokens = 0.
//
// Bad ids: the CPU throws core::Error (before writing anything). CUDA cannot throw without a
// host synchronisation, so a bad id poisons the result with NaN instead: moe_count_routes makes
// every entry of counts_GE and tokens_G NaN (a group id outside [-1, G) or an expert id outside
// [0, E) anywhere in the call), the loss forwards add NaN to loss_1, and the backwards write a NaN
// row (aux: group id outside [-1, G) with G > 0; z: group id below -1).
//
// Determinism: the CPU sums serially in token order (as the cpu::moe_* kernels, bitwise); CUDA
// sums per token, then in a fixed tree (no float atomics): the same on every run, within a few
// ulps of the CPU. Counts and the backwards are bitwise equal on both devices.
#pragma once

#include <cstdint>

#include "core/view.h"

namespace deltatron::ops {

using core::View;

// Routing statistics, padding excluded:
//   counts_GE[g*E + e] += #{t : group_N[t] == g, e in topk_idx[t,:]};  tokens_G[g] += #{t : g}.
//   topk_idx_NK [N*K] i32 in (from moe_router_fwd);  group_N [N] i32 in (or empty);  G > 0.
//   counts_GE [G*E], tokens_G [G] f64 inout, ACCUMULATED (exactly: integer counts per call).
//   CUDA: no host synchronisation (integer counts in a scratch buffer, then added in order).
void moe_count_routes(const View& topk_idx_NK, const View& group_N, int64_t N, int64_t K, int64_t E,
                      int64_t G, const View& counts_GE, const View& tokens_G);

// Aux-loss coefficient of group g, in double, exactly as model::make_router_terms computes it:
//   T = tokens_G[g];  c_g = 0 if T <= 0, else numer / (k * T2),
//   T2 = step_tokens > 0 ? T * step_tokens : T * T   (running counts: T is the step so far).
// The caller passes numer = w * aux_coef * double(E) (w = seq_weight for seq aux, else 1),
// k = num_experts_per_tok and step_tokens (0 when the counts are the pack's or final).
struct AuxCoef {
  double numer = 0;
  double k = 1;
  double step_tokens = 0;
};

// Load-balancing loss (F and c constants: no gradient through the counts):
//   loss_1[0] += sum_g c_g sum_e F_ge sum_{t: group_N[t] == g} p[t,e],  F = counts_GE.
//   probs_NE [N*E] f32 in;  group_N [N] i32 in (or empty);  counts_GE [G*E], tokens_G [G] f64 in;
//   loss_1 [1] f64 inout, ACCUMULATED. G == 0 adds nothing. CUDA: no host synchronisation.
void moe_aux_loss_fwd(const View& probs_NE, const View& group_N, int64_t N, int64_t E, int64_t G,
                      const View& counts_GE, const View& tokens_G, const AuxCoef& coef,
                      const View& loss_1);

// Load-balancing loss backward:
//   dprobs[t,e] = float(scale * c_g * F_ge) for g = group_N[t] >= 0, else 0.
//   dprobs_NE [N*E] f32 out, OVERWRITTEN (all zero when G == 0). Bitwise equal on both devices.
void moe_aux_loss_bwd(const View& group_N, int64_t N, int64_t E, int64_t G, const View& counts_GE,
                      const View& tokens_G, const AuxCoef& coef, double scale,
                      const View& dprobs_NE);

// Router z-loss: loss_1[0] += z_coef * sum_{t: group_N[t] >= 0} lse[t]^2 (any 1/tokens mean is
// folded into z_coef by the caller). lse_N [N] f32 in (from moe_router_fwd); group_N [N] i32 in
// (or empty; ids >= -1);  loss_1 [1] f64 inout, ACCUMULATED. CUDA: no host synchronisation.
void moe_z_loss_fwd(const View& lse_N, const View& group_N, int64_t N, double z_coef,
                    const View& loss_1);

// z-loss backward: dlse[t] = float(scale * 2 * z_coef * lse[t]) for counted tokens, else 0.
//   dlse_N [N] f32 out, OVERWRITTEN. Bitwise equal on both devices.
void moe_z_loss_bwd(const View& lse_N, const View& group_N, int64_t N, double z_coef, double scale,
                    const View& dlse_N);

}  // namespace deltatron::ops
