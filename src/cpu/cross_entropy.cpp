// CPU reference for the per-token softmax cross-entropy of the language-model head.
//
// lse = m + log(sum_v exp(l_v - m)) with m = max_v l_v, so no exp overflows; the sum is kept in
// double. The backward recomputes softmax as exp(l_v - lse) from the saved lse.
#include "cpu/cross_entropy.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace deltatron::cpu {

namespace {

constexpr int64_t kParallelMin = 32768;

void check_targets(const char* op, const int32_t* targets_N, int64_t N, int64_t V) {
  for (int64_t n = 0; n < N; ++n) {
    const int32_t t = targets_N[n];
    DT_CHECK(t == kIgnoreIndex || (t >= 0 && t < V), op, ": target id ", t, " at position ", n,
             " is outside the vocabulary [0, ", V, ") and is not the ignore index ", kIgnoreIndex);
  }
}

}  // namespace

template <typename T>
void cross_entropy_fwd(const T* logits_NV, const int32_t* targets_N, int64_t N, int64_t V,
                       T* loss_N, T* lse_N) {
  DT_CHECK(V > 0, "cross_entropy_fwd: empty vocabulary");
  check_targets("cross_entropy_fwd", targets_N, N, V);  // outside the parallel region
#pragma omp parallel for schedule(static) if (N * V > kParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const T* l = logits_NV + n * V;
    const T m = *std::max_element(l, l + V);
    double s = 0;
    for (int64_t v = 0; v < V; ++v) s += double(std::exp(l[v] - m));
    const double lse = double(m) + std::log(s);
    lse_N[n] = T(lse);
    const int32_t t = targets_N[n];
    loss_N[n] = t == kIgnoreIndex ? T(0) : T(lse - double(l[t]));
  }
}

template <typename T>
void cross_entropy_bwd(const T* logits_NV, const int32_t* targets_N, const T* lse_N,
                       const T* dloss_N, int64_t N, int64_t V, T* dlogits_NV) {
  check_targets("cross_entropy_bwd", targets_N, N, V);
#pragma omp parallel for schedule(static) if (N * V > kParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const T* l = logits_NV + n * V;
    T* dl = dlogits_NV + n * V;
    const int32_t t = targets_N[n];
    if (t == kIgnoreIndex) {
      std::fill(dl, dl + V, T(0));
      continue;
    }
    const T lse = lse_N[n], g = dloss_N[n];
    for (int64_t v = 0; v < V; ++v) dl[v] = g * std::exp(l[v] - lse);
    dl[t] -= g;
  }
}

template void cross_entropy_fwd<float>(const float*, const int32_t*, int64_t, int64_t, float*,
                                       float*);
template void cross_entropy_fwd<double>(const double*, const int32_t*, int64_t, int64_t, double*,
                                        double*);
template void cross_entropy_bwd<float>(const float*, const int32_t*, const float*, const float*,
                                       int64_t, int64_t, float*);
template void cross_entropy_bwd<double>(const double*, const int32_t*, const double*, const double*,
                                        int64_t, int64_t, double*);

}  // namespace deltatron::cpu
