// CPU plain tensor helpers (see tensor.h).
#include "cpu/tensor.h"

#include <algorithm>
#include <cstring>

#include "core/bf16.h"
#include "core/error.h"

namespace deltatron::cpu {

void cast(const float* src, float* dst, int64_t n) {
  if (n > 0 && src != dst) std::memmove(dst, src, sizeof(float) * size_t(n));
}

template <typename T>
void copy_cols(const T* src, int64_t src_ld, int64_t src_col0, T* dst, int64_t dst_ld,
               int64_t dst_col0, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(dst + r * dst_ld + dst_col0, src + r * src_ld + src_col0, sizeof(T) * size_t(cols));
}

namespace {
void check_row_index(const char* op, const int32_t* idx_M, int64_t R, int64_t M) {
  for (int64_t m = 0; m < M; ++m)
    DT_CHECK(idx_M[m] >= 0 && idx_M[m] < R, op, ": idx[", m, "] = ", idx_M[m],
             " is outside the rows [0, ", R, ")");
}
}  // namespace

void gather_rows(const float* src, const int32_t* idx_M, int64_t R, int64_t M, int64_t D,
                 float* dst) {
  check_row_index("gather_rows", idx_M, R, M);
  for (int64_t m = 0; m < M; ++m)
    std::memcpy(dst + m * D, src + int64_t(idx_M[m]) * D, sizeof(float) * size_t(D));
}

void scatter_rows(const float* src, const int32_t* idx_M, int64_t R, int64_t M, int64_t D,
                  float* dst) {
  check_row_index("scatter_rows", idx_M, R, M);
  for (int64_t m = 0; m < M; ++m)
    std::memcpy(dst + int64_t(idx_M[m]) * D, src + m * D, sizeof(float) * size_t(D));
}

template <typename T>
void fill(T* x, T value, int64_t n) {
  if (n > 0) std::fill(x, x + n, value);
}

void add_inplace(float* y, const float* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 262144)
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void dropout(const float* x, float* y, uint32_t keep_below, float scale, uint64_t key, int64_t n,
             int64_t cols, int64_t ld, int64_t col0) {
#pragma omp parallel for schedule(static) if (n > 262144)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = cols == 0 ? i : (i / cols) * ld + col0 + i % cols;
    y[i] = uint32_t(core::random_bits(key, uint64_t(k)) >> 40) < keep_below ? x[i] * scale : 0.f;
  }
}

void axpy(float* y, const float* x, float alpha, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 262144)
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

double sum_squares(const float* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += double(x[i]) * double(x[i]);
  return s;
}

template void copy_cols<float>(const float*, int64_t, int64_t, float*, int64_t, int64_t, int64_t,
                               int64_t);
template void copy_cols<int32_t>(const int32_t*, int64_t, int64_t, int32_t*, int64_t, int64_t,
                                 int64_t, int64_t);
template void fill<float>(float*, float, int64_t);
template void fill<int32_t>(int32_t*, int32_t, int64_t);

}  // namespace deltatron::cpu
