// Dense SwiGLU feed-forward block (see blocks.h).
#include "model/blocks.h"
#include "model/proj.h"
#include "model/tp_exchange.h"
#include "ops/activation.h"
#include "ops/linear.h"

namespace deltatron::model {

void mlp_fwd(const Ctx& cx, const std::string& pf, const View& x, const View& resid, MlpSaved& s) {
  const int64_t N = cx.N(), D = cx.c.hidden_size, F = cx.local(cx.c.intermediate_size);
  s.x = x;
  s.gate = cx.act(N * F, "MLP gate");
  s.up = cx.act(N * F, "MLP up");
  Buffer h = cx.act(N * F, "MLP hidden");
  proj_fwd(cx, pf + "gate_proj.weight", x, D, F, s.gate, false);
  proj_fwd(cx, pf + "up_proj.weight", x, D, F, s.up, false);
  ops::swiglu_fwd(s.gate, s.up, N * F, h);
  tp_proj_fwd_sum(cx, pf + "down_proj.weight", h, F, D, resid);
  if (!cx.selective) s.h = std::move(h);  // else recomputed in the backward
}

void mlp_bwd(const Ctx& cx, const std::string& pf, const MlpSaved& s, const View& dy,
             const View& dx) {
  const int64_t N = cx.N(), D = cx.c.hidden_size, F = cx.local(cx.c.intermediate_size);
  Buffer dgate = cx.act(N * F, "MLP d(gate)");
  Buffer dup = cx.act(N * F, "MLP d(up)");
  const std::string down = pf + "down_proj.weight";
  if (s.h.numel() == 0 && !proj_adapted(cx, down)) {
    // Selective recomputation: dh = dy W_down first, then one pass turns dh into the gate and up
    // gradients and rebuilds h = silu(gate) * up (bitwise the forward's), then dW_down.
    Buffer h_re = cx.act(N * F, "MLP hidden (recomputed)");
    Buffer dh = cx.act(N * F, "MLP d(hidden)");
    proj_bwd_dx(cx, down, dy, F, D, dh, false);
    ops::swiglu_bwd(s.gate, s.up, dh, N * F, dgate, dup, h_re);
    proj_bwd_dw(cx, down, h_re, dy, F, D);
  } else {
    Buffer h_re;  // selective recomputation under an adapter: h first, the forward's op
    if (s.h.numel() == 0) {
      h_re = cx.act(N * F, "MLP hidden (recomputed)");
      ops::swiglu_fwd(s.gate, s.up, N * F, h_re);
    }
    const View& h = s.h.numel() == 0 ? h_re.view() : s.h.view();
    Buffer dh = cx.act(N * F, "MLP d(hidden)");
    proj_bwd(cx, down, h, dy, F, D, dh, false);
    ops::swiglu_bwd(s.gate, s.up, dh, N * F, dgate, dup);
  }
  proj_bwd(cx, pf + "gate_proj.weight", s.x, dgate, D, F, dx, false);
  proj_bwd(cx, pf + "up_proj.weight", s.x, dup, D, F, dx, true);
}

}  // namespace deltatron::model
