// Sparse MoE feed-forward block: routed experts on gathered rows, shared expert, router losses.
//
// Experts run one after another in ascending id, each as BLAS GEMMs on its gathered rows
// (ops::linear_*, ops::swiglu_*), and scatter-add into the tokens in that order, so every sum has
// a fixed order whatever the thread count.
//
// Backward of one expert e on its rows (x_e gathered inputs, dy_e gathered output gradients,
// w the slot weights, h = silu(gate) * up, out = h Wd_e^T, y += w out):
//   g       = dy_e Wd_e                    (unweighted)
//   dWd_e  += (w dy_e)^T h
//   dw      = g . h   per row              (-> router through the renormalised weights)
//   dh      = w g;  dgate, dup = swiglu_bwd;  dx_e = dgate Wg_e + dup Wu_e;  dW{g,u}_e += ...
#include "model/moe_block.h"

#include <algorithm>

#include "core/error.h"
#include "ops/activation.h"
#include "ops/linear.h"
#include "ops/moe.h"

namespace deltatron::model {

namespace {

struct Dims {
  int64_t D, E, K, F, S;
};

Dims dims_of(const Config& c) {
  Dims d{c.hidden_size, c.num_experts, c.num_experts_per_tok, c.moe_intermediate_size,
         c.shared_expert_intermediate_size};
  DT_CHECK(d.D > 0 && d.E > 0 && d.K > 0 && d.K <= d.E && d.F > 0 && d.S >= 0,
           "MoeBlock: bad MoE config: hidden_size=", d.D, " num_experts=", d.E,
           " num_experts_per_tok=", d.K, " moe_intermediate_size=", d.F,
           " shared_expert_intermediate_size=", d.S);
  return d;
}

// The parameter's data, after checking that its shape is the expected one.
const float* param(const TensorMap& params, const std::string& name, const core::Shape& shape) {
  const core::Tensor& t = weight(params, name);
  DT_CHECK(t.shape == shape, "model parameter ", name, " has shape ", core::shape_str(t.shape),
           ", expected ", core::shape_str(shape));
  return t.ptr();
}

int64_t max_rows(const std::vector<int64_t>& offsets_E1) {
  int64_t r = 0;
  for (size_t e = 0; e + 1 < offsets_E1.size(); ++e)
    r = std::max(r, offsets_E1[e + 1] - offsets_E1[e]);
  return r;
}

void check_terms(const RouterLossTerms& t, int64_t N, int64_t E) {
  DT_CHECK(t.group_N.empty() || int64_t(t.group_N.size()) == N, "RouterLossTerms: group_N has ",
           t.group_N.size(), " entries for ", N, " tokens");
  DT_CHECK(t.num_groups >= 0, "RouterLossTerms: negative num_groups ", t.num_groups);
  if (t.num_groups > 0) {
    DT_CHECK(int64_t(t.F_GE.size()) == t.num_groups * E && int64_t(t.c_G.size()) == t.num_groups,
             "RouterLossTerms: F_GE has ", t.F_GE.size(), " entries and c_G ", t.c_G.size(),
             "; expected num_groups*E = ", t.num_groups * E, " and num_groups = ", t.num_groups);
  }
}

const int32_t* groups_ptr(const std::vector<int32_t>& group_N) {
  return group_N.empty() ? nullptr : group_N.data();
}

}  // namespace

void MoeBlock::fwd(core::Device dev, const Config& c, const TensorMap& params, int64_t N,
                   const float* x_ND, float* y_ND, MoeSaved& s) const {
  const auto [D, E, K, F, S] = dims_of(c);
  const float* W_router = param(params, prefix + "gate.weight", {E, D});
  const float* W_gate_up = param(params, prefix + "experts.gate_up_proj", {E, 2 * F, D});
  const float* W_down = param(params, prefix + "experts.down_proj", {E, D, F});
  s.N = N, s.E = E, s.K = K;
  s.x_ND.assign(x_ND, x_ND + N * D);  // from here on x is s.x_ND, so y may alias x_ND
  const float* x = s.x_ND.data();

  // Router.
  s.logits_NE.resize(N * E);
  s.probs_NE.resize(N * E);
  s.lse_N.resize(N);
  s.topk_idx_NK.resize(N * K);
  s.topk_w_NK.resize(N * K);
  ops::linear_fwd(dev, x, W_router, N, D, E, s.logits_NE.data());
  ops::moe_router_fwd(dev, s.logits_NE.data(), N, E, K, s.probs_NE.data(), s.lse_N.data(),
                      s.topk_idx_NK.data(), s.topk_w_NK.data());

  // Routed experts on their gathered rows, ascending expert id.
  s.offsets_E1.resize(E + 1);
  s.rows_P.resize(N * K);
  ops::moe_permute(dev, s.topk_idx_NK.data(), N, K, E, s.offsets_E1.data(), s.rows_P.data());
  s.gate_PF.resize(N * K * F);
  s.up_PF.resize(N * K * F);
  const int64_t Rmax = max_rows(s.offsets_E1);
  std::vector<float> xe(Rmax * D), h(Rmax * F), out(Rmax * D);
  std::fill(y_ND, y_ND + N * D, 0.f);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = s.offsets_E1[e], R = s.offsets_E1[e + 1] - r0;
    if (R == 0) continue;
    const int32_t* rows = s.rows_P.data() + r0;
    const float* Wg = W_gate_up + e * 2 * F * D;
    float* gate = s.gate_PF.data() + r0 * F;
    float* up = s.up_PF.data() + r0 * F;
    ops::moe_gather(dev, x, rows, nullptr, R, K, D, xe.data());
    ops::linear_fwd(dev, xe.data(), Wg, R, D, F, gate);
    ops::linear_fwd(dev, xe.data(), Wg + F * D, R, D, F, up);
    ops::swiglu_fwd(dev, gate, up, R * F, h.data());
    ops::linear_fwd(dev, h.data(), W_down + e * D * F, R, F, D, out.data());
    ops::moe_scatter_add(dev, out.data(), rows, s.topk_w_NK.data(), R, K, D, y_ND);
  }

  // Shared expert with its per-token sigmoid gate.
  if (S > 0) {
    const std::string sp = prefix + "shared_expert.";
    s.shared_gate_NS.resize(N * S);
    s.shared_up_NS.resize(N * S);
    s.shared_out_ND.resize(N * D);
    s.shared_logit_N.resize(N);
    std::vector<float> hs(N * S);
    ops::linear_fwd(dev, x, param(params, sp + "gate_proj.weight", {S, D}), N, D, S,
                    s.shared_gate_NS.data());
    ops::linear_fwd(dev, x, param(params, sp + "up_proj.weight", {S, D}), N, D, S,
                    s.shared_up_NS.data());
    ops::swiglu_fwd(dev, s.shared_gate_NS.data(), s.shared_up_NS.data(), N * S, hs.data());
    ops::linear_fwd(dev, hs.data(), param(params, sp + "down_proj.weight", {D, S}), N, S, D,
                    s.shared_out_ND.data());
    ops::linear_fwd(dev, x, param(params, prefix + "shared_expert_gate.weight", {1, D}), N, D, 1,
                    s.shared_logit_N.data());
    ops::moe_shared_gate_fwd(dev, s.shared_out_ND.data(), s.shared_logit_N.data(), N, D, y_ND);
  } else {
    s.shared_gate_NS.clear();
    s.shared_up_NS.clear();
    s.shared_out_ND.clear();
    s.shared_logit_N.clear();
  }
}

void MoeBlock::count_routes(const MoeSaved& s, const std::vector<int32_t>& group_N,
                            int64_t num_groups, int64_t E, std::vector<double>& counts_GE,
                            std::vector<double>& tokens_G) {
  DT_CHECK(E == s.E, "MoeBlock::count_routes: E = ", E, " but the saved routing has ", s.E,
           " experts");
  DT_CHECK(group_N.empty() || int64_t(group_N.size()) == s.N,
           "MoeBlock::count_routes: group_N has ", group_N.size(), " entries for ", s.N, " tokens");
  DT_CHECK(num_groups > 0, "MoeBlock::count_routes: need num_groups > 0, got ", num_groups);
  if (counts_GE.empty()) counts_GE.assign(num_groups * E, 0.0);
  if (tokens_G.empty()) tokens_G.assign(num_groups, 0.0);
  DT_CHECK(int64_t(counts_GE.size()) == num_groups * E && int64_t(tokens_G.size()) == num_groups,
           "MoeBlock::count_routes: counts_GE has ", counts_GE.size(), " entries and tokens_G ",
           tokens_G.size(), "; expected ", num_groups * E, " and ", num_groups);
  ops::moe_count_routes(core::Device::cpu, s.topk_idx_NK.data(), groups_ptr(group_N), s.N, s.K, E,
                        num_groups, counts_GE.data(), tokens_G.data());
}

double MoeBlock::router_loss(const MoeSaved& s, const RouterLossTerms& t) const {
  check_terms(t, s.N, s.E);
  const int32_t* g = groups_ptr(t.group_N);
  double loss = 0;
  if (t.num_groups > 0)
    loss += ops::moe_aux_loss_fwd(core::Device::cpu, s.probs_NE.data(), g, s.N, s.E, t.num_groups,
                                  t.F_GE.data(), t.c_G.data());
  if (t.z_coef != 0)
    loss += ops::moe_z_loss_fwd(core::Device::cpu, s.lse_N.data(), g, s.N, t.z_coef);
  return loss;
}

void MoeBlock::bwd(core::Device dev, const Config& c, const TensorMap& params, TensorMap& grads,
                   int64_t N, const MoeSaved& s, const float* dy_ND, const RouterLossTerms* terms,
                   double loss_scale, float* dx_ND) const {
  const auto [D, E, K, F, S] = dims_of(c);
  DT_CHECK(N == s.N && E == s.E && K == s.K, "MoeBlock::bwd: saved state is for N=", s.N,
           " E=", s.E, " K=", s.K, ", called with N=", N, " E=", E, " K=", K);
  const float* W_router = param(params, prefix + "gate.weight", {E, D});
  const float* W_gate_up = param(params, prefix + "experts.gate_up_proj", {E, 2 * F, D});
  const float* W_down = param(params, prefix + "experts.down_proj", {E, D, F});
  float* dW_gate_up = grad(grads, prefix + "experts.gate_up_proj");
  float* dW_down = grad(grads, prefix + "experts.down_proj");
  if (terms) check_terms(*terms, N, E);
  const float* x = s.x_ND.data();
  std::fill(dx_ND, dx_ND + N * D, 0.f);

  // Routed experts, ascending id: parameter gradients, dx, and the slot-weight gradients dw.
  std::vector<float> dw_NK(N * K, 0.f);
  const int64_t Rmax = max_rows(s.offsets_E1);
  std::vector<float> xe(Rmax * D), dye(Rmax * D), wdye(Rmax * D), dxe(Rmax * D);
  std::vector<float> h(Rmax * F), g(Rmax * F), dup(Rmax * F);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = s.offsets_E1[e], R = s.offsets_E1[e + 1] - r0;
    if (R == 0) continue;
    const int32_t* rows = s.rows_P.data() + r0;
    const float* gate = s.gate_PF.data() + r0 * F;
    const float* up = s.up_PF.data() + r0 * F;
    const float* Wg = W_gate_up + e * 2 * F * D;
    const float* Wd = W_down + e * D * F;
    ops::moe_gather(dev, dy_ND, rows, nullptr, R, K, D, dye.data());
    ops::moe_gather(dev, dy_ND, rows, s.topk_w_NK.data(), R, K, D, wdye.data());
    ops::swiglu_fwd(dev, gate, up, R * F, h.data());
    ops::linear_bwd(dev, h.data(), Wd, dye.data(), R, F, D, g.data(), false, nullptr);
    ops::linear_bwd(dev, h.data(), Wd, wdye.data(), R, F, D, nullptr, false, dW_down + e * D * F);
    ops::moe_expert_weight_bwd(dev, h.data(), g.data(), rows, s.topk_w_NK.data(), R, K, F,
                               dw_NK.data(), g.data());
    ops::swiglu_bwd(dev, gate, up, g.data(), R * F, g.data(), dup.data());  // g becomes dgate
    ops::moe_gather(dev, x, rows, nullptr, R, K, D, xe.data());
    ops::linear_bwd(dev, xe.data(), Wg, g.data(), R, D, F, dxe.data(), false,
                    dW_gate_up + e * 2 * F * D);
    ops::linear_bwd(dev, xe.data(), Wg + F * D, dup.data(), R, D, F, dxe.data(), true,
                    dW_gate_up + e * 2 * F * D + F * D);
    ops::moe_scatter_add(dev, dxe.data(), rows, nullptr, R, K, D, dx_ND);
  }

  // Shared expert and its gate.
  if (S > 0) {
    const std::string sp = prefix + "shared_expert.";
    std::vector<float> dout(N * D), dlogit(N), hs(N * S), dgs(N * S), dus(N * S);
    ops::moe_shared_gate_bwd(dev, s.shared_out_ND.data(), s.shared_logit_N.data(), dy_ND, N, D,
                             dout.data(), dlogit.data());
    ops::linear_bwd(dev, x, param(params, prefix + "shared_expert_gate.weight", {1, D}),
                    dlogit.data(), N, D, 1, dx_ND, true,
                    grad(grads, prefix + "shared_expert_gate.weight"));
    ops::swiglu_fwd(dev, s.shared_gate_NS.data(), s.shared_up_NS.data(), N * S, hs.data());
    ops::linear_bwd(dev, hs.data(), param(params, sp + "down_proj.weight", {D, S}), dout.data(), N,
                    S, D, dgs.data(), false, grad(grads, sp + "down_proj.weight"));
    ops::swiglu_bwd(dev, s.shared_gate_NS.data(), s.shared_up_NS.data(), dgs.data(), N * S,
                    dgs.data(), dus.data());
    ops::linear_bwd(dev, x, param(params, sp + "gate_proj.weight", {S, D}), dgs.data(), N, D, S,
                    dx_ND, true, grad(grads, sp + "gate_proj.weight"));
    ops::linear_bwd(dev, x, param(params, sp + "up_proj.weight", {S, D}), dus.data(), N, D, S,
                    dx_ND, true, grad(grads, sp + "up_proj.weight"));
  }

  // Router: routed path through the renormalised top-k weights, plus the router losses.
  std::vector<float> dprobs, dlse, dlogits(N * E);
  if (terms) {
    const int32_t* grp = groups_ptr(terms->group_N);
    if (terms->num_groups > 0) {
      dprobs.resize(N * E);
      ops::moe_aux_loss_bwd(dev, grp, N, E, terms->num_groups, terms->F_GE.data(),
                            terms->c_G.data(), loss_scale, dprobs.data());
    }
    if (terms->z_coef != 0) {
      dlse.resize(N);
      ops::moe_z_loss_bwd(dev, s.lse_N.data(), grp, N, terms->z_coef, loss_scale, dlse.data());
    }
  }
  ops::moe_router_bwd(dev, s.probs_NE.data(), s.topk_idx_NK.data(), s.topk_w_NK.data(),
                      dw_NK.data(), dprobs.empty() ? nullptr : dprobs.data(),
                      dlse.empty() ? nullptr : dlse.data(), N, E, K, dlogits.data());
  ops::linear_bwd(dev, x, W_router, dlogits.data(), N, D, E, dx_ND, true,
                  grad(grads, prefix + "gate.weight"));
}

}  // namespace deltatron::model
