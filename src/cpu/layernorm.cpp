// CPU reference for LayerNorm with weight and bias (the vision tower's norms).
//
// Forward per row: mean and biased variance in double, xh = (x - mean) rstd, y = xh w + b.
// Backward: with g = dy w, the Jacobian of xh applied to g is
//   dx = rstd (g - mean(g) - xh mean(g xh))
// (d xh_j / d x_i = rstd (delta_ij - 1/D - xh_i xh_j / D)). Parameter gradients are column sums
// over rows, in row order, so the result does not depend on the thread count.
#include "cpu/layernorm.h"

#include <cmath>
#include <vector>

#include "core/error.h"

namespace deltatron::cpu {

namespace {
constexpr int64_t kParallelMin = 1 << 15;  // elements below which one thread is faster
}

template <typename T>
void layernorm_fwd(const T* x_ND, const T* w_D, const T* b_D, int64_t N, int64_t D, double eps,
                   T* y_ND, T* mean_N, T* rstd_N) {
  DT_CHECK(N >= 0 && D > 0, "layernorm_fwd: bad sizes N=", N, " D=", D);
#pragma omp parallel for schedule(static) if (N * D > kParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const T* x = x_ND + n * D;
    double s = 0;
    for (int64_t d = 0; d < D; ++d) s += double(x[d]);
    const double mean = s / double(D);
    double v = 0;
    for (int64_t d = 0; d < D; ++d) v += (double(x[d]) - mean) * (double(x[d]) - mean);
    const double rstd = 1.0 / std::sqrt(v / double(D) + eps);
    mean_N[n] = T(mean);
    rstd_N[n] = T(rstd);
    T* y = y_ND + n * D;
    for (int64_t d = 0; d < D; ++d) y[d] = T((double(x[d]) - mean) * rstd) * w_D[d] + b_D[d];
  }
}

template <typename T>
void layernorm_bwd(const T* x_ND, const T* w_D, const T* mean_N, const T* rstd_N, const T* dy_ND,
                   int64_t N, int64_t D, T* dx_ND, bool accumulate_dx, T* dw_D, T* db_D) {
  DT_CHECK(N >= 0 && D > 0, "layernorm_bwd: bad sizes N=", N, " D=", D);
  if (dx_ND) {
#pragma omp parallel for schedule(static) if (N * D > kParallelMin)
    for (int64_t n = 0; n < N; ++n) {
      const T* x = x_ND + n * D;
      const T* dy = dy_ND + n * D;
      const double mean = double(mean_N[n]), rstd = double(rstd_N[n]);
      double sg = 0, sgx = 0;
      for (int64_t d = 0; d < D; ++d) {
        const double g = double(dy[d]) * double(w_D[d]);
        sg += g;
        sgx += g * (double(x[d]) - mean) * rstd;
      }
      sg /= double(D);
      sgx /= double(D);
      T* dx = dx_ND + n * D;
      for (int64_t d = 0; d < D; ++d) {
        const double xh = (double(x[d]) - mean) * rstd;
        const T v = T(rstd * (double(dy[d]) * double(w_D[d]) - sg - xh * sgx));
        dx[d] = accumulate_dx ? dx[d] + v : v;
      }
    }
  }
  if (!dw_D && !db_D) return;
#pragma omp parallel for schedule(static) if (N * D > kParallelMin)
  for (int64_t d = 0; d < D; ++d) {
    double sw = 0, sb = 0;
    for (int64_t n = 0; n < N; ++n) {
      const double dy = double(dy_ND[n * D + d]);
      sw += dy * (double(x_ND[n * D + d]) - double(mean_N[n])) * double(rstd_N[n]);
      sb += dy;
    }
    if (dw_D) dw_D[d] += T(sw);
    if (db_D) db_D[d] += T(sb);
  }
}

#define DT_INSTANTIATE(T)                                                                        \
  template void layernorm_fwd<T>(const T*, const T*, const T*, int64_t, int64_t, double, T*, T*, \
                                 T*);                                                            \
  template void layernorm_bwd<T>(const T*, const T*, const T*, const T*, const T*, int64_t,      \
                                 int64_t, T*, bool, T*, T*);
DT_INSTANTIATE(float)
DT_INSTANTIATE(double)
#undef DT_INSTANTIATE

}  // namespace deltatron::cpu
