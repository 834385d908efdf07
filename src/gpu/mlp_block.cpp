// GPU dense SwiGLU feed-forward block (same math as src/model/mlp_block.cpp).
#include "cuda/linear.h"
#include "cuda/pointwise.h"
#include "gpu/blocks.h"

namespace deltatron::gpu {

void mlp_fwd(const Ctx& cx, const std::string& pf, const void* x, float* resid, MlpSaved& s) {
  const DType dt = cx.dt();
  const int64_t N = cx.N(), D = cx.c.hidden_size, F = cx.c.intermediate_size;
  Params& p = cx.p;
  s.x = x;
  s.gate = cx.act(N * F, "MLP gate");
  s.up = cx.act(N * F, "MLP up");
  s.h = cx.act(N * F, "MLP hidden");
  cuda::linear_fwd(dt, x, p.w(pf + "gate_proj.weight"), N, D, F, dt, s.gate.get(), false);
  cuda::linear_fwd(dt, x, p.w(pf + "up_proj.weight"), N, D, F, dt, s.up.get(), false);
  cuda::swiglu_fwd(dt, s.gate.get(), s.up.get(), N * F, s.h.get());
  cuda::linear_fwd(dt, s.h.get(), p.w(pf + "down_proj.weight"), N, F, D, DType::f32, resid, true);
}

void mlp_bwd(const Ctx& cx, const std::string& pf, const MlpSaved& s, const void* dy, void* dx) {
  const DType dt = cx.dt();
  const int64_t N = cx.N(), D = cx.c.hidden_size, F = cx.c.intermediate_size;
  Params& p = cx.p;
  Buf dgate = cx.act(N * F, "MLP d(gate)");
  Buf dup = cx.act(N * F, "MLP d(up)");
  {
    Buf dh = cx.act(N * F, "MLP d(hidden)");
    cuda::linear_bwd_dx(dt, dy, p.w(pf + "down_proj.weight"), N, F, D, dt, dh.get(), false);
    cuda::linear_bwd_dw(dt, s.h.get(), dy, N, F, D, p.g(pf + "down_proj.weight"));
    cuda::swiglu_bwd(dt, s.gate.get(), s.up.get(), dh.get(), N * F, dgate.get(), dup.get());
  }
  cuda::linear_bwd_dx(dt, dgate.get(), p.w(pf + "gate_proj.weight"), N, D, F, dt, dx, false);
  cuda::linear_bwd_dw(dt, s.x, dgate.get(), N, D, F, p.g(pf + "gate_proj.weight"));
  cuda::linear_bwd_dx(dt, dup.get(), p.w(pf + "up_proj.weight"), N, D, F, dt, dx, true);
  cuda::linear_bwd_dw(dt, s.x, dup.get(), N, D, F, p.g(pf + "up_proj.weight"));
}

}  // namespace deltatron::gpu
