// CPU plain tensor helpers (float32): copy, column-block copy, fill, add, sum of squares.
#pragma once

#include <cstdint>

namespace deltatron::cpu {

// dst = src, [n] each (the CPU has one floating-point type: cast is a copy).
void cast(const float* src, float* dst, int64_t n);
// dst[r, dst_col0 + c] = src[r, src_col0 + c] for r < rows, c < cols (row-major, leading
// dimensions in elements). No overlap. T = float or int32_t.
template <typename T>
void copy_cols(const T* src, int64_t src_ld, int64_t src_col0, T* dst, int64_t dst_ld,
               int64_t dst_col0, int64_t rows, int64_t cols);
// dst[m] = src[idx[m]] (gather) / dst[idx[m]] = src[m] (scatter), rows of D; every idx in
// [0, R) (a core::Error otherwise).
void gather_rows(const float* src, const int32_t* idx_M, int64_t R, int64_t M, int64_t D,
                 float* dst);
void scatter_rows(const float* src, const int32_t* idx_M, int64_t R, int64_t M, int64_t D,
                  float* dst);
// x[i] = value, [n].
template <typename T>
void fill(T* x, T value, int64_t n);
// y += x, [n] each.
void add_inplace(float* y, const float* x, int64_t n);
// Dropout with a counter-based mask (ops::dropout): y[i] = keep_i ? x[i] * scale : 0, keep_i =
// (core::random_bits(key, k_i) >> 40) < keep_below, k_i = i (cols = 0) or, in a window,
// (i / cols) ld + col0 + i % cols. y may be x.
void dropout(const float* x, float* y, uint32_t keep_below, float scale, uint64_t key, int64_t n,
             int64_t cols, int64_t ld, int64_t col0);
// y[i] += alpha * x[i] (float arithmetic).
void axpy(float* y, const float* x, float alpha, int64_t n);
// sum_i x[i]^2, summed in double in index order (deterministic).
double sum_squares(const float* x, int64_t n);

}  // namespace deltatron::cpu
