// GPU Gated DeltaNet mixer (same math as src/model/gdn_block.cpp).
#include <cmath>

#include "cuda/conv1d.h"
#include "cuda/gdn.h"
#include "cuda/linear.h"
#include "cuda/norms.h"
#include "cuda/pointwise.h"
#include "gpu/blocks.h"

namespace deltatron::gpu {

namespace {
constexpr double kL2NormEps = 1e-6;  // FLA / HF l2norm eps

struct Dims {
  int64_t N, D, H, G, K, V, C, W, HK, GV;
  float scale;
  Dims(const Ctx& cx)
      : N(cx.N()),
        D(cx.c.hidden_size),
        H(cx.c.linear_num_key_heads),
        G(cx.c.linear_num_value_heads),
        K(cx.c.linear_key_head_dim),
        V(cx.c.linear_value_head_dim),
        C(2 * H * K + G * V),
        W(cx.c.linear_conv_kernel_dim),
        HK(H * K),
        GV(G * V),
        scale(static_cast<float>(1.0 / std::sqrt(static_cast<double>(K)))) {}
};
}  // namespace

void gdn_fwd(const Ctx& cx, const std::string& pf, const void* x, float* resid, GdnSaved& s) {
  const Dims d(cx);
  const DType dt = cx.dt();
  const int64_t N = d.N;
  Params& p = cx.p;
  s.x = x;
  s.qkv = cx.act(N * d.C, "GDN qkv projection");
  cuda::linear_fwd(dt, x, p.w(pf + "in_proj_qkv.weight"), N, d.D, d.C, dt, s.qkv.get(), false);
  {
    Buf c = cx.act(N * d.C, "GDN conv output");
    cuda::conv1d_fwd(dt, s.qkv.get(), p.w(pf + "conv1d.weight"), cx.pk.cu.i32(), cx.pk.nseg, N, d.C,
                     d.W, c.get());
    Buf q_raw = cx.act(N * d.HK, "GDN q (raw)");
    Buf k_raw = cx.act(N * d.HK, "GDN k (raw)");
    s.v = cx.act(N * d.GV, "GDN v");
    cuda::copy_cols(dt, c.get(), d.C, 0, q_raw.get(), d.HK, 0, N, d.HK);
    cuda::copy_cols(dt, c.get(), d.C, d.HK, k_raw.get(), d.HK, 0, N, d.HK);
    cuda::copy_cols(dt, c.get(), d.C, 2 * d.HK, s.v.get(), d.GV, 0, N, d.GV);
    s.q = cx.act(N * d.HK, "GDN q");
    s.k = cx.act(N * d.HK, "GDN k");
    s.rstd_q = cx.f32(N * d.H, "GDN q rstd");
    s.rstd_k = cx.f32(N * d.H, "GDN k rstd");
    cuda::l2norm_fwd(dt, q_raw.get(), N * d.H, d.K, kL2NormEps, s.q.get(), s.rstd_q.f32());
    cuda::l2norm_fwd(dt, k_raw.get(), N * d.H, d.K, kL2NormEps, s.k.get(), s.rstd_k.f32());
  }
  s.z = cx.act(N * d.GV, "GDN z");
  s.b = cx.act(N * d.G, "GDN b");
  s.a = cx.act(N * d.G, "GDN a");
  cuda::linear_fwd(dt, x, p.w(pf + "in_proj_z.weight"), N, d.D, d.GV, dt, s.z.get(), false);
  cuda::linear_fwd(dt, x, p.w(pf + "in_proj_b.weight"), N, d.D, d.G, dt, s.b.get(), false);
  cuda::linear_fwd(dt, x, p.w(pf + "in_proj_a.weight"), N, d.D, d.G, dt, s.a.get(), false);
  s.beta = cx.f32(N * d.G, "GDN beta");
  s.g = cx.f32(N * d.G, "GDN g");
  cuda::gdn_gates_fwd(dt, s.b.get(), s.a.get(), p.w(pf + "A_log"), p.w(pf + "dt_bias"), N, d.G,
                      s.beta.f32(), s.g.f32());
  s.o = cx.act(N * d.GV, "GDN core output");
  cuda::gdn_chunk_fwd(dt, s.q.get(), s.k.get(), s.v.get(), s.g.f32(), s.beta.f32(), cx.pk.cu.i32(),
                      cx.pk.cu_host(), cx.pk.nseg, N, d.H, d.G, d.K, d.V, d.scale, s.o.get(),
                      nullptr);
  s.yn = cx.act(N * d.GV, "GDN gated norm output");
  s.rstd_o = cx.f32(N * d.G, "GDN norm rstd");
  cuda::rmsnorm_gated_fwd(dt, s.o.get(), s.z.get(), p.w(pf + "norm.weight"), N * d.G, d.V,
                          cx.c.rms_norm_eps, s.yn.get(), s.rstd_o.f32());
  cuda::linear_fwd(dt, s.yn.get(), p.w(pf + "out_proj.weight"), N, d.GV, d.D, DType::f32, resid,
                   true);
}

void gdn_bwd(const Ctx& cx, const std::string& pf, const GdnSaved& s, const void* dy, void* dx) {
  const Dims d(cx);
  const DType dt = cx.dt();
  const int64_t N = d.N;
  Params& p = cx.p;

  Buf do_ = cx.act(N * d.GV, "GDN d(core output)");
  Buf dz = cx.act(N * d.GV, "GDN dz");
  {
    Buf dyn = cx.act(N * d.GV, "GDN d(norm output)");
    cuda::linear_bwd_dx(dt, dy, p.w(pf + "out_proj.weight"), N, d.GV, d.D, dt, dyn.get(), false);
    cuda::linear_bwd_dw(dt, s.yn.get(), dy, N, d.GV, d.D, p.g(pf + "out_proj.weight"));
    cuda::rmsnorm_gated_bwd(dt, s.o.get(), s.z.get(), p.w(pf + "norm.weight"), s.rstd_o.f32(),
                            dyn.get(), N * d.G, d.V, do_.get(), dz.get(), p.g(pf + "norm.weight"));
  }
  Buf dc = cx.act(N * d.C, "GDN d(conv output)");
  Buf db = cx.act(N * d.G, "GDN db");
  Buf da = cx.act(N * d.G, "GDN da");
  {
    Buf dq = cx.act(N * d.HK, "GDN dq");
    Buf dk = cx.act(N * d.HK, "GDN dk");
    Buf dv = cx.act(N * d.GV, "GDN dv");
    Buf dg = cx.f32(N * d.G, "GDN dg");
    Buf dbeta = cx.f32(N * d.G, "GDN dbeta");
    cuda::gdn_chunk_bwd(dt, s.q.get(), s.k.get(), s.v.get(), s.g.f32(), s.beta.f32(),
                        cx.pk.cu.i32(), cx.pk.cu_host(), cx.pk.nseg, N, d.H, d.G, d.K, d.V, d.scale,
                        do_.get(), dq.get(), dk.get(), dv.get(), dg.f32(), dbeta.f32());
    do_ = Buf();
    cuda::gdn_gates_bwd(dt, s.b.get(), s.a.get(), p.w(pf + "A_log"), p.w(pf + "dt_bias"),
                        dbeta.f32(), dg.f32(), N, d.G, db.get(), da.get(), p.g(pf + "A_log"),
                        p.g(pf + "dt_bias"));
    Buf dq_raw = cx.act(N * d.HK, "GDN dq (raw)");
    Buf dk_raw = cx.act(N * d.HK, "GDN dk (raw)");
    cuda::l2norm_bwd(dt, s.q.get(), s.rstd_q.f32(), dq.get(), N * d.H, d.K, dq_raw.get());
    cuda::l2norm_bwd(dt, s.k.get(), s.rstd_k.f32(), dk.get(), N * d.H, d.K, dk_raw.get());
    cuda::copy_cols(dt, dq_raw.get(), d.HK, 0, dc.get(), d.C, 0, N, d.HK);
    cuda::copy_cols(dt, dk_raw.get(), d.HK, 0, dc.get(), d.C, d.HK, N, d.HK);
    cuda::copy_cols(dt, dv.get(), d.GV, 0, dc.get(), d.C, 2 * d.HK, N, d.GV);
  }
  Buf dqkv = cx.act(N * d.C, "GDN d(qkv projection)");
  cuda::conv1d_bwd(dt, s.qkv.get(), p.w(pf + "conv1d.weight"), cx.pk.cu.i32(), cx.pk.nseg, dc.get(),
                   N, d.C, d.W, dqkv.get(), p.g(pf + "conv1d.weight"));
  dc = Buf();
  cuda::linear_bwd_dx(dt, dqkv.get(), p.w(pf + "in_proj_qkv.weight"), N, d.D, d.C, dt, dx, false);
  cuda::linear_bwd_dw(dt, s.x, dqkv.get(), N, d.D, d.C, p.g(pf + "in_proj_qkv.weight"));
  cuda::linear_bwd_dx(dt, dz.get(), p.w(pf + "in_proj_z.weight"), N, d.D, d.GV, dt, dx, true);
  cuda::linear_bwd_dw(dt, s.x, dz.get(), N, d.D, d.GV, p.g(pf + "in_proj_z.weight"));
  cuda::linear_bwd_dx(dt, db.get(), p.w(pf + "in_proj_b.weight"), N, d.D, d.G, dt, dx, true);
  cuda::linear_bwd_dw(dt, s.x, db.get(), N, d.D, d.G, p.g(pf + "in_proj_b.weight"));
  cuda::linear_bwd_dx(dt, da.get(), p.w(pf + "in_proj_a.weight"), N, d.D, d.G, dt, dx, true);
  cuda::linear_bwd_dw(dt, s.x, da.get(), N, d.D, d.G, p.g(pf + "in_proj_a.weight"));
}

}  // namespace deltatron::gpu
