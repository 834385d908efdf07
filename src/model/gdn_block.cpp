// Gated DeltaNet mixer: forward and hand-written backward over a pack.
#include "model/gdn_block.h"

#include <cmath>

#include "ops/conv1d.h"
#include "ops/gdn.h"
#include "ops/gdn_gates.h"
#include "ops/l2norm.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"

namespace deltatron::model {

namespace {
constexpr double kL2NormEps = 1e-6;  // FLA / HF l2norm eps

struct Dims {
  int64_t N, D, H, G, K, V, C, W;
  Dims(const Config& c, int64_t n)
      : N(n),
        D(c.hidden_size),
        H(c.linear_num_key_heads),
        G(c.linear_num_value_heads),
        K(c.linear_key_head_dim),
        V(c.linear_value_head_dim),
        C(2 * c.linear_num_key_heads * c.linear_key_head_dim +
          c.linear_num_value_heads * c.linear_value_head_dim),
        W(c.linear_conv_kernel_dim) {}
};
}  // namespace

void GdnBlock::fwd(core::Device dev, const Config& c, const TensorMap& params,
                   const data::Pack& pack, const float* x_ND, float* y_ND, GdnSaved& s) const {
  const Dims d(c, pack.N);
  const int64_t N = d.N, HK = d.H * d.K, GV = d.G * d.V;
  s.x_ND.assign(x_ND, x_ND + N * d.D);
  s.qkv_NC.resize(N * d.C);
  ops::linear_fwd(dev, x_ND, weight(params, prefix + "in_proj_qkv.weight").ptr(), N, d.D, d.C,
                  s.qkv_NC.data());
  s.c_NC.resize(N * d.C);
  ops::conv1d_fwd(dev, s.qkv_NC.data(), weight(params, prefix + "conv1d.weight").ptr(),
                  pack.segments(), N, d.C, d.W, s.c_NC.data());

  // Split the conv output columns [q | k | v] into contiguous head-major tensors.
  std::vector<float> q_raw(N * HK), k_raw(N * HK);
  s.v_NGV.resize(N * GV);
  for (int64_t n = 0; n < N; ++n) {
    const float* row = &s.c_NC[n * d.C];
    std::copy(row, row + HK, &q_raw[n * HK]);
    std::copy(row + HK, row + 2 * HK, &k_raw[n * HK]);
    std::copy(row + 2 * HK, row + 2 * HK + GV, &s.v_NGV[n * GV]);
  }
  s.q_NHK.resize(N * HK);
  s.k_NHK.resize(N * HK);
  s.rstd_q_NH.resize(N * d.H);
  s.rstd_k_NH.resize(N * d.H);
  ops::l2norm_fwd(dev, q_raw.data(), N * d.H, d.K, kL2NormEps, s.q_NHK.data(), s.rstd_q_NH.data());
  ops::l2norm_fwd(dev, k_raw.data(), N * d.H, d.K, kL2NormEps, s.k_NHK.data(), s.rstd_k_NH.data());

  s.z_NGV.resize(N * GV);
  s.b_NG.resize(N * d.G);
  s.a_NG.resize(N * d.G);
  ops::linear_fwd(dev, x_ND, weight(params, prefix + "in_proj_z.weight").ptr(), N, d.D, GV,
                  s.z_NGV.data());
  ops::linear_fwd(dev, x_ND, weight(params, prefix + "in_proj_b.weight").ptr(), N, d.D, d.G,
                  s.b_NG.data());
  ops::linear_fwd(dev, x_ND, weight(params, prefix + "in_proj_a.weight").ptr(), N, d.D, d.G,
                  s.a_NG.data());
  s.beta_NG.resize(N * d.G);
  s.g_NG.resize(N * d.G);
  ops::gdn_gates_fwd(dev, s.b_NG.data(), s.a_NG.data(), weight(params, prefix + "A_log").ptr(),
                     weight(params, prefix + "dt_bias").ptr(), N, d.G, s.beta_NG.data(),
                     s.g_NG.data());

  s.o_NGV.resize(N * GV);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d.K)));
  ops::gdn_chunk_fwd(dev, s.q_NHK.data(), s.k_NHK.data(), s.v_NGV.data(), s.g_NG.data(),
                     s.beta_NG.data(), pack.segments(), N, d.H, d.G, d.K, d.V, scale,
                     s.o_NGV.data(), nullptr);
  s.yn_NGV.resize(N * GV);
  s.rstd_o_NG.resize(N * d.G);
  ops::rmsnorm_gated_fwd(dev, s.o_NGV.data(), s.z_NGV.data(),
                         weight(params, prefix + "norm.weight").ptr(), N * d.G, d.V, c.rms_norm_eps,
                         s.yn_NGV.data(), s.rstd_o_NG.data());
  ops::linear_fwd(dev, s.yn_NGV.data(), weight(params, prefix + "out_proj.weight").ptr(), N, GV,
                  d.D, y_ND);
}

void GdnBlock::bwd(core::Device dev, const Config& c, const TensorMap& params, TensorMap& grads,
                   const data::Pack& pack, const GdnSaved& s, const float* dy_ND,
                   float* dx_ND) const {
  const Dims d(c, pack.N);
  const int64_t N = d.N, HK = d.H * d.K, GV = d.G * d.V;

  std::vector<float> dyn(N * GV), do_(N * GV), dz(N * GV);
  ops::linear_bwd(dev, s.yn_NGV.data(), weight(params, prefix + "out_proj.weight").ptr(), dy_ND, N,
                  GV, d.D, dyn.data(), false, grad(grads, prefix + "out_proj.weight"));
  ops::rmsnorm_gated_bwd(dev, s.o_NGV.data(), s.z_NGV.data(),
                         weight(params, prefix + "norm.weight").ptr(), s.rstd_o_NG.data(),
                         dyn.data(), N * d.G, d.V, do_.data(), dz.data(),
                         grad(grads, prefix + "norm.weight"));

  std::vector<float> dq(N * HK), dk(N * HK), dv(N * GV), dg(N * d.G), dbeta(N * d.G);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d.K)));
  ops::gdn_chunk_bwd(dev, s.q_NHK.data(), s.k_NHK.data(), s.v_NGV.data(), s.g_NG.data(),
                     s.beta_NG.data(), pack.segments(), N, d.H, d.G, d.K, d.V, scale, do_.data(),
                     dq.data(), dk.data(), dv.data(), dg.data(), dbeta.data());

  std::vector<float> db(N * d.G), da(N * d.G);
  ops::gdn_gates_bwd(dev, s.b_NG.data(), s.a_NG.data(), weight(params, prefix + "A_log").ptr(),
                     weight(params, prefix + "dt_bias").ptr(), dbeta.data(), dg.data(), N, d.G,
                     db.data(), da.data(), grad(grads, prefix + "A_log"),
                     grad(grads, prefix + "dt_bias"));

  std::vector<float> dq_raw(N * HK), dk_raw(N * HK);
  ops::l2norm_bwd(dev, s.q_NHK.data(), s.rstd_q_NH.data(), dq.data(), N * d.H, d.K, dq_raw.data());
  ops::l2norm_bwd(dev, s.k_NHK.data(), s.rstd_k_NH.data(), dk.data(), N * d.H, d.K, dk_raw.data());

  std::vector<float> dc(N * d.C), dqkv(N * d.C);
  for (int64_t n = 0; n < N; ++n) {
    float* row = &dc[n * d.C];
    std::copy(&dq_raw[n * HK], &dq_raw[(n + 1) * HK], row);
    std::copy(&dk_raw[n * HK], &dk_raw[(n + 1) * HK], row + HK);
    std::copy(&dv[n * GV], &dv[(n + 1) * GV], row + 2 * HK);
  }
  ops::conv1d_bwd(dev, s.qkv_NC.data(), weight(params, prefix + "conv1d.weight").ptr(),
                  pack.segments(), dc.data(), N, d.C, d.W, dqkv.data(),
                  grad(grads, prefix + "conv1d.weight"));

  const float* x = s.x_ND.data();
  ops::linear_bwd(dev, x, weight(params, prefix + "in_proj_qkv.weight").ptr(), dqkv.data(), N, d.D,
                  d.C, dx_ND, false, grad(grads, prefix + "in_proj_qkv.weight"));
  ops::linear_bwd(dev, x, weight(params, prefix + "in_proj_z.weight").ptr(), dz.data(), N, d.D, GV,
                  dx_ND, true, grad(grads, prefix + "in_proj_z.weight"));
  ops::linear_bwd(dev, x, weight(params, prefix + "in_proj_b.weight").ptr(), db.data(), N, d.D, d.G,
                  dx_ND, true, grad(grads, prefix + "in_proj_b.weight"));
  ops::linear_bwd(dev, x, weight(params, prefix + "in_proj_a.weight").ptr(), da.data(), N, d.D, d.G,
                  dx_ND, true, grad(grads, prefix + "in_proj_a.weight"));
}

}  // namespace deltatron::model
