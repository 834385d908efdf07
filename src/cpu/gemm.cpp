// The CPU GEMM: double-formed float products, one BLAS thread, fixed row blocks (cpu/gemm.h).
#include "cpu/gemm.h"

#include <cblas.h>

#include <algorithm>
#include <limits>
#include <mutex>
#include <vector>

#include "core/error.h"

namespace deltatron::cpu {

namespace {

void check(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc) {
  constexpr int64_t kMax = std::numeric_limits<blasint>::max();
  DT_CHECK(M >= 0 && N >= 0 && K >= 0 && M <= kMax && N <= kMax && K <= kMax && lda <= kMax &&
               ldb <= kMax && ldc <= kMax,
           "cpu::gemm: shape M=", M, " N=", N, " K=", K,
           " is negative or exceeds the BLAS integer range");
}

// BLAS on the calling thread from the first product on (cpu/gemm.h); set once per process.
void serial_blas() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

void dgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
           int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              blasint(M), blasint(N), blasint(K), alpha, A, blasint(lda), B, blasint(ldb), beta, C,
              blasint(ldc));
}

// Calls f(m0, rows) for the row blocks of an M-row product, in parallel when the product is
// large enough (the blocks are the same either way).
template <typename F>
void for_row_blocks(int64_t M, int64_t N, int64_t K, F&& f) {
  const int64_t nb = (M + kGemmRowBlock - 1) / kGemmRowBlock;
  const bool par = nb > 1 && double(M) * double(N) * double(K) >= double(1 << 18);
#pragma omp parallel for schedule(static) if (par)
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t m0 = b * kGemmRowBlock;
    f(m0, std::min(kGemmRowBlock, M - m0));
  }
}

// This thread's scratch of at least n doubles (reused across products: no allocation or zeroing
// per call; each thread has its own, and gemm does not call itself).
double* scratch(std::vector<double>& buf, int64_t n) {
  if (buf.size() < size_t(n)) buf.resize(size_t(n));
  return buf.data();
}

// dst[i] = double(src[i]) and back; `omp simd` because -O2 alone leaves these loops scalar.
void widen(const float* __restrict src, double* __restrict dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = double(src[i]);
}
void narrow(const double* __restrict src, float* __restrict dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = float(src[i]);
}

// C = beta C for a product with K = 0 (BLAS may refuse the zero leading dimensions).
template <typename T>
void scale_only(int64_t M, int64_t N, T beta, T* C, int64_t ldc) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) C[m * ldc + n] = beta == T(0) ? T(0) : beta * C[m * ldc + n];
}

// Checks the shape and does the products with nothing to multiply (M, N or K zero); true when
// that was all. Otherwise BLAS is set to one thread and the caller multiplies.
template <typename T>
bool trivial(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc, T beta, T* C) {
  check(M, N, K, lda, ldb, ldc);
  if (M == 0 || N == 0) return true;
  if (K == 0) {
    scale_only(M, N, beta, C, ldc);
    return true;
  }
  serial_blas();
  return false;
}

}  // namespace

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
          int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  if (trivial(M, N, K, lda, ldb, ldc, beta, C)) return;
  for_row_blocks(M, N, K, [&](int64_t m0, int64_t mb) {
    // op(A)'s rows m0..: A's rows (no transpose) or its columns (transposed, stored [K][M]).
    const double* Ab = ta ? A + m0 : A + m0 * lda;
    dgemm(ta, tb, mb, N, K, alpha, Ab, lda, B, ldb, beta, C + m0 * ldc, ldc);
  });
}

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (trivial(M, N, K, lda, ldb, ldc, beta, C)) return;
  for (int64_t n0 = 0; n0 < N; n0 += kGemmColBlock) {
    const int64_t nb = std::min(kGemmColBlock, N - n0);
    // op(B)'s columns n0.. widened once: [nb][K] when B is stored transposed, else [K][nb].
    thread_local std::vector<double> b_buf;
    double* Bd = scratch(b_buf, nb * K);
    if (tb) {
      for (int64_t n = 0; n < nb; ++n) widen(B + (n0 + n) * ldb, Bd + n * K, K);
    } else {
      for (int64_t k = 0; k < K; ++k) widen(B + k * ldb + n0, Bd + k * nb, nb);
    }
    for_row_blocks(M, nb, K, [&](int64_t m0, int64_t mb) {
      // op(A)'s rows m0.. widened: [mb][K], or [K][mb] when A is stored transposed.
      thread_local std::vector<double> a_buf, c_buf;
      double* Ad = scratch(a_buf, mb * K);
      double* Cd = scratch(c_buf, mb * nb);
      if (ta) {
        for (int64_t k = 0; k < K; ++k) widen(A + k * lda + m0, Ad + k * mb, mb);
      } else {
        for (int64_t m = 0; m < mb; ++m) widen(A + (m0 + m) * lda, Ad + m * K, K);
      }
      float* Cb = C + m0 * ldc + n0;
      if (beta != 0.f)
        for (int64_t m = 0; m < mb; ++m) widen(Cb + m * ldc, Cd + m * nb, nb);
      dgemm(ta, tb, mb, nb, K, double(alpha), Ad, ta ? mb : K, Bd, tb ? K : nb, double(beta), Cd,
            nb);
      for (int64_t m = 0; m < mb; ++m) narrow(Cd + m * nb, Cb + m * ldc, nb);
    });
  }
}

}  // namespace deltatron::cpu
