// CPU reference for the token embedding lookup and its scatter-add backward.
#include "cpu/embedding.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace deltatron::cpu {

template <typename T>
void embedding_fwd(const int32_t* ids_N, const T* table_VD, int64_t N, int64_t V, int64_t D,
                   T* x_ND) {
  // Validate before the parallel region: an exception may not leave an OpenMP loop.
  for (int64_t n = 0; n < N; ++n)
    DT_CHECK(ids_N[n] >= 0 && ids_N[n] < V, "embedding_fwd: token id ", ids_N[n], " at position ",
             n, " is outside the vocabulary [0, ", V, ")");
#pragma omp parallel for schedule(static) if (N * D > 32768)
  for (int64_t n = 0; n < N; ++n)
    std::memcpy(x_ND + n * D, table_VD + int64_t(ids_N[n]) * D, sizeof(T) * size_t(D));
}

template <typename T>
void embedding_bwd(const int32_t* ids_N, const T* dx_ND, int64_t N, int64_t D, T* dtable_VD) {
  // Repeated ids make a token-parallel scatter racy, so threads own column blocks instead and
  // each walks the tokens in order: the sum is the same whatever the thread count.
  for (int64_t n = 0; n < N; ++n)
    DT_CHECK(ids_N[n] >= 0, "embedding_bwd: negative token id ", ids_N[n], " at position ", n);
  constexpr int64_t kCols = 64;
  const int64_t nblk = (D + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if (N * D > 32768)
  for (int64_t b = 0; b < nblk; ++b) {
    const int64_t d0 = b * kCols, d1 = std::min(D, d0 + kCols);
    for (int64_t n = 0; n < N; ++n) {
      T* dst = dtable_VD + int64_t(ids_N[n]) * D;
      const T* src = dx_ND + n * D;
      for (int64_t d = d0; d < d1; ++d) dst[d] += src[d];
    }
  }
}

namespace {
void check_bag(const char* op, const int32_t* idx_NB, int64_t N, int64_t B, int64_t V) {
  for (int64_t i = 0; i < N * B; ++i)
    DT_CHECK(idx_NB[i] >= 0 && idx_NB[i] < V, op, ": index ", idx_NB[i], " of row ", i / B,
             " is outside the table [0, ", V, ")");
}
}  // namespace

template <typename T>
void embedding_bag_fwd(const int32_t* idx_NB, const T* w_NB, const T* table_VD, int64_t N,
                       int64_t B, int64_t V, int64_t D, T* x_ND, bool accumulate) {
  check_bag("embedding_bag_fwd", idx_NB, N, B, V);
#pragma omp parallel for schedule(static) if (N * B * D > 32768)
  for (int64_t n = 0; n < N; ++n) {
    T* x = x_ND + n * D;
    if (!accumulate) std::fill(x, x + D, T(0));
    for (int64_t b = 0; b < B; ++b) {
      const T w = w_NB[n * B + b];
      const T* row = table_VD + int64_t(idx_NB[n * B + b]) * D;
      for (int64_t d = 0; d < D; ++d) x[d] += w * row[d];
    }
  }
}

template <typename T>
void embedding_bag_bwd(const int32_t* idx_NB, const T* w_NB, const T* dx_ND, int64_t N, int64_t B,
                       int64_t V, int64_t D, T* dtable_VD) {
  check_bag("embedding_bag_bwd", idx_NB, N, B, V);
  // As embedding_bwd: threads own column blocks and walk the rows in order.
  constexpr int64_t kCols = 64;
  const int64_t nblk = (D + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if (N * B * D > 32768)
  for (int64_t blk = 0; blk < nblk; ++blk) {
    const int64_t d0 = blk * kCols, d1 = std::min(D, d0 + kCols);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t b = 0; b < B; ++b) {
        const T w = w_NB[n * B + b];
        T* dst = dtable_VD + int64_t(idx_NB[n * B + b]) * D;
        const T* src = dx_ND + n * D;
        for (int64_t d = d0; d < d1; ++d) dst[d] += w * src[d];
      }
  }
}

template void embedding_bag_fwd<float>(const int32_t*, const float*, const float*, int64_t, int64_t,
                                       int64_t, int64_t, float*, bool);
template void embedding_bag_fwd<double>(const int32_t*, const double*, const double*, int64_t,
                                        int64_t, int64_t, int64_t, double*, bool);
template void embedding_bag_bwd<float>(const int32_t*, const float*, const float*, int64_t, int64_t,
                                       int64_t, int64_t, float*);
template void embedding_bag_bwd<double>(const int32_t*, const double*, const double*, int64_t,
                                        int64_t, int64_t, int64_t, double*);
template void embedding_fwd<float>(const int32_t*, const float*, int64_t, int64_t, int64_t, float*);
template void embedding_fwd<double>(const int32_t*, const double*, int64_t, int64_t, int64_t,
                                    double*);
template void embedding_bwd<float>(const int32_t*, const float*, int64_t, int64_t, float*);
template void embedding_bwd<double>(const int32_t*, const double*, int64_t, int64_t, double*);

}  // namespace deltatron::cpu
