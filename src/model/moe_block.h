// Sparse Mixture-of-Experts feed-forward block (Qwen3.5-MoE `mlp`): explicit forward, backward
// and router losses.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/device.h"
#include "model/config.h"
#include "model/weights.h"

namespace deltatron::model {

// Legend: N tokens, D hidden, E num_experts, K num_experts_per_tok, F moe_intermediate_size,
// S shared_expert_intermediate_size (shared expert present iff S > 0), G router-loss groups,
// P = N*K routing slots in expert-major order (see ops::moe_permute).
//
// Forward (spec 2.10), parameters under prefix "...mlp.":
//   logits = x gate.weight^T [N, E] (fp32);  p = softmax(logits);  top-k of p (ties: lower id)
//   w = p_sel / sum p_sel;  gate_e, up_e = rows [0,F), [F,2F) of experts.gate_up_proj[e]
//   routed = sum_{e in top-k} w_e down_proj[e] (silu(gate_e x) * up_e x)
//   shared = sigmoid(x shared_expert_gate^T) shared_expert.down(silu(gate_s x) * up_s x)
//   y = routed + shared   (routed summed in ascending expert order, then shared: HF's order)
//
// Router losses (spec 4.2, 4.3), one primitive for every variant:
//   L_aux = sum_g c_g sum_e F_ge sum_{t: group_N[t] == g} p_te   (F, c constants)
//   L_z   = z_coef sum_{t: group_N[t] >= 0} lse_t^2,  lse_t = logsumexp_e logits_te
// The driver fills RouterLossTerms per MoE layer and pack; see ops/moe.h for the recipes
// (micro-batch aux, seq_aux, global aux). Padding tokens get group -1: they are excluded from
// every statistic. Real tokens without a label still count (padding mask != loss mask).
struct RouterLossTerms {
  std::vector<int32_t> group_N;   // [N] ids in [-1, num_groups); empty = every token in group 0
  int64_t num_groups = 0;         // 0 = no L_aux
  std::vector<double> F_GE, c_G;  // [num_groups*E], [num_groups]
  double z_coef = 0;              // 0 = no L_z
};

struct MoeSaved {
  int64_t N = 0, E = 0, K = 0;
  std::vector<float> x_ND;                           // block input
  std::vector<float> logits_NE, probs_NE, lse_N;     // router (logits kept for the driver)
  std::vector<int32_t> topk_idx_NK;                  // selected experts, descending p
  std::vector<float> topk_w_NK;                      // renormalised weights
  std::vector<int64_t> offsets_E1;                   // expert e owns rows [off[e], off[e+1])
  std::vector<int32_t> rows_P;                       // permuted row -> slot n*K + j
  std::vector<float> gate_PF, up_PF;                 // routed expert pre-activations
  std::vector<float> shared_gate_NS, shared_up_NS;   // shared expert pre-activations
  std::vector<float> shared_out_ND, shared_logit_N;  // shared expert output and gate logit
};

struct MoeBlock {
  std::string prefix;  // e.g. "model.layers.3.mlp." or "mtp.layers.0.mlp."

  // y_ND [N, D] is overwritten (it may alias x_ND).
  void fwd(core::Device dev, const Config& c, const TensorMap& params, int64_t N, const float* x_ND,
           float* y_ND, MoeSaved& s) const;

  // Top-k assignment counts of the saved routing, padding (group -1) excluded:
  //   counts_GE[g*E + e] += #{t : group_N[t] == g, t selected e};  tokens_G[g] += #{t in g}.
  // Empty group_N = every token in group 0. Empty counts_GE / tokens_G are sized and zeroed
  // first; otherwise they must have num_groups*E / num_groups entries.
  static void count_routes(const MoeSaved& s, const std::vector<int32_t>& group_N,
                           int64_t num_groups, int64_t E, std::vector<double>& counts_GE,
                           std::vector<double>& tokens_G);

  // L_aux + L_z of the saved router outputs (double; host computation of the saved state).
  double router_loss(const MoeSaved& s, const RouterLossTerms& t) const;

  // dx_ND [N, D] is overwritten (must not alias dy_ND); parameter gradients accumulate into
  // grads. terms == nullptr: no router loss; otherwise the gradients of L_aux + L_z, multiplied
  // by loss_scale, are added to the router logits' gradient.
  void bwd(core::Device dev, const Config& c, const TensorMap& params, TensorMap& grads, int64_t N,
           const MoeSaved& s, const float* dy_ND, const RouterLossTerms* terms, double loss_scale,
           float* dx_ND) const;
};

}  // namespace deltatron::model
