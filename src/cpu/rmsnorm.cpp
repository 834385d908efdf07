// CPU reference for the zero-centred RMSNorm and the gated RMSNorm of the GDN output.
//
// Derivation (one row, r = rstd = (mean(x^2) + eps)^-1/2, so dr/dx_j = -r^3 x_j / D):
//   y_i = x_i r m_i with a per-element multiplier m_i that does not depend on x
//   (m = 1 + w for rmsnorm, m = w * silu(z) for the gated form). With g_i = dy_i m_i,
//   dx_j = r g_j - (r^3 / D) x_j sum_i g_i x_i.
// The weight gradient sums over rows, dw_i += sum_n dy_i x_i r (times silu(z_i) when gated);
// threads own column blocks and walk rows in order, so the result is bitwise independent of
// the thread count. Row sums accumulate in double.
#include "cpu/rmsnorm.h"

#include <algorithm>
#include <cmath>

#include "cpu/activation.h"

namespace deltatron::cpu {

namespace {

constexpr int64_t kCols = 64;            // column block owned by one thread in the dw pass
constexpr int64_t kParallelMin = 32768;  // elements below which one thread is faster

template <typename T>
T row_rstd(const T* x, int64_t D, double eps) {
  double ss = 0;
  for (int64_t d = 0; d < D; ++d) ss += double(x[d]) * double(x[d]);
  return T(1.0 / std::sqrt(ss / double(D) + eps));
}

// dw_D[d] += sum_n dy[n,d] * x[n,d] * rstd[n] * (gated ? silu(z[n,d]) : 1).
template <typename T>
void accumulate_dw(const T* x_ND, const T* z_ND, const T* rstd_N, const T* dy_ND, int64_t N,
                   int64_t D, T* dw_D) {
  const int64_t nblk = (D + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if (N * D > kParallelMin)
  for (int64_t b = 0; b < nblk; ++b) {
    const int64_t d0 = b * kCols, d1 = std::min(D, d0 + kCols);
    double acc[kCols] = {};
    for (int64_t n = 0; n < N; ++n) {
      const T* x = x_ND + n * D;
      const T* dy = dy_ND + n * D;
      const double r = rstd_N[n];
      if (z_ND) {
        const T* z = z_ND + n * D;
        for (int64_t d = d0; d < d1; ++d)
          acc[d - d0] += double(dy[d]) * double(x[d]) * r * double(silu(z[d]));
      } else {
        for (int64_t d = d0; d < d1; ++d) acc[d - d0] += double(dy[d]) * double(x[d]) * r;
      }
    }
    for (int64_t d = d0; d < d1; ++d) dw_D[d] += T(acc[d - d0]);
  }
}

}  // namespace

template <typename T>
void rmsnorm_fwd(const T* x_ND, const T* w_D, int64_t N, int64_t D, double eps, T* y_ND,
                 T* rstd_N) {
#pragma omp parallel for schedule(static) if (N * D > kParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const T* x = x_ND + n * D;
    T* y = y_ND + n * D;
    const T r = row_rstd(x, D, eps);
    rstd_N[n] = r;
    for (int64_t d = 0; d < D; ++d) y[d] = x[d] * r * (T(1) + w_D[d]);
  }
}

template <typename T>
void rmsnorm_bwd(const T* x_ND, const T* w_D, const T* rstd_N, const T* dy_ND, int64_t N, int64_t D,
                 T* dx_ND, T* dw_D) {
  accumulate_dw<T>(x_ND, nullptr, rstd_N, dy_ND, N, D, dw_D);
#pragma omp parallel for schedule(static) if (N * D > kParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const T* x = x_ND + n * D;
    const T* dy = dy_ND + n * D;
    T* dx = dx_ND + n * D;
    const double r = rstd_N[n];
    double gx = 0;  // sum_i g_i x_i, g = dy * (1 + w)
    for (int64_t d = 0; d < D; ++d) gx += double(dy[d]) * (1.0 + double(w_D[d])) * double(x[d]);
    const T c = T(r * r * r * gx / double(D));
    for (int64_t d = 0; d < D; ++d) dx[d] = T(r) * dy[d] * (T(1) + w_D[d]) - c * x[d];
  }
}

template <typename T>
void rmsnorm_gated_fwd(const T* x_ND, const T* z_ND, const T* w_D, int64_t N, int64_t D, double eps,
                       T* y_ND, T* rstd_N) {
#pragma omp parallel for schedule(static) if (N * D > kParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const T* x = x_ND + n * D;
    const T* z = z_ND + n * D;
    T* y = y_ND + n * D;
    const T r = row_rstd(x, D, eps);
    rstd_N[n] = r;
    for (int64_t d = 0; d < D; ++d) y[d] = x[d] * r * w_D[d] * silu(z[d]);
  }
}

template <typename T>
void rmsnorm_gated_bwd(const T* x_ND, const T* z_ND, const T* w_D, const T* rstd_N, const T* dy_ND,
                       int64_t N, int64_t D, T* dx_ND, T* dz_ND, T* dw_D) {
  accumulate_dw<T>(x_ND, z_ND, rstd_N, dy_ND, N, D, dw_D);
#pragma omp parallel for schedule(static) if (N * D > kParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const T* x = x_ND + n * D;
    const T* z = z_ND + n * D;
    const T* dy = dy_ND + n * D;
    T* dx = dx_ND + n * D;
    T* dz = dz_ND + n * D;
    const T r = rstd_N[n];
    double gx = 0;  // sum_i g_i x_i, g = dy * w * silu(z)
    for (int64_t d = 0; d < D; ++d)
      gx += double(dy[d]) * double(w_D[d]) * double(silu(z[d])) * double(x[d]);
    const T c = T(double(r) * double(r) * double(r) * gx / double(D));
    for (int64_t d = 0; d < D; ++d) {
      const T xv = x[d], zv = z[d], g = dy[d] * w_D[d];
      const T s = sigmoid(zv);
      // d y / d z = x r w silu'(z), silu'(z) = s (1 + z (1 - s))
      const T dzv = g * xv * r * s * (T(1) + zv * (T(1) - s));
      dx[d] = r * g * zv * s - c * xv;
      dz[d] = dzv;
    }
  }
}

#define DT_INSTANTIATE(T)                                                                         \
  template void rmsnorm_fwd<T>(const T*, const T*, int64_t, int64_t, double, T*, T*);             \
  template void rmsnorm_bwd<T>(const T*, const T*, const T*, const T*, int64_t, int64_t, T*, T*); \
  template void rmsnorm_gated_fwd<T>(const T*, const T*, const T*, int64_t, int64_t, double, T*,  \
                                     T*);                                                         \
  template void rmsnorm_gated_bwd<T>(const T*, const T*, const T*, const T*, const T*, int64_t,   \
                                     int64_t, T*, T*, T*);
DT_INSTANTIATE(float)
DT_INSTANTIATE(double)
#undef DT_INSTANTIATE

}  // namespace deltatron::cpu
