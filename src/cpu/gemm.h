// The CPU's one GEMM (every CPU op's matrix product goes through it): row-major
// C[M, N] = alpha op(A)[M, K] op(B)[K, N] + beta C, op = transpose when ta / tb.
//
// Why not a plain BLAS call: OpenBLAS's results depend on more than the operands. Its float
// kernels on some CPUs (seen: AMD EPYC, core "Zen", OpenBLAS 0.3.21) give a row of C different
// last bits depending on how many rows the product has and where the row sits, and its threaded
// kernels give different bits for different thread counts. A packed batch would then differ from
// its samples run alone by more than rounding, and a run's bits would depend on the machine's
// cores. So:
//   - float products are formed in double (OpenBLAS dgemm on the operands widened exactly) and
//     rounded to float once: alpha op(A) op(B) + beta C is computed in double, then stored. What
//     remains of the kernels' order shows only in the last bits of a double, far below the
//     float result's rounding (a row's float result changes with its place in the product only
//     when its double value lies within a few double ulps of a float rounding boundary);
//   - BLAS runs on one thread, always; the parallelism is over fixed blocks of C's rows (the same
//     blocks for any thread count), so results do not depend on the number of threads.
// Double products take the second rule only (they are test references and the double model).
#pragma once

#include <cstdint>

namespace deltatron::cpu {

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
          int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc);

// Rows of C per work item (a product with more rows runs its blocks in parallel), and columns of
// C per pass of a float product (what op(B) is widened by at a time).
inline constexpr int64_t kGemmRowBlock = 64;
inline constexpr int64_t kGemmColBlock = 2048;

}  // namespace deltatron::cpu
