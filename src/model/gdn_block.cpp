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
  // q's (or k's) H rows of K per token inside a [N, C] conv output (or its gradient).
  ops::RowPitch qk_pitch() const { return {H, C}; }
};

// The elements of a [N, C] conv output (or gradient) that q's (col0 = 0) or k's (col0 = HK) rows
// lie in, laid out by Dims::qk_pitch.
View qk_cols(const Dims& d, const View& c, int64_t col0) {
  return c.slice(col0, d.N > 0 ? (d.N - 1) * d.C + d.HK : 0);
}
// The GDN block's cheap intermediates: q, k, v = split(conv1d+SiLU(qkv)) with q, k L2-normed
// (and their rstd); beta, g = gates(b, a). Run by the forward and, under selective recomputation,
// again by the backward (the same ops on the same saved inputs: the same bits).
struct Inner {
  Buffer q, k, v, rstd_q, rstd_k, beta, g;
};
Inner gdn_inner(const Ctx& cx, const Dims& d, const std::string& pf, const GdnSaved& s) {
  const int64_t N = d.N;
  const Params& p = cx.p;
  Inner r;
  {
    Buffer c = cx.act(N * d.C, "GDN conv output");
    ops::conv1d_fwd(s.qkv, p.w(pf + "conv1d.weight"), cx.b.cu, cx.b.seg, N, d.C, d.W, c);
    r.v = cx.act(N * d.GV, "GDN v");
    ops::copy_cols(c, d.C, 2 * d.HK, r.v, d.GV, 0, N, d.GV);
    r.q = cx.act(N * d.HK, "GDN q");
    r.k = cx.act(N * d.HK, "GDN k");
    r.rstd_q = cx.f32(N * d.H, "GDN q rstd");
    r.rstd_k = cx.f32(N * d.H, "GDN k rstd");
    // q and k normalised straight out of the conv output's columns [0, HK) and [HK, 2 HK)
    ops::l2norm_fwd(qk_cols(d, c, 0), N * d.H, d.K, kL2NormEps, r.q, r.rstd_q, d.qk_pitch());
    ops::l2norm_fwd(qk_cols(d, c, d.HK), N * d.H, d.K, kL2NormEps, r.k, r.rstd_k, d.qk_pitch());
  }
  r.beta = cx.f32(N * d.G, "GDN beta");
  r.g = cx.f32(N * d.G, "GDN g");
  ops::gdn_gates_fwd(s.b, s.a, p.w(pf + "A_log"), p.w(pf + "dt_bias"), N, d.G, r.beta, r.g);
  return r;
}

// yn = RMSNormGated(o, z) and its rstd (the forward's, or recomputed in the backward).
struct GatedNorm {
  Buffer yn, rstd_o;
};
GatedNorm gdn_gated_norm(const Ctx& cx, const Dims& d, const std::string& pf, const GdnSaved& s) {
  GatedNorm r{cx.act(d.N * d.GV, "GDN gated norm output"), cx.f32(d.N * d.G, "GDN norm rstd")};
  ops::rmsnorm_gated_fwd(s.o, s.z, cx.p.w(pf + "norm.weight"), d.N * d.G, d.V, cx.c.rms_norm_eps,
                         r.yn, r.rstd_o);
  return r;
}

}  // namespace

void gdn_fwd(const Ctx& cx, const std::string& pf, const View& x, const View& resid, GdnSaved& s) {
  const Dims d(cx);
  const int64_t N = d.N;
  s.x = x;
  s.qkv = cx.act(N * d.C, "GDN qkv projection");
  proj_fwd(cx, pf + "in_proj_qkv.weight", x, d.D, d.C, s.qkv, false);
  s.z = cx.act(N * d.GV, "GDN z");
  s.b = cx.act(N * d.G, "GDN b");
  s.a = cx.act(N * d.G, "GDN a");
  proj_fwd(cx, pf + "in_proj_z.weight", x, d.D, d.GV, s.z, false);
  proj_fwd(cx, pf + "in_proj_b.weight", x, d.D, d.G, s.b, false);
  proj_fwd(cx, pf + "in_proj_a.weight", x, d.D, d.G, s.a, false);
  Inner in = gdn_inner(cx, d, pf, s);
  s.o = cx.act(N * d.GV, "GDN core output");
  ops::gdn_chunk_fwd(in.q, in.k, in.v, in.g, in.beta, cx.b.cu, cx.b.seg, N, d.H, d.G, d.K, d.V,
                     d.scale, s.o, View{});
  GatedNorm gn = gdn_gated_norm(cx, d, pf, s);
  tp_proj_fwd_sum(cx, pf + "out_proj.weight", gn.yn, d.GV, d.D, resid);
  if (cx.selective) return;  // the backward recomputes the intermediates
  s.q = std::move(in.q);
  s.k = std::move(in.k);
  s.v = std::move(in.v);
  s.rstd_q = std::move(in.rstd_q);
  s.rstd_k = std::move(in.rstd_k);
  s.beta = std::move(in.beta);
  s.g = std::move(in.g);
  s.yn = std::move(gn.yn);
  s.rstd_o = std::move(gn.rstd_o);
}

void gdn_bwd(const Ctx& cx, const std::string& pf, const GdnSaved& s, const View& dy,
             const View& dx) {
  const Dims d(cx);
  const int64_t N = d.N;
  const Params& p = cx.p;
  const bool re = s.q.numel() == 0 && N > 0;  // selective recomputation (see gdn_fwd)

  Buffer do_ = cx.act(N * d.GV, "GDN d(core output)");
  Buffer dz = cx.act(N * d.GV, "GDN dz");
  {
    GatedNorm gn = re ? gdn_gated_norm(cx, d, pf, s) : GatedNorm{};
    Buffer dyn = cx.act(N * d.GV, "GDN d(norm output)");
    proj_bwd(cx, pf + "out_proj.weight", re ? gn.yn.view() : s.yn.view(), dy, d.GV, d.D, dyn,
             false);
    ops::rmsnorm_gated_bwd(s.o, s.z, p.w(pf + "norm.weight"),
                           re ? gn.rstd_o.view() : s.rstd_o.view(), dyn, N * d.G, d.V, do_, dz,
                           cx.g(pf + "norm.weight"));
  }
  Buffer dc = cx.act(N * d.C, "GDN d(conv output)");
  Buffer db = cx.act(N * d.G, "GDN db");
  Buffer da = cx.act(N * d.G, "GDN da");
  {
    Inner in = re ? gdn_inner(cx, d, pf, s) : Inner{};
    const View& q = re ? in.q.view() : s.q.view();
    const View& k = re ? in.k.view() : s.k.view();
    const View& v = re ? in.v.view() : s.v.view();
    const View& beta = re ? in.beta.view() : s.beta.view();
    const View& g = re ? in.g.view() : s.g.view();
    Buffer dq = cx.act(N * d.HK, "GDN dq");
    Buffer dk = cx.act(N * d.HK, "GDN dk");
    Buffer dv = cx.act(N * d.GV, "GDN dv");
    Buffer dg = cx.f32(N * d.G, "GDN dg");
    Buffer dbeta = cx.f32(N * d.G, "GDN dbeta");
    ops::gdn_chunk_bwd(q, k, v, g, beta, cx.b.cu, cx.b.seg, N, d.H, d.G, d.K, d.V, d.scale, do_, dq,
                       dk, dv, dg, dbeta);
    do_ = Buffer();
    in.v = Buffer();
    Buffer scratch_a, scratch_dt;
    ops::gdn_gates_bwd(s.b, s.a, p.w(pf + "A_log"), p.w(pf + "dt_bias"), dbeta, dg, N, d.G, db, da,
                       grad_or_scratch(cx, pf + "A_log", scratch_a),
                       grad_or_scratch(cx, pf + "dt_bias", scratch_dt));
    // d(conv output): dq and dk through the l2norms straight into its q and k columns
    ops::l2norm_bwd(q, re ? in.rstd_q.view() : s.rstd_q.view(), dq, N * d.H, d.K, qk_cols(d, dc, 0),
                    d.qk_pitch());
    ops::l2norm_bwd(k, re ? in.rstd_k.view() : s.rstd_k.view(), dk, N * d.H, d.K,
                    qk_cols(d, dc, d.HK), d.qk_pitch());
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
