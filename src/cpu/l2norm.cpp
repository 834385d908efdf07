// CPU reference for the L2 normalisation of GDN queries and keys.
//
// Derivation (one row, r = (sum x^2 + eps)^-1/2, dr/dx_j = -r^3 x_j, y = x r):
//   dx_j = r dy_j - r^3 x_j (x . dy) = r (dy_j - y_j (y . dy)).
// The backward therefore needs only y and r, not x. Row sums accumulate in double.
#include "cpu/l2norm.h"

#include <cmath>

namespace deltatron::cpu {

namespace {
constexpr int64_t kParallelMin = 32768;

// Element offset of row n laid out as `heads` rows of D per token at a token pitch ld.
int64_t row_offset(int64_t n, int64_t D, int64_t heads, int64_t ld) {
  return n / heads * (ld ? ld : heads * D) + n % heads * D;
}
}  // namespace

template <typename T>
void l2norm_fwd(const T* x_ND, int64_t N, int64_t D, double eps, T* y_ND, T* rstd_N, int64_t heads,
                int64_t ld) {
#pragma omp parallel for schedule(static) if (N * D > kParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const T* x = x_ND + row_offset(n, D, heads, ld);
    T* y = y_ND + n * D;
    double ss = 0;
    for (int64_t d = 0; d < D; ++d) ss += double(x[d]) * double(x[d]);
    const T r = T(1.0 / std::sqrt(ss + eps));
    rstd_N[n] = r;
    for (int64_t d = 0; d < D; ++d) y[d] = x[d] * r;
  }
}

template <typename T>
void l2norm_bwd(const T* y_ND, const T* rstd_N, const T* dy_ND, int64_t N, int64_t D, T* dx_ND,
                int64_t heads, int64_t ld) {
#pragma omp parallel for schedule(static) if (N * D > kParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const T* y = y_ND + n * D;
    const T* dy = dy_ND + n * D;
    T* dx = dx_ND + row_offset(n, D, heads, ld);
    double ydy = 0;
    for (int64_t d = 0; d < D; ++d) ydy += double(y[d]) * double(dy[d]);
    const T r = rstd_N[n], p = T(ydy);
    for (int64_t d = 0; d < D; ++d) dx[d] = r * (dy[d] - y[d] * p);
  }
}

template void l2norm_fwd<float>(const float*, int64_t, int64_t, double, float*, float*, int64_t,
                                int64_t);
template void l2norm_fwd<double>(const double*, int64_t, int64_t, double, double*, double*, int64_t,
                                 int64_t);
template void l2norm_bwd<float>(const float*, const float*, const float*, int64_t, int64_t, float*,
                                int64_t, int64_t);
template void l2norm_bwd<double>(const double*, const double*, const double*, int64_t, int64_t,
                                 double*, int64_t, int64_t);

}  // namespace deltatron::cpu
