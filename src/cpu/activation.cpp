// CPU reference for elementwise activations (SwiGLU, sigmoid gate).
#include "cpu/activation.h"

namespace deltatron::cpu {

// Below this many elements a thread team costs more than it saves.
constexpr int64_t kParallelMin = 1 << 15;

template <typename T>
void swiglu_fwd(const T* gate, const T* up, int64_t n, T* h) {
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) h[i] = silu(gate[i]) * up[i];
}

template <typename T>
void swiglu_bwd(const T* gate, const T* up, const T* dh, int64_t n, T* dgate, T* dup) {
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const T x = gate[i], s = sigmoid(x);
    const T g = dh[i];  // read before writing: dh may alias dgate or dup
    const T u = up[i];
    dgate[i] = g * u * s * (T(1) + x * (T(1) - s));
    dup[i] = g * x * s;
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

#define DT_INSTANTIATE(T)                                                     \
  template void swiglu_fwd<T>(const T*, const T*, int64_t, T*);               \
  template void swiglu_bwd<T>(const T*, const T*, const T*, int64_t, T*, T*); \
  template void sigmoid_mul_fwd<T>(const T*, const T*, int64_t, T*);          \
  template void sigmoid_mul_bwd<T>(const T*, const T*, const T*, int64_t, T*, T*);
DT_INSTANTIATE(float)
DT_INSTANTIATE(double)
#undef DT_INSTANTIATE

}  // namespace deltatron::cpu
