// Gated full-attention mixer: forward and hand-written backward over a pack.
#include "model/attn_block.h"

#include <cmath>

#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"

namespace deltatron::model {

namespace {

// The block's six weights, looked up once per fwd / bwd call.
struct AttnWeights {
  const float *Wq, *Wk, *Wv, *Wo, *wqn, *wkn;
  AttnWeights(const TensorMap& params, const std::string& prefix)
      : Wq(weight(params, prefix + "q_proj.weight").ptr()),
        Wk(weight(params, prefix + "k_proj.weight").ptr()),
        Wv(weight(params, prefix + "v_proj.weight").ptr()),
        Wo(weight(params, prefix + "o_proj.weight").ptr()),
        wqn(weight(params, prefix + "q_norm.weight").ptr()),
        wkn(weight(params, prefix + "k_norm.weight").ptr()) {}
};

}  // namespace

void AttnBlock::fwd(core::Device dev, const Config& c, const TensorMap& params,
                    const data::Pack& pack, const float* x_ND, float* y_ND, AttnSaved& s) const {
  const int64_t N = pack.N, D = c.hidden_size, H = c.num_attention_heads, J = c.num_key_value_heads,
                K = c.head_dim;
  const AttnWeights w(params, prefix);

  s.x_ND.assign(x_ND, x_ND + N * D);
  // q_proj rows are per-head interleaved: head h owns [2hK, 2hK+K) query, [2hK+K, 2(h+1)K) gate.
  std::vector<float> qg(N * H * 2 * K);
  ops::linear_fwd(dev, x_ND, w.Wq, N, D, H * 2 * K, qg.data());
  s.q_raw_NHK.resize(N * H * K);
  s.gate_NHK.resize(N * H * K);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h) {
      const float* src = &qg[(n * H + h) * 2 * K];
      std::copy(src, src + K, &s.q_raw_NHK[(n * H + h) * K]);
      std::copy(src + K, src + 2 * K, &s.gate_NHK[(n * H + h) * K]);
    }
  s.k_raw_NJK.resize(N * J * K);
  s.v_NJK.resize(N * J * K);
  ops::linear_fwd(dev, x_ND, w.Wk, N, D, J * K, s.k_raw_NJK.data());
  ops::linear_fwd(dev, x_ND, w.Wv, N, D, J * K, s.v_NJK.data());

  s.q_NHK.resize(N * H * K);
  s.k_NJK.resize(N * J * K);
  s.rstd_q_NH.resize(N * H);
  s.rstd_k_NJ.resize(N * J);
  ops::rmsnorm_fwd(dev, s.q_raw_NHK.data(), w.wqn, N * H, K, c.rms_norm_eps, s.q_NHK.data(),
                   s.rstd_q_NH.data());
  ops::rmsnorm_fwd(dev, s.k_raw_NJK.data(), w.wkn, N * J, K, c.rms_norm_eps, s.k_NJK.data(),
                   s.rstd_k_NJ.data());
  const int sec[3] = {c.mrope_section[0], c.mrope_section[1], c.mrope_section[2]};
  const int64_t R = c.rotary_dim();
  ops::rope_fwd(dev, s.q_NHK.data(), pack.position_ids.data(), N, H, K, R, c.rope_theta, sec);
  ops::rope_fwd(dev, s.k_NJK.data(), pack.position_ids.data(), N, J, K, R, c.rope_theta, sec);

  s.a_NHK.resize(N * H * K);
  s.lse_NH.resize(N * H);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(K)));
  ops::attention_fwd(dev, s.q_NHK.data(), s.k_NJK.data(), s.v_NJK.data(), pack.segments(), N, H, J,
                     K, scale, s.a_NHK.data(), s.lse_NH.data());
  s.gated_NHK.resize(N * H * K);
  ops::sigmoid_mul_fwd(dev, s.a_NHK.data(), s.gate_NHK.data(), N * H * K, s.gated_NHK.data());
  ops::linear_fwd(dev, s.gated_NHK.data(), w.Wo, N, H * K, D, y_ND);
}

void AttnBlock::bwd(core::Device dev, const Config& c, const TensorMap& params, TensorMap& grads,
                    const data::Pack& pack, const AttnSaved& s, const float* dy_ND,
                    float* dx_ND) const {
  const int64_t N = pack.N, D = c.hidden_size, H = c.num_attention_heads, J = c.num_key_value_heads,
                K = c.head_dim;
  const AttnWeights w(params, prefix);

  std::vector<float> dgated(N * H * K), da(N * H * K), dgate(N * H * K);
  ops::linear_bwd(dev, s.gated_NHK.data(), w.Wo, dy_ND, N, H * K, D, dgated.data(), false,
                  grad(grads, prefix + "o_proj.weight"));
  ops::sigmoid_mul_bwd(dev, s.a_NHK.data(), s.gate_NHK.data(), dgated.data(), N * H * K, da.data(),
                       dgate.data());

  std::vector<float> dq(N * H * K), dk(N * J * K), dv(N * J * K);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(K)));
  ops::attention_bwd(dev, s.q_NHK.data(), s.k_NJK.data(), s.v_NJK.data(), s.a_NHK.data(),
                     s.lse_NH.data(), da.data(), pack.segments(), N, H, J, K, scale, dq.data(),
                     dk.data(), dv.data());
  const int sec[3] = {c.mrope_section[0], c.mrope_section[1], c.mrope_section[2]};
  const int64_t R = c.rotary_dim();
  ops::rope_bwd(dev, dq.data(), pack.position_ids.data(), N, H, K, R, c.rope_theta, sec);
  ops::rope_bwd(dev, dk.data(), pack.position_ids.data(), N, J, K, R, c.rope_theta, sec);

  std::vector<float> dq_raw(N * H * K), dk_raw(N * J * K);
  ops::rmsnorm_bwd(dev, s.q_raw_NHK.data(), w.wqn, s.rstd_q_NH.data(), dq.data(), N * H, K,
                   dq_raw.data(), grad(grads, prefix + "q_norm.weight"));
  ops::rmsnorm_bwd(dev, s.k_raw_NJK.data(), w.wkn, s.rstd_k_NJ.data(), dk.data(), N * J, K,
                   dk_raw.data(), grad(grads, prefix + "k_norm.weight"));

  std::vector<float> dqg(N * H * 2 * K);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h) {
      float* dst = &dqg[(n * H + h) * 2 * K];
      std::copy(&dq_raw[(n * H + h) * K], &dq_raw[(n * H + h + 1) * K], dst);
      std::copy(&dgate[(n * H + h) * K], &dgate[(n * H + h + 1) * K], dst + K);
    }
  ops::linear_bwd(dev, s.x_ND.data(), w.Wq, dqg.data(), N, D, H * 2 * K, dx_ND, false,
                  grad(grads, prefix + "q_proj.weight"));
  ops::linear_bwd(dev, s.x_ND.data(), w.Wk, dk_raw.data(), N, D, J * K, dx_ND, true,
                  grad(grads, prefix + "k_proj.weight"));
  ops::linear_bwd(dev, s.x_ND.data(), w.Wv, dv.data(), N, D, J * K, dx_ND, true,
                  grad(grads, prefix + "v_proj.weight"));
}

}  // namespace deltatron::model
