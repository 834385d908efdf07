// Tests of the simple CPU ops: embedding, RMSNorm (plain and gated), L2 norm, linear,
// activations, GDN gates and cross-entropy. Backward passes against central finite differences
// in double on odd shapes; linear exactly against a naive loop on integer-valued data.
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "core/device.h"
#include "core/error.h"
#include "core/view.h"
#include "cpu/activation.h"
#include "cpu/cross_entropy.h"
#include "cpu/embedding.h"
#include "cpu/gdn_gates.h"
#include "cpu/l2norm.h"
#include "cpu/linear.h"
#include "cpu/rmsnorm.h"
#include "ops/activation.h"
#include "ops/embedding.h"
#include "ops/gdn_gates.h"
#include "ops/l2norm.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"
#include "test_util.h"

namespace {

using namespace deltatron;
using dt_test::compare;
using dt_test::dot;
using dt_test::finite_diff;
using dt_test::randn;
using dt_test::uniform;
using Vec = std::vector<double>;
using VecF = std::vector<float>;

// Host views of test vectors for the ops:: (view) dispatch.
core::View h(VecF& x) {
  return core::View(x.data(), core::DType::f32, core::Device::cpu, {int64_t(x.size())});
}
core::View h(std::vector<int32_t>& x) {
  return core::View(x.data(), core::DType::i32, core::Device::cpu, {int64_t(x.size())});
}
// The same memory claimed to be on the GPU (never dereferenced: the op refuses it first).
core::View on_cuda(VecF& x) {
  return core::View(x.data(), core::DType::f32, core::Device::cuda, {int64_t(x.size())});
}

// Central differences in double with h = 1e-6 are good to ~1e-9 relative here.
constexpr double kGradTol = 1e-7;
// float vs double forward: a few float ulps, relative RMS.
constexpr double kFloatTol = 1e-6;

VecF to_float(const Vec& v) { return VecF(v.begin(), v.end()); }

// Analytic gradient `got` vs finite differences `want`, reported with the worst element.
void expect_grad(const Vec& got, const Vec& want, const char* what) {
  auto r = compare(got, want);
  EXPECT_LE(r.rel_rms, kGradTol) << what << ": " << r.str();
  std::printf("  %-28s rel_rms %.2e\n", what, r.rel_rms);
}

// The accumulated part of a gradient buffer that started at `before`.
Vec minus(const Vec& after, const Vec& before) {
  Vec d(after.size());
  for (size_t i = 0; i < d.size(); ++i) d[i] = after[i] - before[i];
  return d;
}

// ---------------------------------------------------------------------------------------------
// Embedding

TEST(Embedding, ForwardGathersRowsAndBackwardMatchesFiniteDiff) {
  const int64_t N = 7, V = 11, D = 13;
  std::vector<int32_t> ids = {3, 0, 10, 3, 7, 3, 0};  // repeated ids must sum
  Vec table = randn<double>(V * D, 1), P = randn<double>(N * D, 2);
  Vec x(N * D);
  cpu::embedding_fwd(ids.data(), table.data(), N, V, D, x.data());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d) ASSERT_EQ(x[n * D + d], table[ids[n] * D + d]);

  Vec dtable0 = randn<double>(V * D, 3), dtable = dtable0;
  cpu::embedding_bwd(ids.data(), P.data(), N, D, dtable.data());
  auto fd = finite_diff(table, [&] {
    cpu::embedding_fwd(ids.data(), table.data(), N, V, D, x.data());
    return dot(P, x);
  });
  expect_grad(minus(dtable, dtable0), fd, "embedding dtable");
  for (int64_t d = 0; d < D; ++d) EXPECT_EQ(dtable[1 * D + d], dtable0[1 * D + d]);  // untouched
}

TEST(Embedding, OutOfRangeIdThrows) {
  const int64_t V = 11, D = 5;
  VecF table(V * D, 1.f), x(2 * D);
  for (int32_t bad : {int32_t(V), int32_t(-1), int32_t(1 << 30)}) {
    std::vector<int32_t> ids = {2, bad};
    EXPECT_THROW(cpu::embedding_fwd<float>(ids.data(), table.data(), 2, V, D, x.data()),
                 core::Error)
        << "id " << bad;
  }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm (zero-centred) and gated RMSNorm

TEST(RmsNorm, ForwardMatchesFormula) {
  const int64_t N = 7, D = 13;
  const double eps = 1e-6;
  Vec x = randn<double>(N * D, 10), w = randn<double>(D, 11, 0.1), y(N * D), rstd(N);
  cpu::rmsnorm_fwd(x.data(), w.data(), N, D, eps, y.data(), rstd.data());
  Vec want(N * D);
  for (int64_t n = 0; n < N; ++n) {
    double ss = 0;
    for (int64_t d = 0; d < D; ++d) ss += x[n * D + d] * x[n * D + d];
    const double r = 1 / std::sqrt(ss / D + eps);
    EXPECT_NEAR(rstd[n], r, 1e-14 * r);
    for (int64_t d = 0; d < D; ++d) want[n * D + d] = x[n * D + d] * r * (1 + w[d]);
  }
  DT_EXPECT_CLOSE(y, want, 1e-14, "rmsnorm y");
}

TEST(RmsNorm, BackwardMatchesFiniteDiff) {
  const int64_t N = 7, D = 13;
  const double eps = 1e-6;
  Vec x = randn<double>(N * D, 20), w = randn<double>(D, 21, 0.3), P = randn<double>(N * D, 22);
  Vec y(N * D), rstd(N), dx(N * D, 123.0);  // dx must be overwritten
  Vec dw0 = randn<double>(D, 23), dw = dw0;
  cpu::rmsnorm_fwd(x.data(), w.data(), N, D, eps, y.data(), rstd.data());
  cpu::rmsnorm_bwd(x.data(), w.data(), rstd.data(), P.data(), N, D, dx.data(), dw.data());
  Vec ys(N * D), rs(N);
  auto f = [&] {
    cpu::rmsnorm_fwd(x.data(), w.data(), N, D, eps, ys.data(), rs.data());
    return dot(P, ys);
  };
  expect_grad(dx, finite_diff(x, f), "rmsnorm dx");
  expect_grad(minus(dw, dw0), finite_diff(w, f), "rmsnorm dw");
}

TEST(RmsNormGated, ForwardMatchesFormula) {
  const int64_t N = 7, D = 13;
  const double eps = 1e-6;
  Vec x = randn<double>(N * D, 30), z = randn<double>(N * D, 31, 2.0),
      w = uniform<double>(D, 32, 0.5, 1.5), y(N * D), rstd(N);
  cpu::rmsnorm_gated_fwd(x.data(), z.data(), w.data(), N, D, eps, y.data(), rstd.data());
  Vec want(N * D);
  for (int64_t n = 0; n < N; ++n) {
    double ss = 0;
    for (int64_t d = 0; d < D; ++d) ss += x[n * D + d] * x[n * D + d];
    const double r = 1 / std::sqrt(ss / D + eps);
    for (int64_t d = 0; d < D; ++d) {
      const double zv = z[n * D + d];
      want[n * D + d] = x[n * D + d] * r * w[d] * zv / (1 + std::exp(-zv));
    }
  }
  DT_EXPECT_CLOSE(y, want, 1e-14, "rmsnorm_gated y");
}

TEST(RmsNormGated, BackwardMatchesFiniteDiff) {
  const int64_t N = 7, D = 13;
  const double eps = 1e-6;
  Vec x = randn<double>(N * D, 40), z = randn<double>(N * D, 41, 2.0),
      w = uniform<double>(D, 42, 0.5, 1.5), P = randn<double>(N * D, 43);
  Vec y(N * D), rstd(N), dx(N * D, -7.0), dz(N * D, 9.0);
  Vec dw0 = randn<double>(D, 44), dw = dw0;
  cpu::rmsnorm_gated_fwd(x.data(), z.data(), w.data(), N, D, eps, y.data(), rstd.data());
  cpu::rmsnorm_gated_bwd(x.data(), z.data(), w.data(), rstd.data(), P.data(), N, D, dx.data(),
                         dz.data(), dw.data());
  Vec ys(N * D), rs(N);
  auto f = [&] {
    cpu::rmsnorm_gated_fwd(x.data(), z.data(), w.data(), N, D, eps, ys.data(), rs.data());
    return dot(P, ys);
  };
  expect_grad(dx, finite_diff(x, f), "rmsnorm_gated dx");
  expect_grad(dz, finite_diff(z, f), "rmsnorm_gated dz");
  expect_grad(minus(dw, dw0), finite_diff(w, f), "rmsnorm_gated dw");
}

// ---------------------------------------------------------------------------------------------
// L2 norm

TEST(L2Norm, ForwardAndBackwardMatchFiniteDiff) {
  const int64_t N = 7, D = 13;
  const double eps = 1e-6;
  Vec x = randn<double>(N * D, 50), P = randn<double>(N * D, 51), y(N * D), rstd(N);
  x[3 * D + 0] = 0;
  // A small row where eps is visible (sum x^2 ~ 1e-3); much smaller rows would make the
  // finite differences (h = 1e-6) themselves inaccurate.
  for (int64_t d = 0; d < D; ++d) x[5 * D + d] = 1e-2 * x[5 * D + d];
  cpu::l2norm_fwd(x.data(), N, D, eps, y.data(), rstd.data());
  for (int64_t n = 0; n < N; ++n) {
    double ss = 0;
    for (int64_t d = 0; d < D; ++d) ss += x[n * D + d] * x[n * D + d];
    for (int64_t d = 0; d < D; ++d)
      EXPECT_NEAR(y[n * D + d], x[n * D + d] / std::sqrt(ss + eps), 1e-14);
  }
  Vec dx(N * D, 5.0);
  cpu::l2norm_bwd(y.data(), rstd.data(), P.data(), N, D, dx.data());
  Vec ys(N * D), rs(N);
  expect_grad(dx,
              finite_diff(x,
                          [&] {
                            cpu::l2norm_fwd(x.data(), N, D, eps, ys.data(), rs.data());
                            return dot(P, ys);
                          }),
              "l2norm dx");
  // dx may alias dy.
  Vec inplace = P;
  cpu::l2norm_bwd(y.data(), rstd.data(), inplace.data(), N, D, inplace.data());
  EXPECT_EQ(compare(inplace, dx).max_abs, 0.0);
}

// Rows laid out by a pitch (ops::RowPitch: `heads` rows of D per token at a token pitch ld, the
// GDN conv output's q / k columns): the same bits as on the rows copied out; the backward writes
// only the rows and leaves the elements between them as they were; a pitch that does not lay out
// the rows, or a view of another size, is an error naming the operand.
TEST(L2Norm, PitchedRowsMatchContiguous) {
  const int64_t T = 7, H = 3, D = 20, ld = 2 * H * D + 12, N = T * H, col0 = H * D + 4;
  VecF c = dt_test::randn<float>(size_t(T * ld), 60), dy = dt_test::randn<float>(size_t(N * D), 61);
  VecF xr(size_t(N * D));  // the rows, copied out
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d) xr[n * D + d] = c[(n / H) * ld + col0 + (n % H) * D + d];
  VecF y1(N * D), r1(N), y2(N * D), r2(N), dx1(N * D);
  ops::l2norm_fwd(h(xr), N, D, 1e-6, h(y1), h(r1));
  const int64_t span = (T - 1) * ld + H * D;
  const core::View xc = h(c).slice(col0, span);
  ops::l2norm_fwd(xc, N, D, 1e-6, h(y2), h(r2), {H, ld});
  EXPECT_EQ(y1, y2);
  EXPECT_EQ(r1, r2);
  ops::l2norm_bwd(h(y1), h(r1), h(dy), N, D, h(dx1));
  VecF dc(size_t(T * ld), 7.f);  // the sentinel between the rows
  ops::l2norm_bwd(h(y1), h(r1), h(dy), N, D, h(dc).slice(col0, span), {H, ld});
  for (int64_t e = 0; e < T * ld; ++e) {
    const int64_t t = e / ld, k = e % ld - col0;
    if (k >= 0 && k < H * D)
      ASSERT_EQ(dc[e], dx1[(t * H + k / D) * D + k % D]) << "token " << t << " column " << k;
    else
      ASSERT_EQ(dc[e], 7.f) << "element " << e << " between the rows was written";
  }
  dt_test::expect_error(
      [&] {
        ops::l2norm_fwd(xc, N, D, 1e-6, h(y2), h(r2), {4, ld});
      },
      {"l2norm_fwd", "x_ND", "4 heads"});
  dt_test::expect_error(
      [&] {
        ops::l2norm_fwd(xc, N, D, 1e-6, h(y2), h(r2), {H, H * D - 1});
      },
      {"l2norm_fwd", "x_ND", "pitch"});
  dt_test::expect_error(
      [&] {
        ops::l2norm_bwd(h(y1), h(r1), h(dy), N, D, h(dc).slice(col0, span - 1), {H, ld});
      },
      {"l2norm_bwd", "dx_ND"});
}

// ---------------------------------------------------------------------------------------------
// Linear

// Integer-valued data in [-4, 4]: every product and partial sum is exact in float.
VecF int_valued(size_t n, uint64_t seed) {
  VecF v = uniform<float>(n, seed, -4.5, 4.5);
  for (auto& e : v) e = std::round(e);
  return v;
}

void check_linear_exact(int64_t N, int64_t I, int64_t O) {
  SCOPED_TRACE("N=" + std::to_string(N) + " I=" + std::to_string(I) + " O=" + std::to_string(O));
  VecF x = int_valued(N * I, 60), W = int_valued(O * I, 61), dy = int_valued(N * O, 62);
  VecF y(N * O, 1e30f);
  cpu::linear_fwd<float>(x.data(), W.data(), N, I, O, y.data());
  VecF y_ref(N * O, 0.f), dx_ref(N * I, 0.f), dW_ref(O * I, 0.f);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t i = 0; i < I; ++i) {
        y_ref[n * O + o] += x[n * I + i] * W[o * I + i];
        dx_ref[n * I + i] += dy[n * O + o] * W[o * I + i];
        dW_ref[o * I + i] += dy[n * O + o] * x[n * I + i];
      }
  auto r = compare(y, y_ref);
  EXPECT_EQ(r.max_abs, 0.0) << "linear y: " << r.str();

  // Overwrite dx (garbage before), accumulate dW onto integer-valued prior contents.
  VecF dx(N * I, std::nanf("")), dW0 = int_valued(O * I, 63), dW = dW0;
  cpu::linear_bwd<float>(x.data(), W.data(), dy.data(), N, I, O, dx.data(), false, dW.data());
  r = compare(dx, dx_ref);
  EXPECT_EQ(r.max_abs, 0.0) << "linear dx overwrite: " << r.str();
  VecF dW_want(O * I);
  for (int64_t k = 0; k < O * I; ++k) dW_want[k] = dW0[k] + dW_ref[k];
  r = compare(dW, dW_want);
  EXPECT_EQ(r.max_abs, 0.0) << "linear dW accumulate: " << r.str();

  // accumulate_dx, dW skipped.
  VecF dx0 = int_valued(N * I, 64), dxa = dx0, dx_want(N * I);
  for (int64_t k = 0; k < N * I; ++k) dx_want[k] = dx0[k] + dx_ref[k];
  cpu::linear_bwd<float>(x.data(), W.data(), dy.data(), N, I, O, dxa.data(), true, nullptr);
  r = compare(dxa, dx_want);
  EXPECT_EQ(r.max_abs, 0.0) << "linear dx accumulate: " << r.str();

  // dx skipped, dW only.
  VecF dW2 = dW0;
  cpu::linear_bwd<float>(x.data(), W.data(), dy.data(), N, I, O, nullptr, false, dW2.data());
  r = compare(dW2, dW_want);
  EXPECT_EQ(r.max_abs, 0.0) << "linear dW only: " << r.str();
}

TEST(Linear, ExactAgainstNaiveLoopOnIntegerData) {
  check_linear_exact(7, 13, 11);
  check_linear_exact(1, 1, 1);
  check_linear_exact(67, 129, 45);  // big enough for BLAS's blocked kernels and edge tiles
}

TEST(Linear, EmptyShapes) {
  VecF x(7 * 3, 1.f), W(5 * 3, 1.f), y(7 * 5, 1.f), dy(7 * 5, 1.f), dx(7 * 3, 1.f);
  cpu::linear_fwd<float>(x.data(), W.data(), 7, 0, 5, y.data());  // I = 0: y = 0
  for (float v : y) EXPECT_EQ(v, 0.f);
  cpu::linear_bwd<float>(x.data(), W.data(), dy.data(), 7, 3, 0, dx.data(), false, nullptr);
  for (float v : dx) EXPECT_EQ(v, 0.f);                           // O = 0: dx = 0
  cpu::linear_fwd<float>(x.data(), W.data(), 0, 3, 5, y.data());  // N = 0: nothing to do
}

TEST(Linear, BackwardMatchesFiniteDiff) {
  const int64_t N = 7, I = 13, O = 11;
  Vec x = randn<double>(N * I, 70), W = randn<double>(O * I, 71), P = randn<double>(N * O, 72);
  Vec y(N * O), dx(N * I), dW0 = randn<double>(O * I, 73), dW = dW0;
  cpu::linear_bwd(x.data(), W.data(), P.data(), N, I, O, dx.data(), false, dW.data());
  auto f = [&] {
    cpu::linear_fwd(x.data(), W.data(), N, I, O, y.data());
    return dot(P, y);
  };
  expect_grad(dx, finite_diff(x, f), "linear dx");
  expect_grad(minus(dW, dW0), finite_diff(W, f), "linear dW");
}

// ---------------------------------------------------------------------------------------------
// Activations

TEST(Activation, SwigluAndSigmoidMulBackwardMatchFiniteDiff) {
  const int64_t n = 7 * 13;
  Vec a = randn<double>(n, 80, 3.0), b = randn<double>(n, 81), P = randn<double>(n, 82), y(n);
  a[0] = 40;  // saturated regions
  a[1] = -40;
  Vec da(n, 1.0), db(n, 2.0);
  cpu::swiglu_bwd(a.data(), b.data(), P.data(), n, da.data(), db.data());
  auto f_swiglu = [&] {
    cpu::swiglu_fwd(a.data(), b.data(), n, y.data());
    return dot(P, y);
  };
  expect_grad(da, finite_diff(a, f_swiglu), "swiglu dgate");
  expect_grad(db, finite_diff(b, f_swiglu), "swiglu dup");

  cpu::sigmoid_mul_bwd(b.data(), a.data(), P.data(), n, db.data(), da.data());
  auto f_sig = [&] {
    cpu::sigmoid_mul_fwd(b.data(), a.data(), n, y.data());
    return dot(P, y);
  };
  expect_grad(db, finite_diff(b, f_sig), "sigmoid_mul da");
  expect_grad(da, finite_diff(a, f_sig), "sigmoid_mul dg");
}

TEST(Activation, StableForLargeMagnitudes) {
  VecF g = {-1e4f, -200.f, -88.f, 88.f, 200.f, 1e4f}, u(g.size(), 2.f), h(g.size()), dg(g.size()),
       du(g.size()), dh(g.size(), 1.f);
  cpu::swiglu_fwd<float>(g.data(), u.data(), int64_t(g.size()), h.data());
  cpu::swiglu_bwd<float>(g.data(), u.data(), dh.data(), int64_t(g.size()), dg.data(), du.data());
  for (size_t i = 0; i < g.size(); ++i) {
    ASSERT_TRUE(std::isfinite(h[i]) && std::isfinite(dg[i]) && std::isfinite(du[i])) << g[i];
    if (g[i] > 100) {
      EXPECT_EQ(h[i], 2.f * g[i]) << g[i];
    }
    if (g[i] < -100) {
      EXPECT_EQ(h[i], 0.f) << g[i];
    }
  }
  cpu::sigmoid_mul_fwd<float>(u.data(), g.data(), int64_t(g.size()), h.data());
  EXPECT_EQ(h.front(), 0.f);
  EXPECT_EQ(h.back(), 2.f);
  EXPECT_EQ(cpu::sigmoid(-1000.0), 0.0);
  EXPECT_EQ(cpu::sigmoid(1000.0), 1.0);
}

// ---------------------------------------------------------------------------------------------
// GDN gates

TEST(GdnGates, SoftplusThreshold) {
  // Below/at 20: log1p(exp(x)); above: x itself (PyTorch threshold = 20).
  for (double x : {-30.0, -3.0, 0.0, 0.5, 19.5, 20.0})
    EXPECT_EQ(cpu::softplus(x), std::log1p(std::exp(x))) << x;
  for (double x : {20.0001, 20.5, 25.0, 1e4}) EXPECT_EQ(cpu::softplus(x), x) << x;
  EXPECT_NEAR(cpu::softplus(19.5), 19.5 + std::exp(-19.5), 1e-15);
  // Through the op: a + dt_bias on both sides of the threshold, with exact expectations.
  const int64_t N = 1, G = 4;
  Vec b(G, 0.0), a = {19.5, 20.5, 25.0, -30.0}, A_log = {0.0, 0.0, std::log(2.0), 0.0},
                 dt_bias(G, 0.0), beta(G), g(G);
  cpu::gdn_gates_fwd(b.data(), a.data(), A_log.data(), dt_bias.data(), N, G, beta.data(), g.data());
  EXPECT_EQ(g[0], -std::log1p(std::exp(19.5)));
  EXPECT_EQ(g[1], -20.5);
  EXPECT_EQ(g[2], -std::exp(std::log(2.0)) * 25.0);
  EXPECT_EQ(g[3], -std::log1p(std::exp(-30.0)));
  EXPECT_EQ(beta[0], 0.5);
  // Above the threshold the softplus derivative is exactly 1; below it is sigmoid(u).
  Vec dbeta(G, 0.0), dg(G, 1.0), db(G), da(G), dA_log(G, 0.0), ddt(G, 0.0);
  cpu::gdn_gates_bwd(b.data(), a.data(), A_log.data(), dt_bias.data(), dbeta.data(), dg.data(), N,
                     G, db.data(), da.data(), dA_log.data(), ddt.data());
  EXPECT_EQ(da[1], -1.0);
  EXPECT_EQ(da[2], -std::exp(std::log(2.0)));
  EXPECT_NEAR(da[0], -cpu::sigmoid(19.5), 1e-16);
}

TEST(GdnGates, BackwardMatchesFiniteDiff) {
  const int64_t N = 7, G = 5;
  Vec b = randn<double>(N * G, 90, 3.0), a = randn<double>(N * G, 91, 4.0),
      A_log = randn<double>(G, 92), dt_bias = randn<double>(G, 93);
  a[0] = 24;    // softplus linear region (u > 20, away from the kink by more than h)
  a[1] = 18.5;  // just below the threshold
  a[2] = -28;
  Vec Pb = randn<double>(N * G, 94), Pg = randn<double>(N * G, 95), beta(N * G), g(N * G);
  Vec db(N * G, 3.0), da(N * G, 3.0), dA0 = randn<double>(G, 96), dA = dA0,
                                      ddt0 = randn<double>(G, 97), ddt = ddt0;
  cpu::gdn_gates_bwd(b.data(), a.data(), A_log.data(), dt_bias.data(), Pb.data(), Pg.data(), N, G,
                     db.data(), da.data(), dA.data(), ddt.data());
  auto f = [&] {
    cpu::gdn_gates_fwd(b.data(), a.data(), A_log.data(), dt_bias.data(), N, G, beta.data(),
                       g.data());
    return dot(Pb, beta) + dot(Pg, g);
  };
  expect_grad(db, finite_diff(b, f), "gdn_gates db");
  expect_grad(da, finite_diff(a, f), "gdn_gates da");
  expect_grad(minus(dA, dA0), finite_diff(A_log, f), "gdn_gates dA_log");
  expect_grad(minus(ddt, ddt0), finite_diff(dt_bias, f), "gdn_gates ddt_bias");
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

TEST(CrossEntropy, ForwardBackwardWithIgnoredTargets) {
  const int64_t N = 7, V = 11;
  Vec logits = randn<double>(N * V, 100, 3.0), dloss = randn<double>(N, 101);
  std::vector<int32_t> t = {3, -100, 10, 0, 5, -100, 7};
  Vec loss(N, 99.0), lse(N, 99.0);
  cpu::cross_entropy_fwd(logits.data(), t.data(), N, V, loss.data(), lse.data());
  for (int64_t n = 0; n < N; ++n) {
    double m = logits[n * V];
    for (int64_t v = 0; v < V; ++v) m = std::max(m, logits[n * V + v]);
    double s = 0;
    for (int64_t v = 0; v < V; ++v) s += std::exp(logits[n * V + v] - m);
    EXPECT_NEAR(lse[n], m + std::log(s), 1e-12 * std::abs(m)) << "row " << n;  // also ignored
    EXPECT_NEAR(loss[n], t[n] == -100 ? 0.0 : m + std::log(s) - logits[n * V + t[n]], 1e-10);
    if (t[n] == -100) {
      EXPECT_EQ(loss[n], 0.0);
    }
  }
  Vec dl(N * V, 42.0);
  cpu::cross_entropy_bwd(logits.data(), t.data(), lse.data(), dloss.data(), N, V, dl.data());
  Vec ls(N), lses(N);
  expect_grad(dl,
              finite_diff(logits,
                          [&] {
                            cpu::cross_entropy_fwd(logits.data(), t.data(), N, V, ls.data(),
                                                   lses.data());
                            return dot(dloss, ls);
                          }),
              "cross_entropy dlogits");
  for (int64_t v = 0; v < V; ++v) {
    EXPECT_EQ(dl[1 * V + v], 0.0);
    EXPECT_EQ(dl[5 * V + v], 0.0);
  }
  // dlogits may alias logits.
  Vec inplace = logits;
  cpu::cross_entropy_bwd(inplace.data(), t.data(), lse.data(), dloss.data(), N, V, inplace.data());
  EXPECT_EQ(compare(inplace, dl).max_abs, 0.0);
}

TEST(CrossEntropy, StableForLargeLogits) {
  // Shifting a row by +-1e4 (exp would overflow/underflow unshifted) moves lse and leaves the
  // loss and softmax unchanged; checked in float, the precision the model uses.
  const int64_t N = 3, V = 11;
  VecF logits = randn<float>(N * V, 102, 3.0), shifted = logits;
  for (int64_t v = 0; v < V; ++v) {
    shifted[0 * V + v] += 1e4f;
    shifted[2 * V + v] -= 1e4f;
  }
  std::vector<int32_t> t = {2, 9, 0};
  VecF loss(N), lse(N), loss_s(N), lse_s(N), dloss(N, 1.f), dl(N * V), dl_s(N * V);
  cpu::cross_entropy_fwd<float>(logits.data(), t.data(), N, V, loss.data(), lse.data());
  cpu::cross_entropy_fwd<float>(shifted.data(), t.data(), N, V, loss_s.data(), lse_s.data());
  cpu::cross_entropy_bwd<float>(logits.data(), t.data(), lse.data(), dloss.data(), N, V, dl.data());
  cpu::cross_entropy_bwd<float>(shifted.data(), t.data(), lse_s.data(), dloss.data(), N, V,
                                dl_s.data());
  EXPECT_NEAR(lse_s[0], lse[0] + 1e4f, 2e-3);  // float spacing at 1e4 is ~1e-3
  EXPECT_NEAR(lse_s[2], lse[2] - 1e4f, 2e-3);
  for (int64_t n = 0; n < N; ++n) EXPECT_NEAR(loss_s[n], loss[n], 2e-3) << "row " << n;
  for (int64_t k = 0; k < N * V; ++k) {
    ASSERT_TRUE(std::isfinite(dl_s[k])) << k;
    EXPECT_NEAR(dl_s[k], dl[k], 2e-3) << k;
  }
}

TEST(CrossEntropy, BadTargetThrows) {
  const int64_t N = 3, V = 11;
  VecF logits(N * V, 0.f), loss(N), lse(N), dloss(N, 1.f), dl(N * V);
  for (int32_t bad : {int32_t(V), int32_t(-1), int32_t(-99), int32_t(-101)}) {
    std::vector<int32_t> t = {1, bad, -100};
    EXPECT_THROW(
        cpu::cross_entropy_fwd<float>(logits.data(), t.data(), N, V, loss.data(), lse.data()),
        core::Error)
        << "target " << bad;
    EXPECT_THROW(cpu::cross_entropy_bwd<float>(logits.data(), t.data(), lse.data(), dloss.data(), N,
                                               V, dl.data()),
                 core::Error)
        << "target " << bad;
  }
}

// ---------------------------------------------------------------------------------------------
// float (through the ops:: dispatch on host views) vs double forward agreement, and CUDA refusal

TEST(FloatVsDouble, ForwardAgreement) {
  const int64_t N = 37, D = 29, V = 23, G = 6;
  const double eps = 1e-6;
  Vec x = randn<double>(N * D, 110), z = randn<double>(N * D, 111, 2.0),
      w = randn<double>(D, 112, 0.2);
  VecF xf = to_float(x), zf = to_float(z), wf = to_float(w);
  auto check = [](const VecF& f, const Vec& d, const char* what) {
    auto r = compare(f, d);
    EXPECT_LE(r.rel_rms, kFloatTol) << what << ": " << r.str();
    std::printf("  %-28s rel_rms %.2e\n", what, r.rel_rms);
  };
  {
    // Round the inputs to float first so both paths see identical data.
    Vec xr(xf.begin(), xf.end()), wr(wf.begin(), wf.end()), zr(zf.begin(), zf.end());
    Vec y(N * D), r(N);
    VecF yf(N * D), rf(N);
    cpu::rmsnorm_fwd(xr.data(), wr.data(), N, D, eps, y.data(), r.data());
    ops::rmsnorm_fwd(h(xf), h(wf), N, D, eps, h(yf), h(rf));
    check(yf, y, "rmsnorm y");
    check(rf, r, "rmsnorm rstd");
    cpu::rmsnorm_gated_fwd(xr.data(), zr.data(), wr.data(), N, D, eps, y.data(), r.data());
    ops::rmsnorm_gated_fwd(h(xf), h(zf), h(wf), N, D, eps, h(yf), h(rf));
    check(yf, y, "rmsnorm_gated y");
    cpu::l2norm_fwd(xr.data(), N, D, eps, y.data(), r.data());
    ops::l2norm_fwd(h(xf), N, D, eps, h(yf), h(rf));
    check(yf, y, "l2norm y");
    cpu::swiglu_fwd(xr.data(), zr.data(), N * D, y.data());
    ops::swiglu_fwd(h(xf), h(zf), N * D, h(yf));
    check(yf, y, "swiglu h");
    cpu::sigmoid_mul_fwd(xr.data(), zr.data(), N * D, y.data());
    ops::sigmoid_mul_fwd(h(xf), h(zf), N * D, h(yf));
    check(yf, y, "sigmoid_mul out");
    // linear: [N, D] x [V, D]^T
    Vec Wr(zr.begin(), zr.begin() + V * D), yl(N * V);
    VecF Wf(zf.begin(), zf.begin() + V * D), ylf(N * V);
    cpu::linear_fwd(xr.data(), Wr.data(), N, D, V, yl.data());
    ops::linear_fwd(h(xf), h(Wf), N, D, V, h(ylf), false);
    check(ylf, yl, "linear y");
    // cross-entropy on those logits
    std::vector<int32_t> t(N);
    for (int64_t n = 0; n < N; ++n) t[n] = n % 5 == 2 ? -100 : int32_t((7 * n) % V);
    Vec ylr(ylf.begin(), ylf.end()), loss(N), lse(N);
    VecF lossf(N), lsef(N);
    cpu::cross_entropy_fwd(ylr.data(), t.data(), N, V, loss.data(), lse.data());
    cpu::cross_entropy_fwd<float>(ylf.data(), t.data(), N, V, lossf.data(), lsef.data());
    check(lossf, loss, "cross_entropy loss");
    check(lsef, lse, "cross_entropy lse");
    // gates: b = x[:N*G], a = z[:N*G]
    Vec A_log = {-1.0, 0.0, 0.5, 1.0, 2.0, -0.3}, dtb = {0.1, -0.2, 0.3, 0.0, 1.0, -1.0};
    VecF A_logf = to_float(A_log), dtbf = to_float(dtb);
    Vec beta(N * G), g(N * G);
    VecF betaf(N * G), gf(N * G);
    cpu::gdn_gates_fwd(xr.data(), zr.data(), A_log.data(), dtb.data(), N, G, beta.data(), g.data());
    ops::gdn_gates_fwd(h(xf).slice(0, N * G), h(zf).slice(0, N * G), h(A_logf), h(dtbf), N, G,
                       h(betaf), h(gf));
    check(betaf, beta, "gdn_gates beta");
    check(gf, g, "gdn_gates g");
    // embedding
    std::vector<int32_t> ids(N);
    for (int64_t n = 0; n < N; ++n) ids[n] = int32_t((3 * n + 1) % V);
    VecF table(V * D), xe(N * D);
    for (int64_t k = 0; k < V * D; ++k) table[k] = zf[k];
    ops::embedding_fwd(h(ids), h(table), N, V, D, h(xe));
    for (int64_t n = 0; n < N; ++n) EXPECT_EQ(xe[n * D + 4], table[ids[n] * D + 4]);
  }
}

TEST(OpsBasicDispatch, CudaIsRefusedWithAnError) {
#ifdef DT_HAVE_CUDA
  GTEST_SKIP() << "this binary has a CUDA backend";
#else
  VecF x(4, 1.f), y(4), r(1);
  EXPECT_THROW(ops::rmsnorm_fwd(on_cuda(x), on_cuda(x), 1, 4, 1e-6, on_cuda(y), on_cuda(r)),
               core::Error);
  EXPECT_THROW(ops::linear_fwd(on_cuda(x), on_cuda(x), 2, 2, 2, on_cuda(y), false), core::Error);
#endif
}

// ---------------------------------------------------------------------------------------------
// Parameter-gradient sums do not depend on the thread count (bitwise).

TEST(OpsBasicDeterminism, ParameterGradientsIndependentOfThreadCount) {
  const int64_t N = 601, D = 131, V = 50, G = 64;  // N * D above the parallel threshold
  VecF x = randn<float>(N * D, 120), z = randn<float>(N * D, 121), w = randn<float>(D, 122),
       dy = randn<float>(N * D, 123), y(N * D), rstd(N), dx(N * D), dz(N * D);
  std::vector<int32_t> ids(N);
  for (int64_t n = 0; n < N; ++n) ids[n] = int32_t((n * n) % V);
  VecF a = randn<float>(N * G, 124), b = randn<float>(N * G, 125), A_log = randn<float>(G, 126),
       dtb = randn<float>(G, 127), dbeta = randn<float>(N * G, 128), dg = randn<float>(N * G, 129),
       db(N * G), da(N * G);
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    std::vector<VecF> out;
    VecF dw(D, 0.f), dwg(D, 0.f), dtable(V * D, 0.f), dA(G, 0.f), ddt(G, 0.f);
    cpu::rmsnorm_fwd<float>(x.data(), w.data(), N, D, 1e-6, y.data(), rstd.data());
    cpu::rmsnorm_bwd<float>(x.data(), w.data(), rstd.data(), dy.data(), N, D, dx.data(), dw.data());
    cpu::rmsnorm_gated_fwd<float>(x.data(), z.data(), w.data(), N, D, 1e-6, y.data(), rstd.data());
    cpu::rmsnorm_gated_bwd<float>(x.data(), z.data(), w.data(), rstd.data(), dy.data(), N, D,
                                  dx.data(), dz.data(), dwg.data());
    cpu::embedding_bwd<float>(ids.data(), dy.data(), N, D, dtable.data());
    cpu::gdn_gates_bwd<float>(b.data(), a.data(), A_log.data(), dtb.data(), dbeta.data(), dg.data(),
                              N, G, db.data(), da.data(), dA.data(), ddt.data());
    return std::vector<VecF>{dw, dwg, dtable, dA, ddt};
  };
  const int saved = omp_get_max_threads();
  auto one = run(1), many = run(std::max(3, saved));
  omp_set_num_threads(saved);
  const char* names[] = {"rmsnorm dw", "rmsnorm_gated dw", "embedding dtable", "gdn dA_log",
                         "gdn ddt_bias"};
  for (size_t k = 0; k < one.size(); ++k) {
    auto r = compare(many[k], one[k]);
    EXPECT_EQ(r.max_abs, 0.0) << names[k] << ": " << r.str();
  }
}

}  // namespace
