// GPU sparse MoE block (see moe_block.h; backward derivation in src/model/moe_block.cpp).
// The router runs in fp32 on the fp32 master weight (Megatron's fp32 router): its input is the
// block input cast to fp32, and its input gradient joins the block's fp32 input gradient.
#include "gpu/moe_block.h"

#include <cuda_runtime_api.h>

#include "cuda/device.h"
#include "cuda/grouped_linear.h"
#include "cuda/linear.h"
#include "cuda/moe.h"
#include "cuda/pointwise.h"
#include "model/moe_block.h"

namespace deltatron::gpu {

namespace {
struct Dims {
  int64_t N, D, E, K, F, S, P;
  explicit Dims(const Ctx& cx)
      : N(cx.N()),
        D(cx.c.hidden_size),
        E(cx.c.num_experts),
        K(cx.c.num_experts_per_tok),
        F(cx.c.moe_intermediate_size),
        S(cx.c.shared_expert_intermediate_size),
        P(cx.N() * cx.c.num_experts_per_tok) {}
};

void check_shape(const Params& p, const std::string& name, const core::Shape& shape) {
  const auto& e = p.entry(name);
  DT_CHECK(e.shape == shape, "model parameter ", name, " has shape ", core::shape_str(e.shape),
           ", expected ", core::shape_str(shape));
}

Buf to_f32(const Ctx& cx, const void* x, int64_t n, const char* what) {
  Buf b = cx.f32(n, what);
  cuda::cast(cx.dt(), x, DType::f32, b.get(), n);
  return b;
}

// The router outputs on the host, for the CPU router-loss code.
void fill_host(const Ctx& cx, MoeSaved& s, bool with_probs) {
  const Dims d(cx);
  model::MoeSaved& h = s.host;
  h.N = d.N, h.E = d.E, h.K = d.K;
  h.topk_idx_NK.resize(d.N * d.K);
  copy_to_host_i32(s.topk_idx, h.topk_idx_NK.data());
  if (!with_probs) return;
  h.probs_NE.resize(d.N * d.E);
  h.lse_N.resize(d.N);
  h.topk_w_NK.resize(d.N * d.K);
  copy_to_host(s.probs, h.probs_NE.data());
  copy_to_host(s.lse, h.lse_N.data());
  copy_to_host(s.topk_w, h.topk_w_NK.data());
}
}  // namespace

void moe_fwd(const Ctx& cx, const std::string& pf, const void* x, float* resid, MoeSaved& s) {
  const Dims d(cx);
  const DType dt = cx.dt();
  Params& p = cx.p;
  check_shape(p, pf + "gate.weight", {d.E, d.D});
  check_shape(p, pf + "experts.gate_up_proj", {d.E, 2 * d.F, d.D});
  check_shape(p, pf + "experts.down_proj", {d.E, d.D, d.F});
  s.x = x;
  s.has_terms = false;

  // Router (fp32).
  s.logits = cx.f32(d.N * d.E, "router logits");
  {
    Buf x32 = to_f32(cx, x, d.N * d.D, "router input (fp32)");
    cuda::linear_fwd(DType::f32, x32.get(), p.master(pf + "gate.weight"), d.N, d.D, d.E, DType::f32,
                     s.logits.get(), false);
  }
  s.probs = cx.f32(d.N * d.E, "router probabilities");
  s.lse = cx.f32(d.N, "router lse");
  s.topk_idx = Buf(d.N * d.K, DType::f32, "router top-k experts");
  s.topk_w = cx.f32(d.N * d.K, "router top-k weights");
  Buf bad(1, DType::f32, "router bad-token flag");
  cuda::moe_router_fwd(s.logits.f32(), d.N, d.E, d.K, s.probs.f32(), s.lse.f32(), s.topk_idx.i32(),
                       s.topk_w.f32(), bad.i32());
  s.offsets_E1.assign(d.E + 1, 0);
  s.rows_P = Buf(d.P, DType::f32, "expert-major slot order");
  s.pos = Buf(d.P, DType::f32, "slot positions");
  cuda::moe_permute(s.topk_idx.i32(), d.N, d.K, d.E, bad.i32(), nullptr, s.offsets_E1.data(),
                    s.rows_P.i32(), s.pos.i32());

  // Routed experts.
  s.gate = cx.act(d.P * d.F, "expert gate");
  s.up = cx.act(d.P * d.F, "expert up");
  Buf h = cx.act(d.P * d.F, "expert hidden");
  {
    Buf xg = cx.act(d.P * d.D, "gathered expert inputs");
    cuda::moe_gather(dt, x, s.rows_P.i32(), nullptr, d.P, d.K, d.D, xg.get());
    Buf gu = cx.act(d.P * 2 * d.F, "expert gate/up");
    cuda::grouped_linear_fwd(dt, xg.get(), p.w(pf + "experts.gate_up_proj"), s.offsets_E1.data(),
                             d.E, d.D, 2 * d.F, gu.get());
    cuda::copy_cols(dt, gu.get(), 2 * d.F, 0, s.gate.get(), d.F, 0, d.P, d.F);
    cuda::copy_cols(dt, gu.get(), 2 * d.F, d.F, s.up.get(), d.F, 0, d.P, d.F);
  }
  cuda::swiglu_fwd(dt, s.gate.get(), s.up.get(), d.P * d.F, h.get());
  {
    Buf out = cx.act(d.P * d.D, "expert outputs");
    cuda::grouped_linear_fwd(dt, h.get(), p.w(pf + "experts.down_proj"), s.offsets_E1.data(), d.E,
                             d.F, d.D, out.get());
    cuda::moe_scatter_add(dt, out.get(), s.pos.i32(), s.topk_w.f32(), d.N, d.K, d.D, DType::f32,
                          resid, true);
  }

  // Shared expert with its sigmoid gate.
  if (d.S > 0) {
    const std::string sp = pf + "shared_expert.";
    s.sgate = cx.act(d.N * d.S, "shared expert gate");
    s.sup = cx.act(d.N * d.S, "shared expert up");
    s.sout = cx.act(d.N * d.D, "shared expert output");
    s.slogit = cx.f32(d.N, "shared expert gate logit");
    Buf hs = cx.act(d.N * d.S, "shared expert hidden");
    cuda::linear_fwd(dt, x, p.w(sp + "gate_proj.weight"), d.N, d.D, d.S, dt, s.sgate.get(), false);
    cuda::linear_fwd(dt, x, p.w(sp + "up_proj.weight"), d.N, d.D, d.S, dt, s.sup.get(), false);
    cuda::swiglu_fwd(dt, s.sgate.get(), s.sup.get(), d.N * d.S, hs.get());
    cuda::linear_fwd(dt, hs.get(), p.w(sp + "down_proj.weight"), d.N, d.S, d.D, dt, s.sout.get(),
                     false);
    cuda::linear_fwd(dt, x, p.w(pf + "shared_expert_gate.weight"), d.N, d.D, 1, DType::f32,
                     s.slogit.get(), false);
    cuda::moe_shared_gate_fwd(dt, s.sout.get(), s.slogit.f32(), d.N, d.D, DType::f32, resid);
  }
}

void moe_bwd(const Ctx& cx, const std::string& pf, const MoeSaved& s, const void* dy, void* dx) {
  const Dims d(cx);
  const DType dt = cx.dt();
  Params& p = cx.p;
  Buf dx32 = cx.f32(d.N * d.D, "MoE input gradient (fp32)");
  Buf dw = cx.f32(d.N * d.K, "top-k weight gradient");

  // Routed experts.
  {
    Buf h = cx.act(d.P * d.F, "expert hidden");
    cuda::swiglu_fwd(dt, s.gate.get(), s.up.get(), d.P * d.F, h.get());
    Buf g = cx.act(d.P * d.F, "expert hidden gradient (unweighted)");
    {
      Buf dye = cx.act(d.P * d.D, "gathered output gradients");
      cuda::moe_gather(dt, dy, s.rows_P.i32(), nullptr, d.P, d.K, d.D, dye.get());
      cuda::grouped_linear_bwd(dt, h.get(), p.w(pf + "experts.down_proj"), dye.get(),
                               s.offsets_E1.data(), d.E, d.F, d.D, g.get(), nullptr);
      cuda::moe_gather(dt, dy, s.rows_P.i32(), s.topk_w.f32(), d.P, d.K, d.D, dye.get());
      cuda::grouped_linear_bwd(dt, h.get(), p.w(pf + "experts.down_proj"), dye.get(),
                               s.offsets_E1.data(), d.E, d.F, d.D, nullptr,
                               p.g(pf + "experts.down_proj"));
    }
    cuda::moe_expert_weight_bwd(dt, h.get(), g.get(), s.rows_P.i32(), s.topk_w.f32(), d.P, d.K, d.F,
                                dw.f32(), g.get());
    Buf dgu = cx.act(d.P * 2 * d.F, "expert gate/up gradient");
    {
      Buf dgate = cx.act(d.P * d.F, "expert gate gradient"),
          dup = cx.act(d.P * d.F, "expert up gradient");
      cuda::swiglu_bwd(dt, s.gate.get(), s.up.get(), g.get(), d.P * d.F, dgate.get(), dup.get());
      cuda::copy_cols(dt, dgate.get(), d.F, 0, dgu.get(), 2 * d.F, 0, d.P, d.F);
      cuda::copy_cols(dt, dup.get(), d.F, 0, dgu.get(), 2 * d.F, d.F, d.P, d.F);
    }
    Buf xg = cx.act(d.P * d.D, "gathered expert inputs");
    cuda::moe_gather(dt, s.x, s.rows_P.i32(), nullptr, d.P, d.K, d.D, xg.get());
    Buf dxg = cx.act(d.P * d.D, "gathered input gradients");
    cuda::grouped_linear_bwd(dt, xg.get(), p.w(pf + "experts.gate_up_proj"), dgu.get(),
                             s.offsets_E1.data(), d.E, d.D, 2 * d.F, dxg.get(),
                             p.g(pf + "experts.gate_up_proj"));
    cuda::moe_scatter_add(dt, dxg.get(), s.pos.i32(), nullptr, d.N, d.K, d.D, DType::f32,
                          dx32.get(), false);
  }

  // Shared expert and its gate.
  if (d.S > 0) {
    const std::string sp = pf + "shared_expert.";
    Buf dout = cx.act(d.N * d.D, "shared expert output gradient");
    Buf dlogit = cx.f32(d.N, "shared gate logit gradient");
    cuda::moe_shared_gate_bwd(dt, s.sout.get(), s.slogit.f32(), dy, d.N, d.D, dout.get(),
                              dlogit.f32());
    Buf dlogit_dt = cx.act(d.N, "shared gate logit gradient (compute dtype)");
    cuda::cast(DType::f32, dlogit.get(), dt, dlogit_dt.get(), d.N);
    cuda::linear_bwd_dx(dt, dlogit_dt.get(), p.w(pf + "shared_expert_gate.weight"), d.N, d.D, 1,
                        DType::f32, dx32.get(), true);
    cuda::linear_bwd_dw(dt, s.x, dlogit_dt.get(), d.N, d.D, 1,
                        p.g(pf + "shared_expert_gate.weight"));
    Buf hs = cx.act(d.N * d.S, "shared expert hidden");
    cuda::swiglu_fwd(dt, s.sgate.get(), s.sup.get(), d.N * d.S, hs.get());
    Buf dh = cx.act(d.N * d.S, "shared expert hidden gradient");
    cuda::linear_bwd_dx(dt, dout.get(), p.w(sp + "down_proj.weight"), d.N, d.S, d.D, dt, dh.get(),
                        false);
    cuda::linear_bwd_dw(dt, hs.get(), dout.get(), d.N, d.S, d.D, p.g(sp + "down_proj.weight"));
    Buf dgs = cx.act(d.N * d.S, "shared expert gate gradient");
    Buf dus = cx.act(d.N * d.S, "shared expert up gradient");
    cuda::swiglu_bwd(dt, s.sgate.get(), s.sup.get(), dh.get(), d.N * d.S, dgs.get(), dus.get());
    cuda::linear_bwd_dx(dt, dgs.get(), p.w(sp + "gate_proj.weight"), d.N, d.D, d.S, DType::f32,
                        dx32.get(), true);
    cuda::linear_bwd_dw(dt, s.x, dgs.get(), d.N, d.D, d.S, p.g(sp + "gate_proj.weight"));
    cuda::linear_bwd_dx(dt, dus.get(), p.w(sp + "up_proj.weight"), d.N, d.D, d.S, DType::f32,
                        dx32.get(), true);
    cuda::linear_bwd_dw(dt, s.x, dus.get(), d.N, d.D, d.S, p.g(sp + "up_proj.weight"));
  }

  // Router (fp32): routed path through the renormalised weights, plus the router losses.
  Buf dprobs, dlse, groups;
  if (s.has_terms) {
    const model::RouterLossTerms& t = s.terms;
    if (!t.group_N.empty()) groups = upload_i32(t.group_N.data(), d.N, "router-loss groups");
    const int32_t* grp = t.group_N.empty() ? nullptr : groups.i32();
    if (t.num_groups > 0) {
      dprobs = cx.f32(d.N * d.E, "router probability gradient");
      cuda::moe_aux_loss_bwd(grp, d.N, d.E, t.num_groups, t.F_GE.data(), t.c_G.data(), s.loss_scale,
                             dprobs.f32());
    }
    if (t.z_coef != 0) {
      dlse = cx.f32(d.N, "router lse gradient");
      cuda::moe_z_loss_bwd(s.lse.f32(), grp, d.N, t.z_coef, s.loss_scale, dlse.f32());
    }
  }
  Buf dlogits = cx.f32(d.N * d.E, "router logit gradient");
  cuda::moe_router_bwd(s.probs.f32(), s.topk_idx.i32(), s.topk_w.f32(), dw.f32(),
                       dprobs.n() ? dprobs.f32() : nullptr, dlse.n() ? dlse.f32() : nullptr, d.N,
                       d.E, d.K, dlogits.f32());
  cuda::linear_bwd_dx(DType::f32, dlogits.get(), p.master(pf + "gate.weight"), d.N, d.D, d.E,
                      DType::f32, dx32.get(), true);
  {
    Buf x32 = to_f32(cx, s.x, d.N * d.D, "router input (fp32)");
    cuda::linear_bwd_dw(DType::f32, x32.get(), dlogits.get(), d.N, d.D, d.E,
                        p.g(pf + "gate.weight"));
  }
  cuda::cast(DType::f32, dx32.get(), dt, dx, d.N * d.D);
}

void moe_count(const Ctx& cx, const std::string& pf, MoeSaved& s,
               model::GlobalRouterCounts& counts) {
  fill_host(cx, s, false);
  counts.add(pf, s.host, cx.pk.host, cx.c.num_experts);
}

void add_router_terms(const Ctx& cx, const model::ModelOptions& opt, const std::string& pf,
                      MoeSaved& s, double& router_loss) {
  if (!cx.c.is_moe() || !opt.router.active()) return;
  fill_host(cx, s, true);
  const model::GlobalRouterCounts* global = opt.global_counts;
  if (opt.running_counts && opt.router.aux_type == model::AuxLossType::global) {
    opt.running_counts->add(pf, s.host, cx.pk.host, cx.c.num_experts);
    global = opt.running_counts;
  }
  s.terms = model::make_router_terms(opt.router, cx.c, cx.pk.host, s.host, pf, global);
  s.has_terms = true;
  s.loss_scale = opt.router_scale;
  router_loss += model::MoeBlock{pf}.router_loss(s.host, s.terms);
}

}  // namespace deltatron::gpu
