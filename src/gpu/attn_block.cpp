// GPU gated full-attention mixer (same math as src/model/attn_block.cpp).
#include <cmath>

#include "cuda/attention.h"
#include "cuda/linear.h"
#include "cuda/norms.h"
#include "cuda/pointwise.h"
#include "gpu/blocks.h"

namespace deltatron::gpu {

namespace {
struct Dims {
  int64_t N, D, H, J, K, R;
  float scale;
  int sec[3];
  Dims(const Ctx& cx)
      : N(cx.N()),
        D(cx.c.hidden_size),
        H(cx.c.num_attention_heads),
        J(cx.c.num_key_value_heads),
        K(cx.c.head_dim),
        R(cx.c.rotary_dim()),
        scale(static_cast<float>(1.0 / std::sqrt(static_cast<double>(cx.c.head_dim)))),
        sec{cx.c.mrope_section[0], cx.c.mrope_section[1], cx.c.mrope_section[2]} {}
};
}  // namespace

void attn_fwd(const Ctx& cx, const std::string& pf, const void* x, float* resid, AttnSaved& s) {
  const Dims d(cx);
  const DType dt = cx.dt();
  const int64_t N = d.N, H = d.H, J = d.J, K = d.K;
  s.x = x;
  {
    // q_proj rows are per-head interleaved: head h owns [2hK, 2hK+K) query, then K gate columns.
    Buf qg = cx.act(N * H * 2 * K, "attention q/gate projection");
    cuda::linear_fwd(dt, x, cx.p.w(pf + "q_proj.weight"), N, d.D, H * 2 * K, dt, qg.get(), false);
    s.q_raw = cx.act(N * H * K, "attention q");
    s.gate = cx.act(N * H * K, "attention gate");
    cuda::copy_cols(dt, qg.get(), 2 * K, 0, s.q_raw.get(), K, 0, N * H, K);
    cuda::copy_cols(dt, qg.get(), 2 * K, K, s.gate.get(), K, 0, N * H, K);
  }
  s.k_raw = cx.act(N * J * K, "attention k");
  s.v = cx.act(N * J * K, "attention v");
  cuda::linear_fwd(dt, x, cx.p.w(pf + "k_proj.weight"), N, d.D, J * K, dt, s.k_raw.get(), false);
  cuda::linear_fwd(dt, x, cx.p.w(pf + "v_proj.weight"), N, d.D, J * K, dt, s.v.get(), false);

  s.q = cx.act(N * H * K, "attention q (normed)");
  s.k = cx.act(N * J * K, "attention k (normed)");
  s.rstd_q = cx.f32(N * H, "attention q rstd");
  s.rstd_k = cx.f32(N * J, "attention k rstd");
  cuda::rmsnorm_fwd(dt, s.q_raw.get(), dt, cx.p.w(pf + "q_norm.weight"), N * H, K,
                    cx.c.rms_norm_eps, s.q.get(), s.rstd_q.f32());
  cuda::rmsnorm_fwd(dt, s.k_raw.get(), dt, cx.p.w(pf + "k_norm.weight"), N * J, K,
                    cx.c.rms_norm_eps, s.k.get(), s.rstd_k.f32());
  cuda::rope_fwd(dt, s.q.get(), cx.pk.pos3.i32(), N, H, K, d.R, cx.c.rope_theta, d.sec);
  cuda::rope_fwd(dt, s.k.get(), cx.pk.pos3.i32(), N, J, K, d.R, cx.c.rope_theta, d.sec);

  s.a = cx.act(N * H * K, "attention output");
  s.lse = cx.f32(N * H, "attention lse");
  cuda::attention_fwd(dt, s.q.get(), s.k.get(), s.v.get(), cx.pk.cu.i32(), cx.pk.cu_host(),
                      cx.pk.nseg, N, H, J, K, d.scale, s.a.get(), s.lse.f32());
  s.gated = cx.act(N * H * K, "attention gated output");
  cuda::sigmoid_mul_fwd(dt, s.a.get(), s.gate.get(), N * H * K, s.gated.get());
  cuda::linear_fwd(dt, s.gated.get(), cx.p.w(pf + "o_proj.weight"), N, H * K, d.D, DType::f32,
                   resid, true);
}

void attn_bwd(const Ctx& cx, const std::string& pf, const AttnSaved& s, const void* dy, void* dx) {
  const Dims d(cx);
  const DType dt = cx.dt();
  const int64_t N = d.N, H = d.H, J = d.J, K = d.K;
  Params& p = cx.p;

  Buf da = cx.act(N * H * K, "attention d(output)");
  Buf dgate = cx.act(N * H * K, "attention d(gate)");
  {
    Buf dgated = cx.act(N * H * K, "attention d(gated)");
    cuda::linear_bwd_dx(dt, dy, p.w(pf + "o_proj.weight"), N, H * K, d.D, dt, dgated.get(), false);
    cuda::linear_bwd_dw(dt, s.gated.get(), dy, N, H * K, d.D, p.g(pf + "o_proj.weight"));
    cuda::sigmoid_mul_bwd(dt, s.a.get(), s.gate.get(), dgated.get(), N * H * K, da.get(),
                          dgate.get());
  }
  Buf dq = cx.act(N * H * K, "attention dq");
  Buf dk = cx.act(N * J * K, "attention dk");
  Buf dv = cx.act(N * J * K, "attention dv");
  cuda::attention_bwd(dt, s.q.get(), s.k.get(), s.v.get(), s.a.get(), s.lse.f32(), da.get(),
                      cx.pk.cu.i32(), cx.pk.cu_host(), cx.pk.nseg, N, H, J, K, d.scale, dq.get(),
                      dk.get(), dv.get());
  da = Buf();
  cuda::rope_bwd(dt, dq.get(), cx.pk.pos3.i32(), N, H, K, d.R, cx.c.rope_theta, d.sec);
  cuda::rope_bwd(dt, dk.get(), cx.pk.pos3.i32(), N, J, K, d.R, cx.c.rope_theta, d.sec);

  Buf dqg = cx.act(N * H * 2 * K, "attention d(q/gate projection)");
  {
    Buf dq_raw = cx.act(N * H * K, "attention dq (raw)");
    cuda::rmsnorm_bwd(dt, s.q_raw.get(), dt, p.w(pf + "q_norm.weight"), s.rstd_q.f32(), dq.get(),
                      N * H, K, dq_raw.get(), false, p.g(pf + "q_norm.weight"));
    cuda::copy_cols(dt, dq_raw.get(), K, 0, dqg.get(), 2 * K, 0, N * H, K);
    cuda::copy_cols(dt, dgate.get(), K, 0, dqg.get(), 2 * K, K, N * H, K);
  }
  Buf dk_raw = cx.act(N * J * K, "attention dk (raw)");
  cuda::rmsnorm_bwd(dt, s.k_raw.get(), dt, p.w(pf + "k_norm.weight"), s.rstd_k.f32(), dk.get(),
                    N * J, K, dk_raw.get(), false, p.g(pf + "k_norm.weight"));

  cuda::linear_bwd_dx(dt, dqg.get(), p.w(pf + "q_proj.weight"), N, d.D, H * 2 * K, dt, dx, false);
  cuda::linear_bwd_dw(dt, s.x, dqg.get(), N, d.D, H * 2 * K, p.g(pf + "q_proj.weight"));
  cuda::linear_bwd_dx(dt, dk_raw.get(), p.w(pf + "k_proj.weight"), N, d.D, J * K, dt, dx, true);
  cuda::linear_bwd_dw(dt, s.x, dk_raw.get(), N, d.D, J * K, p.g(pf + "k_proj.weight"));
  cuda::linear_bwd_dx(dt, dv.get(), p.w(pf + "v_proj.weight"), N, d.D, J * K, dt, dx, true);
  cuda::linear_bwd_dw(dt, s.x, dv.get(), N, d.D, J * K, p.g(pf + "v_proj.weight"));
}

}  // namespace deltatron::gpu
