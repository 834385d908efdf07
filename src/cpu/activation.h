// CPU reference for elementwise activations (SwiGLU, sigmoid gate) and their scalar helpers.
#pragma once

#include <cmath>
#include <cstdint>

namespace deltatron::cpu {

// sigmoid(x) = 1 / (1 + e^-x), evaluated so that exp never overflows: for x < 0 use
// e^x / (1 + e^x). Exact 0/1 saturation at large |x|, never NaN.
template <typename T>
inline T sigmoid(T x) {
  if (x >= T(0)) return T(1) / (T(1) + std::exp(-x));
  const T e = std::exp(x);
  return e / (T(1) + e);
}

// silu(x) = x * sigmoid(x).
template <typename T>
inline T silu(T x) {
  return x * sigmoid(x);
}

// d silu / dx = s + x s (1 - s) = s (1 + x (1 - s)), s = sigmoid(x).
template <typename T>
inline T silu_grad(T x) {
  const T s = sigmoid(x);
  return s * (T(1) + x * (T(1) - s));
}

// h = silu(gate) * up, elementwise over n = N*F values.
template <typename T>
void swiglu_fwd(const T* gate, const T* up, int64_t n, T* h);

// dgate = dh * up * silu'(gate), dup = dh * silu(gate) (both overwritten); h, when not null,
// = silu(gate) * up as swiglu_fwd writes it (the recomputation fused into the backward).
template <typename T>
void swiglu_bwd(const T* gate, const T* up, const T* dh, int64_t n, T* dgate, T* dup,
                T* h = nullptr);

// out = a * sigmoid(g), elementwise over n values.
template <typename T>
void sigmoid_mul_fwd(const T* a, const T* g, int64_t n, T* out);

// da = dout * sigmoid(g), dg = dout * a * sigmoid(g) (1 - sigmoid(g)) (both overwritten).
template <typename T>
void sigmoid_mul_bwd(const T* a, const T* g, const T* dout, int64_t n, T* da, T* dg);

// GELU, exact (tanh_approx = false: 0.5 x (1 + erf(x / sqrt 2))) or the tanh approximation;
// y overwritten.
template <typename T>
void gelu_fwd(const T* x, int64_t n, T* y, bool tanh_approx);

// dx = dy * gelu'(x), overwritten (dy may alias dx).
template <typename T>
void gelu_bwd(const T* x, const T* dy, int64_t n, T* dx, bool tanh_approx);

}  // namespace deltatron::cpu
