// Sparse Mixture-of-Experts feed-forward block (Qwen3.5-MoE `mlp`): f32 router, expert-sorted
// token rows, grouped expert GEMMs, shared expert; router losses on the device.
//
// Legend: N tokens, D hidden, E num_experts, K num_experts_per_tok, F moe_intermediate_size,
// S shared_expert_intermediate_size (shared expert present iff S > 0), P = N*K routing slots in
// expert-major order (see ops::moe_permute).
// Forward (spec 2.10), parameters under prefix "...mlp.":
//   logits = x gate.weight^T [N, E] (f32, on the f32 master weight: Megatron's fp32 router);
//   p = softmax(logits); top-k of p (ties: lower id); w = p_sel / sum p_sel;
//   gate_e, up_e = rows [0,F), [F,2F) of experts.gate_up_proj[e]
//   routed = sum_{e in top-k} w_e down_proj[e] (silu(gate_e x) * up_e x)
//   shared = sigmoid(x shared_expert_gate^T) shared_expert.down(silu(gate_s x) * up_s x)
//   y = routed + shared   (routed summed in ascending expert order, then shared: HF's order)
// Router losses (spec 4.2, 4.3), one primitive for every variant (ops/router_loss.h):
//   L_aux = sum_g c_g sum_e F_ge sum_{t: group_N[t] == g} p_te   (F, c constants)
//   L_z   = z_coef sum_{t: group_N[t] >= 0} lse_t^2,  lse_t = logsumexp_e logits_te
#pragma once

#include <string>
#include <vector>

#include "model/context.h"
#include "model/router_loss.h"

namespace deltatron::model {

struct ModelOptions;

// The block's sizes (legend above) for the pack in cx; F and S this rank's share under tensor
// parallelism (model/tensor_parallel.h).
struct MoeDims {
  int64_t N, D, E, K, F, S, P;
  explicit MoeDims(const Ctx& cx)
      : N(cx.N()),
        D(cx.c.hidden_size),
        E(cx.c.num_experts),
        K(cx.c.num_experts_per_tok),
        F(cx.local(cx.c.moe_intermediate_size)),
        S(cx.local(cx.c.shared_expert_intermediate_size)),
        P(cx.N() * cx.c.num_experts_per_tok) {}
};

struct MoeSaved {
  View x;
  Buffer probs, lse, topk_idx, topk_w;  // router (f32; topk_idx i32); the logits are not kept
  Buffer offsets;                       // i64 [E+1]: expert e owns rows [off[e], off[e+1])
  std::vector<int64_t> offsets_host;    // the same on the host, only where the grouped GEMMs need
                                        // them (ops::grouped_linear_needs_host_offsets), else empty
  Buffer rows_P, pos;                   // permuted row -> slot n*K + j, and its inverse (i32)
  Buffer gate, up;                      // routed expert pre-activations (dt; with expert
                                        // parallelism the owner's rows, [ep.R, F])
  Buffer sgate, sup, sout, slogit;      // shared expert (dt; slogit f32)
  // Expert parallelism (model/expert_parallel.h): this layer's exchange, the owner's side.
  struct Ep {
    std::vector<int64_t> send_rows, recv_rows;  // rows to / from each rank of the group
    std::vector<int64_t> loff_host;             // [El + 1] local expert offsets, expert-major
    Buffer loff;                                // i64, the same on the device
    Buffer perm, inv;  // i32 [R]: expert-major row j is received row perm[j]; inv its inverse
    Buffer iota;       // i32 [R]: 0, 1, ..., R - 1
    Buffer xe, we;     // the received rows, expert-major (dt [R, D]) and their slot weights (f32)
    int64_t R = 0;
  } ep;
  // This layer's router-loss terms, attached by add_router_terms after the forward (kept when
  // a recomputed forward replaces the activations).
  RouterTerms terms;
  bool has_terms = false;
  double loss_scale = 1.0;
};

// resid_ND (f32) += MoE(x_ND); dx_ND (dt) overwritten. Router-loss gradients (if s.has_terms)
// enter the router logits' gradient, scaled by s.loss_scale. Tensor parallel: x_ND and dy_ND are
// every token's (gathered with sp), resid this rank's rows (Nl); the routed and shared outputs are
// this rank's partial sums, summed over the group in one exchange (tp_sum_into); dx_ND is this
// rank's partial input gradient (the layer sums it), and the router losses' gradient enters on
// the group's rank 0 alone (every rank routes identically; the sum counts it once).
void moe_fwd(const Ctx& cx, const std::string& prefix, const View& x_ND, const View& resid_ND,
             MoeSaved& s);
void moe_bwd(const Ctx& cx, const std::string& prefix, const MoeSaved& s, const View& dy_ND,
             const View& dx_ND);
// Throws the first MoE error the pack's forward recorded on the device (cx.b.moe_bad: a
// non-finite router logit, a bad expert id), with the text the CPU throws at once. One small
// copy to the host; call once per pack, after the forward. No-op for dense models.
// step_scalars (a training step's core::StepScalars, model::ModelOptions): no copy; the words go
// into the step's (ops::step_moe_errors), whose end throws them.
void check_moe_errors(const Ctx& cx, const View& step_scalars = {});
// Adds the saved routing's top-k counts over the pack's real tokens to `counts`.
void moe_count(const Ctx& cx, const std::string& prefix, const MoeSaved& s,
               GlobalRouterCounts& counts);
// Builds the layer's router-loss terms (running global counts included) and adds the layer's
// loss to loss_1 (f64 [1] on the device). No-op for dense models or inactive losses.
void add_router_terms(const Ctx& cx, const ModelOptions& opt, const std::string& prefix,
                      MoeSaved& s, const View& loss_1);

}  // namespace deltatron::model
