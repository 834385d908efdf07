// The CPU GEMM (cpu/gemm.h): float products formed in double and rounded once, results that do
// not depend on the thread count or on where a row sits in the product.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cpu/gemm.h"
#include "test_util.h"

using deltatron::cpu::gemm;

namespace {

struct Shape {
  bool ta, tb;
  int64_t M, N, K;
  int64_t pad;  // extra leading-dimension elements of every operand (strided rows)
};

// Row-major op(A) [M, K], op(B) [K, N] with the leading dimensions of their storage.
struct Operands {
  Shape s;
  int64_t lda, ldb, ldc;
  std::vector<float> A, B, C;
};

Operands make(const Shape& s, uint64_t seed) {
  Operands o{s, (s.ta ? s.M : s.K) + s.pad, (s.tb ? s.K : s.N) + s.pad, s.N + s.pad, {}, {}, {}};
  o.A = dt_test::randn<float>(size_t((s.ta ? s.K : s.M) * o.lda), seed);
  o.B = dt_test::randn<float>(size_t((s.tb ? s.N : s.K) * o.ldb), seed + 1);
  o.C = dt_test::randn<float>(size_t(s.M * o.ldc), seed + 2);
  return o;
}

float a_at(const Operands& o, int64_t m, int64_t k) {
  return o.s.ta ? o.A[size_t(k * o.lda + m)] : o.A[size_t(m * o.lda + k)];
}
float b_at(const Operands& o, int64_t k, int64_t n) {
  return o.s.tb ? o.B[size_t(n * o.ldb + k)] : o.B[size_t(k * o.ldb + n)];
}

// alpha op(A) op(B) + beta C in long double, per element.
std::vector<long double> reference(const Operands& o, float alpha, float beta) {
  std::vector<long double> r(size_t(o.s.M * o.s.N));
  for (int64_t m = 0; m < o.s.M; ++m)
    for (int64_t n = 0; n < o.s.N; ++n) {
      long double acc = 0;
      for (int64_t k = 0; k < o.s.K; ++k) acc += (long double)a_at(o, m, k) * b_at(o, k, n);
      long double c = beta == 0.f ? 0.0L : (long double)beta * o.C[size_t(m * o.ldc + n)];
      r[size_t(m * o.s.N + n)] = (long double)alpha * acc + c;
    }
  return r;
}

// Float result of the product (C starts as o.C).
std::vector<float> run(const Operands& o, float alpha, float beta) {
  std::vector<float> C = o.C;
  gemm(o.s.ta, o.s.tb, o.s.M, o.s.N, o.s.K, alpha, o.A.data(), o.lda, o.B.data(), o.ldb, beta,
       C.data(), o.ldc);
  return C;
}

// Distance in float ulps (both finite).
int64_t ulps(float a, float b) {
  int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  if (ia < 0) ia = int32_t(0x80000000u) - ia;
  if (ib < 0) ib = int32_t(0x80000000u) - ib;
  return std::llabs(int64_t(ia) - int64_t(ib));
}

}  // namespace

// Every element is the exact value rounded once to float, but for the rare element whose value
// lies within a double's rounding of a float boundary (then one ulp away); elements between rows
// (the leading-dimension padding) are untouched.
TEST(CpuGemm, FloatProductsAreTheExactValueRoundedOnce) {
  const Shape shapes[] = {{false, true, 130, 70, 33, 0}, {false, false, 65, 129, 200, 3},
                          {true, false, 70, 40, 300, 5}, {true, true, 3, 2100, 17, 1},
                          {false, true, 1, 1, 1, 0},     {false, false, 200, 2050, 3, 2}};
  uint64_t seed = 10;
  for (const Shape& s : shapes)
    for (float beta : {0.f, 1.f, -0.5f}) {
      const Operands o = make(s, seed += 7);
      const float alpha = beta == -0.5f ? 0.25f : 1.f;
      const std::vector<long double> want = reference(o, alpha, beta);
      const std::vector<float> got = run(o, alpha, beta);
      int64_t off = 0, far = 0;
      for (int64_t m = 0; m < s.M; ++m) {
        for (int64_t n = 0; n < s.N; ++n) {
          const float w = float(want[size_t(m * s.N + n)]), g = got[size_t(m * o.ldc + n)];
          off += g != w;
          far += ulps(g, w) > 1;
        }
        for (int64_t n = s.N; n < o.ldc; ++n)
          EXPECT_EQ(got[size_t(m * o.ldc + n)], o.C[size_t(m * o.ldc + n)]) << "padding written";
      }
      EXPECT_EQ(far, 0) << "M=" << s.M << " N=" << s.N << " K=" << s.K << " beta=" << beta;
      EXPECT_LE(off, (s.M * s.N) / 1000) << "elements not correctly rounded: M=" << s.M;
    }
}

// K = 0: C = beta C (beta = 0 clears, even NaN); M = 0 or N = 0: nothing is touched.
TEST(CpuGemm, EmptyProducts) {
  std::vector<float> C = {1.f, std::nanf(""), 3.f, 4.f};
  gemm(false, false, 2, 2, 0, 1.f, nullptr, 1, nullptr, 2, 0.f, C.data(), 2);
  EXPECT_EQ(C, std::vector<float>(4, 0.f));
  C = {1.f, 2.f, 3.f, 4.f};
  gemm(false, false, 2, 2, 0, 1.f, nullptr, 1, nullptr, 2, 2.f, C.data(), 2);
  EXPECT_EQ(C, (std::vector<float>{2.f, 4.f, 6.f, 8.f}));
  gemm(false, false, 0, 2, 5, 1.f, nullptr, 5, nullptr, 2, 0.f, C.data(), 2);
  gemm(false, false, 2, 0, 5, 1.f, nullptr, 5, nullptr, 1, 0.f, C.data(), 2);
  EXPECT_EQ(C, (std::vector<float>{2.f, 4.f, 6.f, 8.f}));
}

// The same product on 1, 2 and 3 threads: the same bits, float and double (several row blocks, so
// the blocks do run in parallel).
TEST(CpuGemm, ResultsDoNotDependOnTheThreadCount) {
  const Operands o = make({false, true, 3 * deltatron::cpu::kGemmRowBlock + 5, 96, 80, 0}, 50);
  std::vector<double> Ad(o.A.begin(), o.A.end()), Bd(o.B.begin(), o.B.end());
  const int saved = omp_get_max_threads();
  std::vector<std::vector<float>> f;
  std::vector<std::vector<double>> d;
  for (int t : {1, 2, 3}) {
    omp_set_num_threads(t);
    f.push_back(run(o, 1.f, 0.f));
    std::vector<double> C(size_t(o.s.M * o.ldc), 0.0);
    gemm(false, true, o.s.M, o.s.N, o.s.K, 1.0, Ad.data(), o.lda, Bd.data(), o.ldb, 0.0, C.data(),
         o.ldc);
    d.push_back(C);
  }
  omp_set_num_threads(saved);
  EXPECT_EQ(f[0], f[1]);
  EXPECT_EQ(f[0], f[2]);
  EXPECT_EQ(d[0], d[1]);
  EXPECT_EQ(d[0], d[2]);
}

// A row's result does not depend on how many rows the product has or where the row sits (the
// packed batch against its samples alone): rows 37.. of a 700-row product against products of
// those rows alone, within one ulp (OpenBLAS's float kernels gave up to ~12 ulps here).
TEST(CpuGemm, RowsDoNotDependOnTheirPlace) {
  const Operands full = make({false, true, 700, 96, 64, 0}, 70);
  const std::vector<float> y = run(full, 1.f, 0.f);
  for (int64_t rows : {1, 2, 3, 7, 13, 100, 333}) {
    Operands part = full;
    part.s.M = rows;
    part.A.assign(full.A.begin() + 37 * full.lda, full.A.begin() + (37 + rows) * full.lda);
    part.C.assign(size_t(rows * part.ldc), 0.f);
    const std::vector<float> yp = run(part, 1.f, 0.f);
    int64_t far = 0;
    for (int64_t i = 0; i < rows * full.s.N; ++i)
      far += ulps(yp[size_t(i)], y[size_t(37 * full.s.N + i)]) > 1;
    EXPECT_EQ(far, 0) << rows << " rows";
  }
}
