// Dense SwiGLU feed-forward block (see blocks.h).
#include "model/blocks.h"
#include "ops/activation.h"
#include "ops/linear.h"

namespace deltatron::model {

void mlp_fwd(const Ctx& cx, const std::string& pf, const View& x, const View& resid, MlpSaved& s) {
  const int64_t N = cx.N(), D = cx.c.hidden_size, F = cx.c.intermediate_size;
  const Params& p = cx.p;
  s.x = x;
  s.gate = cx.act(N * F, "MLP gate");
  s.up = cx.act(N * F, "MLP up");
  s.h = cx.act(N * F, "MLP hidden");
  ops::linear_fwd(x, p.w(pf + "gate_proj.weight"), N, D, F, s.gate, false);
  ops::linear_fwd(x, p.w(pf + "up_proj.weight"), N, D, F, s.up, false);
  ops::swiglu_fwd(s.gate, s.up, N * F, s.h);
  ops::linear_fwd(s.h, p.w(pf + "down_proj.weight"), N, F, D, resid, true);
}

void mlp_bwd(const Ctx& cx, const std::string& pf, const MlpSaved& s, const View& dy,
             const View& dx) {
  const int64_t N = cx.N(), D = cx.c.hidden_size, F = cx.c.intermediate_size;
  const Params& p = cx.p;
  Buffer dgate = cx.act(N * F, "MLP d(gate)");
  Buffer dup = cx.act(N * F, "MLP d(up)");
  {
    Buffer dh = cx.act(N * F, "MLP d(hidden)");
    ops::linear_bwd_dx(dy, p.w(pf + "down_proj.weight"), N, F, D, dh, false);
    ops::linear_bwd_dw(s.h, dy, N, F, D, p.g(pf + "down_proj.weight"));
    ops::swiglu_bwd(s.gate, s.up, dh, N * F, dgate, dup);
  }
  ops::linear_bwd_dx(dgate, p.w(pf + "gate_proj.weight"), N, D, F, dx, false);
  ops::linear_bwd_dw(s.x, dgate, N, D, F, p.g(pf + "gate_proj.weight"));
  ops::linear_bwd_dx(dup, p.w(pf + "up_proj.weight"), N, D, F, dx, true);
  ops::linear_bwd_dw(s.x, dup, N, D, F, p.g(pf + "up_proj.weight"));
}

}  // namespace deltatron::model
