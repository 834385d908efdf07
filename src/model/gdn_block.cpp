// Gated DeltaNet mixer: forward and hand-written backward (see blocks.h).
#include <cmath>

#include "model/blocks.h"
#include "model/proj.h"
#include "model/tp_exchange.h"
#include "ops/conv1d.h"
#include "ops/gdn.h"
#include "ops/gdn_gates.h"
#include "ops/l2norm.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"
#include "ops/tensor.h"

namespace deltatron::model {

namespace {
constexpr double kL2NormEps = 1e-6;  // FLA / HF l2norm eps

struct Dims {
  int64_t N, D, H, G, K, V, C, W, HK, GV;
  float scale;
  explicit Dims(const Ctx& cx)
      : N(cx.N()),
        D(cx.c.hidden_size),
        H(cx.local(cx.c.linear_num_key_heads)),  // this rank's heads (tensor parallel)
        G(cx.local(cx.c.linear_num_value_heads)),
        K(cx.c.linear_key_head_dim),
        V(cx.c.linear_value_head_dim),
        C(2 * H * K + G * V),
        W(cx.c.linear_conv_kernel_dim),
        HK(H * K),
        GV(G * V),
        scale(static_cast<float>(1.0 / std::sqrt(static_cast<double>(K)))) {}
};
}  // namespace

void gdn_fwd(const Ctx& cx, const std::string& pf, const View& x, const View& resid, GdnSaved& s) {
  const Dims d(cx);
  const int64_t N = d.N;
  const Params& p = cx.p;
  s.x = x;
  s.qkv = cx.act(N * d.C, "GDN qkv projection");
  proj_fwd(cx, pf + "in_proj_qkv.weight", x, d.D, d.C, s.qkv, false);
  {
    Buffer c = cx.act(N * d.C, "GDN conv output");
    ops::conv1d_fwd(s.qkv, p.w(pf + "conv1d.weight"), cx.b.cu, cx.b.seg, N, d.C, d.W, c);
    Buffer q_raw = cx.act(N * d.HK, "GDN q (raw)");
    Buffer k_raw = cx.act(N * d.HK, "GDN k (raw)");
    s.v = cx.act(N * d.GV, "GDN v");
    ops::copy_cols(c, d.C, 0, q_raw, d.HK, 0, N, d.HK);
    ops::copy_cols(c, d.C, d.HK, k_raw, d.HK, 0, N, d.HK);
    ops::copy_cols(c, d.C, 2 * d.HK, s.v, d.GV, 0, N, d.GV);
    s.q = cx.act(N * d.HK, "GDN q");
    s.k = cx.act(N * d.HK, "GDN k");
    s.rstd_q = cx.f32(N * d.H, "GDN q rstd");
    s.rstd_k = cx.f32(N * d.H, "GDN k rstd");
    ops::l2norm_fwd(q_raw, N * d.H, d.K, kL2NormEps, s.q, s.rstd_q);
    ops::l2norm_fwd(k_raw, N * d.H, d.K, kL2NormEps, s.k, s.rstd_k);
  }
  s.z = cx.act(N * d.GV, "GDN z");
  s.b = cx.act(N * d.G, "GDN b");
  s.a = cx.act(N * d.G, "GDN a");
  proj_fwd(cx, pf + "in_proj_z.weight", x, d.D, d.GV, s.z, false);
  proj_fwd(cx, pf + "in_proj_b.weight", x, d.D, d.G, s.b, false);
  proj_fwd(cx, pf + "in_proj_a.weight", x, d.D, d.G, s.a, false);
  s.beta = cx.f32(N * d.G, "GDN beta");
  s.g = cx.f32(N * d.G, "GDN g");
  ops::gdn_gates_fwd(s.b, s.a, p.w(pf + "A_log"), p.w(pf + "dt_bias"), N, d.G, s.beta, s.g);
  s.o = cx.act(N * d.GV, "GDN core output");
  ops::gdn_chunk_fwd(s.q, s.k, s.v, s.g, s.beta, cx.b.cu, cx.b.seg, N, d.H, d.G, d.K, d.V, d.scale,
                     s.o, View{});
  s.yn = cx.act(N * d.GV, "GDN gated norm output");
  s.rstd_o = cx.f32(N * d.G, "GDN norm rstd");
  ops::rmsnorm_gated_fwd(s.o, s.z, p.w(pf + "norm.weight"), N * d.G, d.V, cx.c.rms_norm_eps, s.yn,
                         s.rstd_o);
  tp_proj_fwd_sum(cx, pf + "out_proj.weight", s.yn, d.GV, d.D, resid);
}

void gdn_bwd(const Ctx& cx, const std::string& pf, const GdnSaved& s, const View& dy,
             const View& dx) {
  const Dims d(cx);
  const int64_t N = d.N;
  const Params& p = cx.p;

  Buffer do_ = cx.act(N * d.GV, "GDN d(core output)");
  Buffer dz = cx.act(N * d.GV, "GDN dz");
  {
    Buffer dyn = cx.act(N * d.GV, "GDN d(norm output)");
    proj_bwd(cx, pf + "out_proj.weight", s.yn, dy, d.GV, d.D, dyn, false);
    ops::rmsnorm_gated_bwd(s.o, s.z, p.w(pf + "norm.weight"), s.rstd_o, dyn, N * d.G, d.V, do_, dz,
                           cx.g(pf + "norm.weight"));
  }
  Buffer dc = cx.act(N * d.C, "GDN d(conv output)");
  Buffer db = cx.act(N * d.G, "GDN db");
  Buffer da = cx.act(N * d.G, "GDN da");
  {
    Buffer dq = cx.act(N * d.HK, "GDN dq");
    Buffer dk = cx.act(N * d.HK, "GDN dk");
    Buffer dv = cx.act(N * d.GV, "GDN dv");
    Buffer dg = cx.f32(N * d.G, "GDN dg");
    Buffer dbeta = cx.f32(N * d.G, "GDN dbeta");
    ops::gdn_chunk_bwd(s.q, s.k, s.v, s.g, s.beta, cx.b.cu, cx.b.seg, N, d.H, d.G, d.K, d.V,
                       d.scale, do_, dq, dk, dv, dg, dbeta);
    do_ = Buffer();
    Buffer scratch_a, scratch_dt;
    ops::gdn_gates_bwd(s.b, s.a, p.w(pf + "A_log"), p.w(pf + "dt_bias"), dbeta, dg, N, d.G, db, da,
                       grad_or_scratch(cx, pf + "A_log", scratch_a),
                       grad_or_scratch(cx, pf + "dt_bias", scratch_dt));
    Buffer dq_raw = cx.act(N * d.HK, "GDN dq (raw)");
    Buffer dk_raw = cx.act(N * d.HK, "GDN dk (raw)");
    ops::l2norm_bwd(s.q, s.rstd_q, dq, N * d.H, d.K, dq_raw);
    ops::l2norm_bwd(s.k, s.rstd_k, dk, N * d.H, d.K, dk_raw);
    ops::copy_cols(dq_raw, d.HK, 0, dc, d.C, 0, N, d.HK);
    ops::copy_cols(dk_raw, d.HK, 0, dc, d.C, d.HK, N, d.HK);
    ops::copy_cols(dv, d.GV, 0, dc, d.C, 2 * d.HK, N, d.GV);
  }
  Buffer dqkv = cx.act(N * d.C, "GDN d(qkv projection)");
  Buffer scratch_conv;
  ops::conv1d_bwd(s.qkv, p.w(pf + "conv1d.weight"), cx.b.cu, cx.b.seg, dc, N, d.C, d.W, dqkv,
                  grad_or_scratch(cx, pf + "conv1d.weight", scratch_conv));
  dc = Buffer();
  proj_bwd(cx, pf + "in_proj_qkv.weight", s.x, dqkv, d.D, d.C, dx, false);
  proj_bwd(cx, pf + "in_proj_z.weight", s.x, dz, d.D, d.GV, dx, true);
  proj_bwd(cx, pf + "in_proj_b.weight", s.x, db, d.D, d.G, dx, true);
  proj_bwd(cx, pf + "in_proj_a.weight", s.x, da, d.D, d.G, dx, true);
}

}  // namespace deltatron::model
