// Dense SwiGLU feed-forward block: forward and hand-written backward.
#include "model/mlp_block.h"

#include "ops/activation.h"
#include "ops/linear.h"

namespace deltatron::model {

void MlpBlock::fwd(core::Device dev, const Config& c, const TensorMap& params, int64_t N,
                   const float* x_ND, float* y_ND, MlpSaved& s) const {
  const int64_t D = c.hidden_size, F = c.intermediate_size;
  s.x_ND.assign(x_ND, x_ND + N * D);
  s.gate_NF.resize(N * F);
  s.up_NF.resize(N * F);
  s.h_NF.resize(N * F);
  ops::linear_fwd(dev, x_ND, weight(params, prefix + "gate_proj.weight").ptr(), N, D, F,
                  s.gate_NF.data());
  ops::linear_fwd(dev, x_ND, weight(params, prefix + "up_proj.weight").ptr(), N, D, F,
                  s.up_NF.data());
  ops::swiglu_fwd(dev, s.gate_NF.data(), s.up_NF.data(), N * F, s.h_NF.data());
  ops::linear_fwd(dev, s.h_NF.data(), weight(params, prefix + "down_proj.weight").ptr(), N, F, D,
                  y_ND);
}

void MlpBlock::bwd(core::Device dev, const Config& c, const TensorMap& params, TensorMap& grads,
                   int64_t N, const MlpSaved& s, const float* dy_ND, float* dx_ND) const {
  const int64_t D = c.hidden_size, F = c.intermediate_size;
  std::vector<float> dh(N * F), dgate(N * F), dup(N * F);
  ops::linear_bwd(dev, s.h_NF.data(), weight(params, prefix + "down_proj.weight").ptr(), dy_ND, N,
                  F, D, dh.data(), false, grad(grads, prefix + "down_proj.weight"));
  ops::swiglu_bwd(dev, s.gate_NF.data(), s.up_NF.data(), dh.data(), N * F, dgate.data(),
                  dup.data());
  ops::linear_bwd(dev, s.x_ND.data(), weight(params, prefix + "gate_proj.weight").ptr(),
                  dgate.data(), N, D, F, dx_ND, false, grad(grads, prefix + "gate_proj.weight"));
  ops::linear_bwd(dev, s.x_ND.data(), weight(params, prefix + "up_proj.weight").ptr(), dup.data(),
                  N, D, F, dx_ND, true, grad(grads, prefix + "up_proj.weight"));
}

}  // namespace deltatron::model
