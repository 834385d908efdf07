// Contract for the elementwise activation op family: SwiGLU, the sigmoid output gate and GELU.
//
// Shape suffixes: N tokens, F FFN width. These ops are elementwise, so they take a flat element
// count n (= N*F for SwiGLU; any shape for sigmoid_mul). Views (docs/ops-views.md), one device
// per call: every tensor [n] in one dtype, f32 or bf16 on CUDA, f32 on the CPU.
#pragma once

#include <cstdint>

#include "core/view.h"

namespace deltatron::ops {

// SwiGLU (spec 2.9, 2.10): h = silu(gate) * up, silu(x) = x * sigmoid(x).
//   gate [n] in (gate_proj(x));  up [n] in (up_proj(x));  h [n] out, overwritten.
// Saved for backward: gate and up (the inputs).
void swiglu_fwd(const core::View& gate, const core::View& up, int64_t n, const core::View& h);

// SwiGLU backward:
//   dgate = dh * up * silu'(gate),  silu'(x) = s (1 + x (1 - s)), s = sigmoid(x)
//   dup   = dh * silu(gate)
//   gate, up [n] in;  dh [n] in;  dgate, dup [n] out, OVERWRITTEN (dh may alias either one);
//   h [n] out or empty: silu(gate) * up, bitwise swiglu_fwd's (selective recomputation's h made
//   in the same pass; it must not alias dh).
void swiglu_bwd(const core::View& gate, const core::View& up, const core::View& dh, int64_t n,
                const core::View& dgate, const core::View& dup, const core::View& h = {});

// Sigmoid gate (attention output gate, MoE shared-expert gate): out = a * sigmoid(g).
//   a [n] in;  g [n] in (pre-sigmoid gate logits);  out [n] out, overwritten.
// Saved for backward: a and g.
void sigmoid_mul_fwd(const core::View& a, const core::View& g, int64_t n, const core::View& out);

// Sigmoid gate backward: da = dout * s, dg = dout * a * s (1 - s), s = sigmoid(g).
//   a, g, dout [n] in;  da, dg [n] out, OVERWRITTEN (dout may alias either one).
void sigmoid_mul_bwd(const core::View& a, const core::View& g, const core::View& dout, int64_t n,
                     const core::View& da, const core::View& dg);

// GELU, the vision tower's activations (spec 3.5, 3.6): the exact form (torch nn.GELU(), the
// patch merger) and the tanh approximation (gelu_pytorch_tanh, the blocks' MLP):
//   erf:  y = 0.5 x (1 + erf(x / sqrt 2))
//   tanh: y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
//   x [n] in;  y [n] out, overwritten (may alias x).
// Saved for backward: x.
enum class Gelu { erf, tanh };
void gelu_fwd(const core::View& x, int64_t n, const core::View& y, Gelu kind);

// GELU backward: dx = dy * gelu'(x), with
//   erf:  gelu'(x) = 0.5 (1 + erf(x / sqrt 2)) + x exp(-x^2 / 2) / sqrt(2 pi)
//   tanh: gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2), t = tanh(u)
//   x, dy [n] in;  dx [n] out, OVERWRITTEN (may alias dy).
void gelu_bwd(const core::View& x, const core::View& dy, int64_t n, const core::View& dx,
              Gelu kind);

}  // namespace deltatron::ops
