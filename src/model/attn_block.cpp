// Gated full-attention mixer: forward and hand-written backward (see blocks.h).
#include <cmath>

#include "model/blocks.h"
#include "model/proj.h"
#include "model/tp_exchange.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/tensor.h"

namespace deltatron::model {

namespace {
struct Dims {
  int64_t N, D, H, J, K, R;
  float scale;
  int sec[3];
  explicit Dims(const Ctx& cx)
      : N(cx.N()),
        D(cx.c.hidden_size),
        H(cx.local(cx.c.num_attention_heads)),  // this rank's heads (tensor parallel)
        J(cx.local(cx.c.num_key_value_heads)),
        K(cx.c.head_dim),
        R(cx.c.rotary_dim()),
        scale(static_cast<float>(1.0 / std::sqrt(static_cast<double>(cx.c.head_dim)))),
        sec{cx.c.mrope_section[0], cx.c.mrope_section[1], cx.c.mrope_section[2]} {}
};

// q, k = RoPE(RMSNorm_zc(q_raw; q_norm)), RoPE(RMSNorm_zc(k_raw; k_norm)) with their rstd: run
// by the forward and, under selective recomputation, again by the backward (same ops, same bits).
struct QK {
  Buffer q, k, rstd_q, rstd_k;
};
QK attn_qk(const Ctx& cx, const Dims& d, const std::string& pf, const AttnSaved& s) {
  const int64_t N = d.N, H = d.H, J = d.J, K = d.K;
  const Params& p = cx.p;
  QK r{cx.act(N * H * K, "attention q (normed)"), cx.act(N * J * K, "attention k (normed)"),
       cx.f32(N * H, "attention q rstd"), cx.f32(N * J, "attention k rstd")};
  ops::rmsnorm_fwd(s.q_raw, p.w(pf + "q_norm.weight"), N * H, K, cx.c.rms_norm_eps, r.q, r.rstd_q);
  ops::rmsnorm_fwd(s.k_raw, p.w(pf + "k_norm.weight"), N * J, K, cx.c.rms_norm_eps, r.k, r.rstd_k);
  ops::rope_fwd(r.q, cx.b.pos3, N, H, K, d.R, cx.c.rope_theta, d.sec);
  ops::rope_fwd(r.k, cx.b.pos3, N, J, K, d.R, cx.c.rope_theta, d.sec);
  return r;
}
}  // namespace

void attn_fwd(const Ctx& cx, const std::string& pf, const View& x, const View& resid,
              AttnSaved& s) {
  const Dims d(cx);
  const int64_t N = d.N, H = d.H, J = d.J, K = d.K;
  s.x = x;
  {
    // q_proj rows are per-head interleaved: head h owns [2hK, 2hK+K) query, then K gate columns.
    Buffer qg = cx.act(N * H * 2 * K, "attention q/gate projection");
    proj_fwd(cx, pf + "q_proj.weight", x, d.D, H * 2 * K, qg, false);
    s.q_raw = cx.act(N * H * K, "attention q");
    s.gate = cx.act(N * H * K, "attention gate");
    ops::copy_cols(qg, 2 * K, 0, s.q_raw, K, 0, N * H, K);
    ops::copy_cols(qg, 2 * K, K, s.gate, K, 0, N * H, K);
  }
  s.k_raw = cx.act(N * J * K, "attention k");
  s.v = cx.act(N * J * K, "attention v");
  proj_fwd(cx, pf + "k_proj.weight", x, d.D, J * K, s.k_raw, false);
  proj_fwd(cx, pf + "v_proj.weight", x, d.D, J * K, s.v, false);

  QK qk = attn_qk(cx, d, pf, s);
  s.a = cx.act(N * H * K, "attention output");
  s.lse = cx.f32(N * H, "attention lse");
  ops::attention_fwd(qk.q, qk.k, s.v, cx.b.cu, cx.b.seg, N, H, J, K, d.scale, s.a, s.lse);
  Buffer gated = cx.act(N * H * K, "attention gated output");
  ops::sigmoid_mul_fwd(s.a, s.gate, N * H * K, gated);
  tp_proj_fwd_sum(cx, pf + "o_proj.weight", gated, H * K, d.D, resid);
  if (cx.selective) return;  // q, k and gated are recomputed in the backward
  s.q = std::move(qk.q);
  s.k = std::move(qk.k);
  s.rstd_q = std::move(qk.rstd_q);
  s.rstd_k = std::move(qk.rstd_k);
  s.gated = std::move(gated);
}

void attn_bwd(const Ctx& cx, const std::string& pf, const AttnSaved& s, const View& dy,
              const View& dx) {
  const Dims d(cx);
  const int64_t N = d.N, H = d.H, J = d.J, K = d.K;
  const Params& p = cx.p;

  const bool re = s.q.numel() == 0 && N > 0;  // selective recomputation (see attn_fwd)
  Buffer da = cx.act(N * H * K, "attention d(output)");
  Buffer dgate = cx.act(N * H * K, "attention d(gate)");
  {
    Buffer gated_re;
    if (re) {
      gated_re = cx.act(N * H * K, "attention gated output (recomputed)");
      ops::sigmoid_mul_fwd(s.a, s.gate, N * H * K, gated_re);
    }
    Buffer dgated = cx.act(N * H * K, "attention d(gated)");
    proj_bwd(cx, pf + "o_proj.weight", re ? gated_re.view() : s.gated.view(), dy, H * K, d.D,
             dgated, false);
    ops::sigmoid_mul_bwd(s.a, s.gate, dgated, N * H * K, da, dgate);
  }
  QK qk = re ? attn_qk(cx, d, pf, s) : QK{};
  const View& q = re ? qk.q.view() : s.q.view();
  const View& k = re ? qk.k.view() : s.k.view();
  const View& rstd_q = re ? qk.rstd_q.view() : s.rstd_q.view();
  const View& rstd_k = re ? qk.rstd_k.view() : s.rstd_k.view();
  Buffer dq = cx.act(N * H * K, "attention dq");
  Buffer dk = cx.act(N * J * K, "attention dk");
  Buffer dv = cx.act(N * J * K, "attention dv");
  ops::attention_bwd(q, k, s.v, s.a, s.lse, da, cx.b.cu, cx.b.seg, N, H, J, K, d.scale, dq, dk, dv);
  da = Buffer();
  qk.q = Buffer();
  qk.k = Buffer();
  ops::rope_bwd(dq, cx.b.pos3, N, H, K, d.R, cx.c.rope_theta, d.sec);
  ops::rope_bwd(dk, cx.b.pos3, N, J, K, d.R, cx.c.rope_theta, d.sec);

  Buffer dqg = cx.act(N * H * 2 * K, "attention d(q/gate projection)");
  {
    Buffer dq_raw = cx.act(N * H * K, "attention dq (raw)");
    ops::rmsnorm_bwd(s.q_raw, p.w(pf + "q_norm.weight"), rstd_q, dq, N * H, K, dq_raw, false,
                     cx.g(pf + "q_norm.weight"));
    ops::copy_cols(dq_raw, K, 0, dqg, 2 * K, 0, N * H, K);
    ops::copy_cols(dgate, K, 0, dqg, 2 * K, K, N * H, K);
  }
  Buffer dk_raw = cx.act(N * J * K, "attention dk (raw)");
  ops::rmsnorm_bwd(s.k_raw, p.w(pf + "k_norm.weight"), rstd_k, dk, N * J, K, dk_raw, false,
                   cx.g(pf + "k_norm.weight"));

  proj_bwd(cx, pf + "q_proj.weight", s.x, dqg, d.D, H * 2 * K, dx, false);
  proj_bwd(cx, pf + "k_proj.weight", s.x, dk_raw, d.D, J * K, dx, true);
  proj_bwd(cx, pf + "v_proj.weight", s.x, dv, d.D, J * K, dx, true);
}

}  // namespace deltatron::model
