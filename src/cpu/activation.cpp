// CPU reference for elementwise activations (SwiGLU, sigmoid gate).
#include "cpu/activation.h"

#include <cmath>

namespace deltatron::cpu {

// Below this many elements a thread team costs more than it saves.
constexpr int64_t kParallelMin = 1 << 15;

template <typename T>
void swiglu_fwd(const T* gate, const T* up, int64_t n, T* h) {
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) h[i] = silu(gate[i]) * up[i];
}

template <typename T>
void swiglu_bwd(const T* gate, const T* up, const T* dh, int64_t n, T* dgate, T* dup, T* h) {
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const T x = gate[i], s = sigmoid(x);
    const T g = dh[i];  // read before writing: dh may alias dgate or dup
    const T u = up[i];
    dgate[i] = g * u * s * (T(1) + x * (T(1) - s));
    dup[i] = g * x * s;
    if (h) h[i] = silu(x) * u;  // swiglu_fwd's expression
  }
}

template <typename T>
void sigmoid_mul_fwd(const T* a, const T* g, int64_t n, T* out) {
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] * sigmoid(g[i]);
}

template <typename T>
void sigmoid_mul_bwd(const T* a, const T* g, const T* dout, int64_t n, T* da, T* dg) {
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const T s = sigmoid(g[i]);
    const T d = dout[i], av = a[i];
    da[i] = d * s;
    dg[i] = d * av * s * (T(1) - s);
  }
}

// GELU. Exact: Phi(x) = 0.5 (1 + erf(x / sqrt 2)), y = x Phi(x), y' = Phi(x) + x phi(x) with
// phi(x) = exp(-x^2/2) / sqrt(2 pi). Tanh form: y = 0.5 x (1 + t), t = tanh(k (x + c x^3)),
// k = sqrt(2/pi), c = 0.044715; y' = 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2).
namespace {
constexpr double kSqrt2OverPi = 0.79788456080286535588;  // sqrt(2 / pi)
constexpr double kInvSqrt2 = 0.70710678118654752440;     // 1 / sqrt(2)
constexpr double kInvSqrt2Pi = 0.39894228040143267794;   // 1 / sqrt(2 pi)
constexpr double kGeluC = 0.044715;
}  // namespace

template <typename T>
void gelu_fwd(const T* x, int64_t n, T* y, bool tanh_approx) {
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const T v = x[i];
    if (tanh_approx) {  // 0.5 (1 + tanh u) = sigmoid(2u): no cancellation for negative x
      const T u = T(kSqrt2OverPi) * (v + T(kGeluC) * v * v * v);
      y[i] = v / (T(1) + std::exp(T(-2) * u));
    } else {  // 1 + erf(x / sqrt 2) = erfc(-x / sqrt 2)
      y[i] = T(0.5) * v * std::erfc(-v * T(kInvSqrt2));
    }
  }
}

template <typename T>
void gelu_bwd(const T* x, const T* dy, int64_t n, T* dx, bool tanh_approx) {
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const T v = x[i], g = dy[i];
    T d;
    if (tanh_approx) {  // s = sigmoid(2u) = 0.5 (1 + t), 1 - t^2 = 4 s (1 - s)
      const T u = T(kSqrt2OverPi) * (v + T(kGeluC) * v * v * v);
      const T s = T(1) / (T(1) + std::exp(T(-2) * u)), sn = T(1) / (T(1) + std::exp(T(2) * u));
      d = s + T(2) * v * s * sn * T(kSqrt2OverPi) * (T(1) + T(3 * kGeluC) * v * v);
    } else {
      d = T(0.5) * std::erfc(-v * T(kInvSqrt2)) + v * T(kInvSqrt2Pi) * std::exp(T(-0.5) * v * v);
    }
    dx[i] = g * d;
  }
}

#define DT_INSTANTIATE(T)                                                          \
  template void swiglu_fwd<T>(const T*, const T*, int64_t, T*);                    \
  template void swiglu_bwd<T>(const T*, const T*, const T*, int64_t, T*, T*, T*);  \
  template void sigmoid_mul_fwd<T>(const T*, const T*, int64_t, T*);               \
  template void sigmoid_mul_bwd<T>(const T*, const T*, const T*, int64_t, T*, T*); \
  template void gelu_fwd<T>(const T*, int64_t, T*, bool);                          \
  template void gelu_bwd<T>(const T*, const T*, int64_t, T*, bool);
DT_INSTANTIATE(float)
DT_INSTANTIATE(double)
#undef DT_INSTANTIATE

}  // namespace deltatron::cpu
