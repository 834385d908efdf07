// Sparse MoE block (see moe_block.h). The router runs in f32 on the f32 master weight: its input
// is the block input cast to f32, and its input gradient joins the block's f32 input gradient.
//
// Backward, with g = dy gathered to the expert rows: the down projection's input gradient is
// taken unweighted (g W_down), so the slot weight's gradient dw = g . h and the weighted hidden
// gradient w g come from one op (ops::moe_expert_weight_bwd); the routed path's dw enters the
// router through the renormalised top-k softmax (ops::moe_router_bwd) together with the router
// losses' dprobs and dlse.
#include "model/moe_block.h"

#include <tuple>

#include "model/expert_lora.h"
#include "model/model.h"
#include "model/moe_ep.h"
#include "model/proj.h"
#include "model/tp_exchange.h"
#include "ops/activation.h"
#include "ops/linear.h"
#include "ops/moe.h"
#include "ops/step_scalars.h"
#include "ops/tensor.h"

namespace deltatron::model {

namespace {
using Dims = MoeDims;

void check_shape(const Params& p, const std::string& name, const core::Shape& shape) {
  const auto& e = p.entry(name);
  DT_CHECK(e.shape == shape, "model parameter ", name, " has shape ", core::shape_str(e.shape),
           ", expected ", core::shape_str(shape));
}

int64_t* host_offsets_of(MoeSaved& s) {
  return s.offsets_host.empty() ? nullptr : s.offsets_host.data();
}
const int64_t* host_offsets_of(const MoeSaved& s) {
  return s.offsets_host.empty() ? nullptr : s.offsets_host.data();
}

Buffer to_f32(const Ctx& cx, const View& x, int64_t n, const char* what) {
  Buffer b = cx.f32(n, what);
  ops::cast(x, b, n);
  return b;
}
}  // namespace

void moe_fwd(const Ctx& cx, const std::string& pf, const View& x, const View& resid, MoeSaved& s) {
  const Dims d(cx);
  const Params& p = cx.p;
  const bool ep = cx.ep && cx.ep->on();  // expert parallelism: this rank's experts only
  const int64_t El = ep ? cx.ep->num_local : d.E;
  check_shape(p, pf + "gate.weight", {d.E, d.D});
  check_shape(p, pf + "experts.gate_up_proj", {El, 2 * d.F, d.D});
  check_shape(p, pf + "experts.down_proj", {El, d.D, d.F});
  s.x = x;
  s.has_terms = false;

  // Router (f32).
  {
    // The logits are not kept: the backward needs the probabilities, lse and top-k alone.
    Buffer logits = cx.f32(d.N * d.E, "router logits");
    {
      Buffer x32 = to_f32(cx, x, d.N * d.D, "router input (fp32)");
      proj_fwd(cx, pf + "gate.weight", p.master(pf + "gate.weight"), x32, d.D, d.E, logits, false);
    }
    s.probs = cx.f32(d.N * d.E, "router probabilities");
    s.lse = cx.f32(d.N, "router lse");
    s.topk_idx = cx.i32(d.N * d.K, "router top-k experts");
    s.topk_w = cx.f32(d.N * d.K, "router top-k weights");
    ops::moe_router_fwd(logits, d.N, d.E, d.K, s.probs, s.lse, s.topk_idx, s.topk_w, cx.b.moe_bad);
  }
  // Expert row offsets on the device; a host copy (a sync per layer) only where the grouped
  // GEMMs cannot run from device offsets (CUDA's fp32 debug mode, widths not multiples of 8).
  s.offsets = Buffer(cx.dev(), core::DType::i64, {d.E + 1}, "expert row offsets");
  bool host_offsets = ops::grouped_linear_needs_host_offsets(cx.dev(), cx.dt(), d.D, 2 * d.F) ||
                      ops::grouped_linear_needs_host_offsets(cx.dev(), cx.dt(), d.F, d.D);
  for (const auto& [param, I, O] : {std::tuple{pf + "experts.gate_up_proj", d.D, 2 * d.F},
                                    std::tuple{pf + "experts.down_proj", d.F, d.D}})
    if (const int64_t r = expert_lora_rank(cx, param))  // the adapters' rank-r GEMMs
      host_offsets = host_offsets ||
                     ops::grouped_linear_needs_host_offsets(cx.dev(), cx.dt(), I, r) ||
                     ops::grouped_linear_needs_host_offsets(cx.dev(), cx.dt(), r, O);
  host_offsets = host_offsets || ep;  // the exchange's row counts
  s.offsets_host.assign(host_offsets ? d.E + 1 : 0, 0);
  s.rows_P = cx.i32(d.P, "expert-major slot order");
  s.pos = cx.i32(d.P, "slot positions");
  ops::moe_permute(s.topk_idx, d.N, d.K, d.E, cx.b.moe_bad, s.offsets, host_offsets_of(s), s.rows_P,
                   s.pos);
  const ExpertRows rows{s.offsets, host_offsets_of(s), d.E, d.P};
  // Tensor parallel: the routed and shared outputs are this rank's partial sums, collected over
  // every token and summed over the group into resid in one exchange.
  Buffer partial;
  if (cx.tp) {
    partial = cx.f32(d.N * d.D, "MoE partial output (this rank's FFN columns)");
    ops::zero(partial);
  }
  const View out_ND = cx.tp ? partial.view() : resid;

  // Routed experts. Expert and tensor parallelism together: the owner's experts hold this rank's
  // FFN columns (its ep group is the ranks with the same tp slice), so what comes back is this
  // rank's partial sum, as without ep.
  if (ep) {
    moe_routed_fwd_ep(cx, pf, x, out_ND, s);
  } else {
    s.gate = cx.act(d.P * d.F, "expert gate");
    s.up = cx.act(d.P * d.F, "expert up");
    Buffer h = cx.act(d.P * d.F, "expert hidden");
    {
      Buffer xg = cx.act(d.P * d.D, "gathered expert inputs");
      ops::moe_gather(x, s.rows_P, View{}, d.P, d.K, d.D, xg);
      Buffer gu = cx.act(d.P * 2 * d.F, "expert gate/up");
      ops::grouped_linear_fwd(xg, p.w(pf + "experts.gate_up_proj"), s.offsets, host_offsets_of(s),
                              d.E, d.D, 2 * d.F, gu);
      expert_lora_fwd(cx, pf + "experts.gate_up_proj", rows, xg, d.D, 2 * d.F, gu);
      ops::copy_cols(gu, 2 * d.F, 0, s.gate, d.F, 0, d.P, d.F);
      ops::copy_cols(gu, 2 * d.F, d.F, s.up, d.F, 0, d.P, d.F);
    }
    ops::swiglu_fwd(s.gate, s.up, d.P * d.F, h);
    {
      Buffer out = cx.act(d.P * d.D, "expert outputs");
      ops::grouped_linear_fwd(h, p.w(pf + "experts.down_proj"), s.offsets, host_offsets_of(s), d.E,
                              d.F, d.D, out);
      expert_lora_fwd(cx, pf + "experts.down_proj", rows, h, d.F, d.D, out);
      ops::moe_scatter_add(out, s.pos, s.topk_w, d.N, d.K, d.D, out_ND, true);
    }
  }

  // Shared expert with its sigmoid gate.
  if (d.S > 0) {
    const std::string sp = pf + "shared_expert.";
    s.sgate = cx.act(d.N * d.S, "shared expert gate");
    s.sup = cx.act(d.N * d.S, "shared expert up");
    s.sout = cx.act(d.N * d.D, "shared expert output");
    s.slogit = cx.f32(d.N, "shared expert gate logit");
    Buffer hs = cx.act(d.N * d.S, "shared expert hidden");
    proj_fwd(cx, sp + "gate_proj.weight", x, d.D, d.S, s.sgate, false);
    proj_fwd(cx, sp + "up_proj.weight", x, d.D, d.S, s.sup, false);
    ops::swiglu_fwd(s.sgate, s.sup, d.N * d.S, hs);
    proj_fwd(cx, sp + "down_proj.weight", hs, d.S, d.D, s.sout, false);
    proj_fwd(cx, pf + "shared_expert_gate.weight", x, d.D, 1, s.slogit, false);
    ops::moe_shared_gate_fwd(s.sout, s.slogit, d.N, d.D, out_ND);
  }
  if (cx.tp) tp_sum_into(cx, partial, d.D, resid);
}

void moe_bwd(const Ctx& cx, const std::string& pf, const MoeSaved& s, const View& dy,
             const View& dx) {
  const Dims d(cx);
  const Params& p = cx.p;
  Buffer dx32 = cx.f32(d.N * d.D, "MoE input gradient (fp32)");
  Buffer dw = cx.f32(d.N * d.K, "top-k weight gradient");
  const ExpertRows rows{s.offsets, host_offsets_of(s), d.E, d.P};

  // Routed experts.
  if (cx.ep && cx.ep->on()) {
    moe_routed_bwd_ep(cx, pf, s, dy, dx32, dw);
  } else {
    Buffer h = cx.act(d.P * d.F, "expert hidden");
    ops::swiglu_fwd(s.gate, s.up, d.P * d.F, h);
    Buffer g = cx.act(d.P * d.F, "expert hidden gradient (unweighted)");
    {
      Buffer dye = cx.act(d.P * d.D, "gathered output gradients");
      ops::moe_gather(dy, s.rows_P, View{}, d.P, d.K, d.D, dye);
      ops::grouped_linear_bwd(h, p.w(pf + "experts.down_proj"), dye, s.offsets, host_offsets_of(s),
                              d.E, d.F, d.D, g, View{});
      // The adapter's share of the unweighted hidden gradient (before the slot weights' split).
      expert_lora_bwd(cx, pf + "experts.down_proj", rows, h, d.F, d.D, dye, g, View{});
      const bool adapted = expert_lora_rank(cx, pf + "experts.down_proj") > 0;
      if (!p.frozen() || adapted) {
        ops::moe_gather(dy, s.rows_P, s.topk_w, d.P, d.K, d.D, dye);  // now slot-weighted
        if (!p.frozen()) {  // the step's first write overwrites (Params::g_target)
          const Params::GradTarget gd = p.g_target(pf + "experts.down_proj");
          ops::grouped_linear_bwd(h, p.w(pf + "experts.down_proj"), dye, s.offsets,
                                  host_offsets_of(s), d.E, d.F, d.D, View{}, gd.g, gd.accumulate);
        }
        expert_lora_bwd(cx, pf + "experts.down_proj", rows, h, d.F, d.D, View{}, View{}, dye);
      }
    }
    ops::moe_expert_weight_bwd(h, g, s.rows_P, s.topk_w, d.P, d.K, d.F, dw, g);
    Buffer dgu = cx.act(d.P * 2 * d.F, "expert gate/up gradient");
    {
      Buffer dgate = cx.act(d.P * d.F, "expert gate gradient");
      Buffer dup = cx.act(d.P * d.F, "expert up gradient");
      ops::swiglu_bwd(s.gate, s.up, g, d.P * d.F, dgate, dup);
      ops::copy_cols(dgate, d.F, 0, dgu, 2 * d.F, 0, d.P, d.F);
      ops::copy_cols(dup, d.F, 0, dgu, 2 * d.F, d.F, d.P, d.F);
    }
    Buffer xg = cx.act(d.P * d.D, "gathered expert inputs");
    ops::moe_gather(s.x, s.rows_P, View{}, d.P, d.K, d.D, xg);
    Buffer dxg = cx.act(d.P * d.D, "gathered input gradients");
    const Params::GradTarget ggu = p.g_target(pf + "experts.gate_up_proj");
    ops::grouped_linear_bwd(xg, p.w(pf + "experts.gate_up_proj"), dgu, s.offsets,
                            host_offsets_of(s), d.E, d.D, 2 * d.F, dxg, ggu.g, ggu.accumulate);
    expert_lora_bwd(cx, pf + "experts.gate_up_proj", rows, xg, d.D, 2 * d.F, dgu, dxg, dgu);
    ops::moe_scatter_add(dxg, s.pos, View{}, d.N, d.K, d.D, dx32, false);
  }

  // Shared expert and its gate.
  if (d.S > 0) {
    const std::string sp = pf + "shared_expert.";
    Buffer dout = cx.act(d.N * d.D, "shared expert output gradient");
    Buffer dlogit = cx.f32(d.N, "shared gate logit gradient");
    ops::moe_shared_gate_bwd(s.sout, s.slogit, dy, d.N, d.D, dout, dlogit);
    Buffer dlogit_dt = cx.act(d.N, "shared gate logit gradient (compute dtype)");
    ops::cast(dlogit, dlogit_dt, d.N);
    proj_bwd(cx, pf + "shared_expert_gate.weight", s.x, dlogit_dt, d.D, 1, dx32, true);
    Buffer hs = cx.act(d.N * d.S, "shared expert hidden");
    ops::swiglu_fwd(s.sgate, s.sup, d.N * d.S, hs);
    Buffer dh = cx.act(d.N * d.S, "shared expert hidden gradient");
    proj_bwd(cx, sp + "down_proj.weight", hs, dout, d.S, d.D, dh, false);
    Buffer dgs = cx.act(d.N * d.S, "shared expert gate gradient");
    Buffer dus = cx.act(d.N * d.S, "shared expert up gradient");
    ops::swiglu_bwd(s.sgate, s.sup, dh, d.N * d.S, dgs, dus);
    proj_bwd(cx, sp + "gate_proj.weight", s.x, dgs, d.D, d.S, dx32, true);
    proj_bwd(cx, sp + "up_proj.weight", s.x, dus, d.D, d.S, dx32, true);
  }

  // Router (f32): routed path through the renormalised weights, plus the router losses.
  // Tensor parallel: the routed path's dw is this rank's share (its FFN columns), the router
  // losses' gradient is whole on every rank: rank 0 of the group alone adds it.
  Buffer dprobs, dlse;
  if (s.has_terms && (!cx.tp || cx.tp->rank() == 0)) {
    const RouterTerms& t = s.terms;
    if (t.num_groups > 0) {
      dprobs = cx.f32(d.N * d.E, "router probability gradient");
      ops::moe_aux_loss_bwd(t.group_N, d.N, d.E, t.num_groups, t.counts_GE, t.tokens_G, t.coef,
                            s.loss_scale, dprobs);
    }
    if (t.z_coef != 0) {
      dlse = cx.f32(d.N, "router lse gradient");
      ops::moe_z_loss_bwd(s.lse, t.group_N, d.N, t.z_coef, s.loss_scale, dlse);
    }
  }
  Buffer dlogits = cx.f32(d.N * d.E, "router logit gradient");
  ops::moe_router_bwd(s.probs, s.topk_idx, s.topk_w, dw, dprobs, dlse, d.N, d.E, d.K, dlogits);
  {
    Buffer x32 = to_f32(cx, s.x, d.N * d.D, "router input (fp32)");
    proj_bwd(cx, pf + "gate.weight", p.master(pf + "gate.weight"), x32, dlogits, d.D, d.E, dx32,
             true);
  }
  ops::cast(dx32, dx, d.N * d.D);
}

void check_moe_errors(const Ctx& cx, const View& step_scalars) {
  if (!cx.c.is_moe()) return;
  if (!step_scalars.empty()) return ops::step_moe_errors(cx.b.moe_bad, step_scalars);
  ops::moe_check_bad(cx.b.moe_bad, cx.c.num_experts);
}

void moe_count(const Ctx& cx, const std::string& pf, const MoeSaved& s,
               GlobalRouterCounts& counts) {
  const Dims d(cx);
  GlobalRouterCounts::Layer& l = counts.at(pf, cx.dev(), d.E);
  ops::moe_count_routes(s.topk_idx, cx.b.group_all, d.N, d.K, d.E, 1, l.counts_E, l.tokens_1);
}

void add_router_terms(const Ctx& cx, const ModelOptions& opt, const std::string& pf, MoeSaved& s,
                      const View& loss_1) {
  if (!cx.c.is_moe() || !opt.router.active()) return;
  const Dims d(cx);
  const RouterLossOptions& ro = opt.router;
  RouterTerms t;
  const bool per_sample = ro.aux_type == AuxLossType::seq;
  t.group_N = per_sample ? cx.b.group_seq.view() : cx.b.group_all.view();
  t.z_coef = ro.z_coef * ro.z_weight;
  if (ro.aux_coef != 0.0) {
    t.num_groups = per_sample ? cx.b.nseg : 1;
    t.coef.numer = (per_sample ? ro.seq_weight : 1.0) * ro.aux_coef * double(d.E);
    t.coef.k = double(d.K);
    if (ro.aux_type == AuxLossType::global) {
      const GlobalRouterCounts* global = opt.global_counts;
      GlobalRouterCounts* running = opt.running_counts;
      if (running && running->ranks) {  // several ranks: the counts in one rank's order
        Buffer own_E(cx.dev(), core::DType::f64, {d.E}, "routing counts"),
            own_1(cx.dev(), core::DType::f64, {1}, "routed token count");
        ops::zero(own_E);
        ops::zero(own_1);
        ops::moe_count_routes(s.topk_idx, cx.b.group_all, d.N, d.K, d.E, 1, own_E, own_1);
        t.own_counts = Buffer(cx.dev(), core::DType::f64, {d.E}, "routing counts seen");
        t.own_tokens = Buffer(cx.dev(), core::DType::f64, {1}, "routed token count seen");
        running->add_in_rank_order(pf, own_E, own_1, t.own_counts, t.own_tokens);
        t.counts_GE = t.own_counts;
        t.tokens_G = t.own_tokens;
      } else {
        if (running) {
          GlobalRouterCounts::Layer& l = running->at(pf, cx.dev(), d.E);
          ops::moe_count_routes(s.topk_idx, cx.b.group_all, d.N, d.K, d.E, 1, l.counts_E,
                                l.tokens_1);
          global = running;
        }
        DT_CHECK(global != nullptr, "global router aux loss needs the step's routing counts");
        const GlobalRouterCounts::Layer& l = global->get(pf);
        t.counts_GE = l.counts_E;
        t.tokens_G = l.tokens_1;
      }
      t.coef.step_tokens = running ? running->step_tokens : global->step_tokens;
    } else {
      t.own_counts = Buffer(cx.dev(), core::DType::f64, {t.num_groups * d.E}, "routing counts");
      t.own_tokens = Buffer(cx.dev(), core::DType::f64, {t.num_groups}, "routed token counts");
      ops::zero(t.own_counts);
      ops::zero(t.own_tokens);
      ops::moe_count_routes(s.topk_idx, t.group_N, d.N, d.K, d.E, t.num_groups, t.own_counts,
                            t.own_tokens);
      t.counts_GE = t.own_counts;
      t.tokens_G = t.own_tokens;
    }
    ops::moe_aux_loss_fwd(s.probs, t.group_N, d.N, d.E, t.num_groups, t.counts_GE, t.tokens_G,
                          t.coef, loss_1);
  }
  if (t.z_coef != 0) ops::moe_z_loss_fwd(s.lse, t.group_N, d.N, t.z_coef, loss_1);
  s.terms = std::move(t);
  s.has_terms = true;
  s.loss_scale = opt.router_scale;
}

}  // namespace deltatron::model
