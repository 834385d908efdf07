// Tests of the vision tower's CPU ops: LayerNorm with bias, GELU (erf and tanh), bias add and its
// gradient, the weighted embedding bag (bilinear position embedding), the 2-D vision rotary
// embedding, bidirectional segmented attention, and row gather/scatter. Forward against formulas
// and backward against central finite differences in double, on odd shapes; the float views
// through the ops:: dispatch; CUDA views are refused with a clear error.
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "core/segments.h"
#include "core/view.h"
#include "cpu/activation.h"
#include "cpu/attention.h"
#include "cpu/embedding.h"
#include "cpu/layernorm.h"
#include "cpu/linear.h"
#include "cpu/rope.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/embedding.h"
#include "ops/layernorm.h"
#include "ops/linear.h"
#include "ops/rope.h"
#include "ops/tensor.h"
#include "test_util.h"

namespace {

using namespace deltatron;
using dt_test::compare;
using dt_test::dot;
using dt_test::finite_diff;
using dt_test::host_view;
using dt_test::randn;
using Vec = std::vector<double>;
using VecF = std::vector<float>;

constexpr double kGradTol = 1e-7;  // central differences in double, h = 1e-6

VecF to_float(const Vec& v) { return VecF(v.begin(), v.end()); }
Vec minus(const Vec& a, const Vec& b) {
  Vec d(a.size());
  for (size_t i = 0; i < a.size(); ++i) d[i] = a[i] - b[i];
  return d;
}
void expect_grad(const Vec& got, const Vec& want, const char* what) {
  const auto r = compare(got, want);
  EXPECT_LE(r.rel_rms, kGradTol) << what << ": " << r.str();
  std::printf("  %-30s rel_rms %.2e\n", what, r.rel_rms);
}
core::View on_cuda(VecF& x) {
  return core::View(x.data(), core::DType::f32, core::Device::cuda, {int64_t(x.size())});
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

TEST(LayerNorm, ForwardMatchesFormulaAndBackwardMatchesFiniteDiff) {
  const int64_t N = 7, D = 13;
  const double eps = 1e-6;
  Vec x = randn<double>(N * D, 1, 2.0), w = randn<double>(D, 2), b = randn<double>(D, 3);
  for (auto& v : x) v += 0.7;  // a non-zero mean
  Vec y(N * D), mean(N), rstd(N);
  cpu::layernorm_fwd(x.data(), w.data(), b.data(), N, D, eps, y.data(), mean.data(), rstd.data());
  Vec want(N * D);
  for (int64_t n = 0; n < N; ++n) {
    double m = 0, v = 0;
    for (int64_t d = 0; d < D; ++d) m += x[n * D + d] / D;
    for (int64_t d = 0; d < D; ++d) v += (x[n * D + d] - m) * (x[n * D + d] - m) / D;
    for (int64_t d = 0; d < D; ++d)
      want[n * D + d] = (x[n * D + d] - m) / std::sqrt(v + eps) * w[d] + b[d];
  }
  DT_EXPECT_CLOSE(y, want, 1e-14, "layernorm y");

  const Vec P = randn<double>(N * D, 4);
  auto loss = [&] {
    cpu::layernorm_fwd(x.data(), w.data(), b.data(), N, D, eps, y.data(), mean.data(), rstd.data());
    return dot(P, y);
  };
  const Vec fx = finite_diff(x, loss), fw = finite_diff(w, loss), fb = finite_diff(b, loss);
  loss();
  Vec dx(N * D, 5.0), dw0 = randn<double>(D, 5), db0 = randn<double>(D, 6), dw = dw0, db = db0;
  cpu::layernorm_bwd(x.data(), w.data(), mean.data(), rstd.data(), P.data(), N, D, dx.data(), false,
                     dw.data(), db.data());
  expect_grad(dx, fx, "layernorm dx");
  expect_grad(minus(dw, dw0), fw, "layernorm dw (accumulated)");
  expect_grad(minus(db, db0), fb, "layernorm db (accumulated)");
  Vec dx2(N * D, 1.0);  // accumulate_dx adds onto what is there
  cpu::layernorm_bwd(x.data(), w.data(), mean.data(), rstd.data(), P.data(), N, D, dx2.data(), true,
                     (double*)nullptr, (double*)nullptr);
  for (auto& v : dx2) v -= 1.0;
  DT_EXPECT_CLOSE(dx2, dx, 1e-15, "layernorm accumulate_dx");

  // The float view path matches the double reference.
  VecF xf = to_float(x), wf = to_float(w), bf = to_float(b), yf(N * D), mf(N), rf(N);
  ops::layernorm_fwd(host_view(xf), host_view(wf), host_view(bf), N, D, eps, host_view(yf),
                     host_view(mf), host_view(rf));
  DT_EXPECT_CLOSE(yf, want, 1e-6, "layernorm float y");
  EXPECT_THROW(ops::layernorm_fwd(on_cuda(xf), on_cuda(wf), on_cuda(bf), N, D, eps, on_cuda(yf),
                                  on_cuda(mf), on_cuda(rf)),
               core::Error);
}

// ---------------------------------------------------------------------------------------------
// GELU

TEST(Gelu, BothFormsMatchFormulaAndFiniteDiff) {
  const int64_t n = 41;
  Vec x = randn<double>(n, 10, 2.0);
  x[0] = 0.0, x[1] = -6.0, x[2] = 6.0;
  for (bool tanh_form : {false, true}) {
    Vec y(n), want(n);
    cpu::gelu_fwd(x.data(), n, y.data(), tanh_form);
    for (int64_t i = 0; i < n; ++i) {
      const double v = x[i];
      want[i] = tanh_form
                    ? 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)))
                    : 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
    }
    DT_EXPECT_CLOSE(y, want, 1e-15, tanh_form ? "gelu tanh y" : "gelu erf y");
    const Vec P = randn<double>(n, 11);
    const Vec fx = finite_diff(x, [&] {
      cpu::gelu_fwd(x.data(), n, y.data(), tanh_form);
      return dot(P, y);
    });
    Vec dx = P;  // dy may alias dx
    cpu::gelu_bwd(x.data(), dx.data(), n, dx.data(), tanh_form);
    expect_grad(dx, fx, tanh_form ? "gelu tanh dx" : "gelu erf dx");

    VecF xf = to_float(x), yf(n);
    ops::gelu_fwd(host_view(xf), n, host_view(yf), tanh_form ? ops::Gelu::tanh : ops::Gelu::erf);
    DT_EXPECT_CLOSE(yf, want, 1e-6, "gelu float");
  }
}

// ---------------------------------------------------------------------------------------------
// Bias

TEST(Bias, AddAndGradient) {
  const int64_t N = 5, O = 11;
  Vec y = randn<double>(N * O, 20), y0 = y, b = randn<double>(O, 21);
  cpu::bias_add(y.data(), b.data(), N, O);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o) EXPECT_EQ(y[n * O + o], y0[n * O + o] + b[o]);
  const Vec P = randn<double>(N * O, 22);
  const Vec fb = finite_diff(b, [&] {
    Vec t = y0;
    cpu::bias_add(t.data(), b.data(), N, O);
    return dot(P, t);
  });
  Vec db0 = randn<double>(O, 23), db = db0;
  cpu::bias_bwd(P.data(), N, O, db.data());
  expect_grad(minus(db, db0), fb, "bias db (accumulated)");
  VecF yf(N * O, 0.f), bf = to_float(b);
  EXPECT_THROW(ops::bias_add(on_cuda(yf), on_cuda(bf), N, O), core::Error);
}

// ---------------------------------------------------------------------------------------------
// Embedding bag (bilinear position embedding)

TEST(EmbeddingBag, WeightedRowsAndScatterAddBackward) {
  const int64_t N = 6, B = 4, V = 9, D = 7;
  std::vector<int32_t> idx = {0, 1, 3, 4, 4, 4, 4, 4, 8, 8, 2, 2,
                              5, 6, 7, 8, 1, 1, 1, 1, 3, 0, 8, 2};
  Vec table = randn<double>(V * D, 30), w = randn<double>(N * B, 31);
  Vec x(N * D);
  cpu::embedding_bag_fwd(idx.data(), w.data(), table.data(), N, B, V, D, x.data(), false);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d) {
      double want = 0;
      for (int64_t b = 0; b < B; ++b) want += w[n * B + b] * table[idx[n * B + b] * D + d];
      EXPECT_NEAR(x[n * D + d], want, 1e-14);
    }
  const Vec P = randn<double>(N * D, 32);
  const Vec ft = finite_diff(table, [&] {
    cpu::embedding_bag_fwd(idx.data(), w.data(), table.data(), N, B, V, D, x.data(), false);
    return dot(P, x);
  });
  Vec dt0 = randn<double>(V * D, 33), dtab = dt0;
  cpu::embedding_bag_bwd(idx.data(), w.data(), P.data(), N, B, V, D, dtab.data());
  expect_grad(minus(dtab, dt0), ft, "embedding bag dtable");

  std::vector<int32_t> bad = idx;
  bad[5] = int32_t(V);
  VecF tf = to_float(table), wf = to_float(w), xf(N * D);
  dt_test::expect_error(
      [&] {
        ops::embedding_bag_fwd(host_view(bad), host_view(wf), host_view(tf), N, B, V, D,
                               host_view(xf), false);
      },
      {"embedding_bag_fwd", "outside the table"});
}

// ---------------------------------------------------------------------------------------------
// 2-D vision rotary embedding

TEST(RopeVision, AnglesFollowRowsThenColumnsAndBackwardIsTranspose) {
  const int64_t N = 5, H = 3, K = 12;  // K/4 = 3 frequencies
  const double theta = 10000.0;
  std::vector<int32_t> pos = {0, 1, 2, 3, 1, /* cols */ 4, 0, 5, 1, 1};
  // On unit vectors e_i the rotation shows its angles: x'[i] = cos a_i, x'[i + K/2] = sin a_i.
  for (int64_t i = 0; i < K / 2; ++i) {
    Vec x(N * H * K, 0.0);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t h = 0; h < H; ++h) x[(n * H + h) * K + i] = 1.0;
    cpu::rope_vision(x.data(), pos.data(), N, H, K, theta, +1);
    const int64_t j = i % (K / 4);
    for (int64_t n = 0; n < N; ++n) {
      const double p = i < K / 4 ? pos[n] : pos[N + n];
      const double a = p * std::pow(theta, -4.0 * j / K);
      for (int64_t h = 0; h < H; ++h) {
        EXPECT_NEAR(x[(n * H + h) * K + i], std::cos(a), 1e-15) << "n " << n << " i " << i;
        EXPECT_NEAR(x[(n * H + h) * K + i + K / 2], std::sin(a), 1e-15) << "n " << n << " i " << i;
      }
    }
  }
  // <R x, y> = <x, R^T y>.
  Vec x = randn<double>(N * H * K, 40), y = randn<double>(N * H * K, 41), rx = x, ry = y;
  cpu::rope_vision(rx.data(), pos.data(), N, H, K, theta, +1);
  cpu::rope_vision(ry.data(), pos.data(), N, H, K, theta, -1);
  EXPECT_NEAR(dot(rx, y), dot(x, ry), 1e-12);
  VecF xf = to_float(x);
  std::vector<int32_t> pos_bad(2 * N, 0);
  EXPECT_THROW(ops::rope_vision_fwd(host_view(xf), host_view(pos), N, H, K + 1, theta),
               core::Error);
  ops::rope_vision_fwd(host_view(xf), host_view(pos), N, H, K, theta);
  DT_EXPECT_CLOSE(xf, rx, 1e-6, "rope_vision float");
  ops::rope_vision_bwd(host_view(xf), host_view(pos), N, H, K, theta);
  DT_EXPECT_CLOSE(xf, x, 1e-6, "rope_vision float round trip");
}

// ---------------------------------------------------------------------------------------------
// Bidirectional (non-causal) segmented attention

void attention_bidir_naive(const Vec& q, const Vec& k, const Vec& v, const std::vector<int32_t>& cu,
                           int64_t H, int64_t J, int64_t K, double scale, Vec& o, Vec& lse) {
  const int64_t N = cu.back();
  o.assign(N * H * K, 0.0);
  lse.assign(N * H, 0.0);
  for (size_t s = 0; s + 1 < cu.size(); ++s)
    for (int64_t n = cu[s]; n < cu[s + 1]; ++n)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t j = h / (H / J);
        Vec sc;
        for (int64_t m = cu[s]; m < cu[s + 1]; ++m) {
          double d = 0;
          for (int64_t x = 0; x < K; ++x) d += q[(n * H + h) * K + x] * k[(m * J + j) * K + x];
          sc.push_back(scale * d);
        }
        double mx = sc[0], z = 0;
        for (double e : sc) mx = std::max(mx, e);
        for (double e : sc) z += std::exp(e - mx);
        lse[n * H + h] = mx + std::log(z);
        for (int64_t m = cu[s]; m < cu[s + 1]; ++m) {
          const double p = std::exp(sc[m - cu[s]] - mx) / z;
          for (int64_t x = 0; x < K; ++x) o[(n * H + h) * K + x] += p * v[(m * J + j) * K + x];
        }
      }
}

void check_bidir(const std::vector<int32_t>& cu, int64_t H, int64_t J, int64_t K, uint64_t seed,
                 bool grads) {
  const int64_t N = cu.back();
  const double scale = 1.0 / std::sqrt(double(K));
  const core::Segments seg{cu.data(), int(cu.size()) - 1};
  Vec q = randn<double>(N * H * K, seed), k = randn<double>(N * J * K, seed + 1),
      v = randn<double>(N * J * K, seed + 2);
  Vec o_ref, lse_ref, o(N * H * K), lse(N * H);
  attention_bidir_naive(q, k, v, cu, H, J, K, scale, o_ref, lse_ref);
  cpu::attention_fwd(q.data(), k.data(), v.data(), seg, N, H, J, K, scale, o.data(), lse.data(),
                     false);
  DT_EXPECT_CLOSE(o, o_ref, 1e-13, "bidirectional o vs naive");
  DT_EXPECT_CLOSE(lse, lse_ref, 1e-13, "bidirectional lse vs naive");
  VecF qf = to_float(q), kf = to_float(k), vf = to_float(v), of(N * H * K), lf(N * H);
  ops::attention_fwd(host_view(qf), host_view(kf), host_view(vf), host_view(cu), seg, N, H, J, K,
                     float(scale), host_view(of), host_view(lf), false);
  DT_EXPECT_CLOSE(of, o_ref, 2e-6, "bidirectional float o");
  EXPECT_THROW(ops::attention_fwd(on_cuda(qf), on_cuda(kf), on_cuda(vf), host_view(cu), seg, N, H,
                                  J, K, float(scale), on_cuda(of), on_cuda(lf), false),
               core::Error);
  if (!grads) return;
  const Vec w = randn<double>(N * H * K, seed + 3);
  auto loss = [&] {
    cpu::attention_fwd(q.data(), k.data(), v.data(), seg, N, H, J, K, scale, o.data(), lse.data(),
                       false);
    return dot(w, o);
  };
  const Vec fq = finite_diff(q, loss), fk = finite_diff(k, loss), fv = finite_diff(v, loss);
  loss();
  Vec dq(N * H * K, 7.0), dk(N * J * K, 7.0), dv(N * J * K, 7.0);
  cpu::attention_bwd(q.data(), k.data(), v.data(), o.data(), lse.data(), w.data(), seg, N, H, J, K,
                     scale, dq.data(), dk.data(), dv.data(), false);
  expect_grad(dq, fq, "bidirectional dq");
  expect_grad(dk, fk, "bidirectional dk");
  expect_grad(dv, fv, "bidirectional dv");
}

TEST(AttentionBidirectional, MatchesNaiveAndFiniteDiff) {
  check_bidir({0, 4, 4, 11}, 4, 2, 5, 50, true);     // segments 4, 0, 7
  check_bidir({0, 70, 71, 141}, 2, 1, 3, 60, true);  // several row blocks, length 1
  check_bidir({0, 130, 131, 150}, 3, 3, 8, 70, false);
}

// ---------------------------------------------------------------------------------------------
// Row gather / scatter

TEST(Rows, GatherScatterByIndex) {
  const int64_t R = 7, M = 3, D = 5;
  VecF src = to_float(randn<double>(R * D, 80)), got(M * D);
  std::vector<int32_t> idx = {6, 0, 3};
  ops::gather_rows(host_view(src), host_view(idx), R, M, D, host_view(got));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t d = 0; d < D; ++d) EXPECT_EQ(got[m * D + d], src[idx[m] * D + d]);
  VecF dst(R * D, -1.f);
  ops::scatter_rows(host_view(got), host_view(idx), R, M, D, host_view(dst));
  for (int64_t r = 0; r < R; ++r)
    for (int64_t d = 0; d < D; ++d)
      EXPECT_EQ(dst[r * D + d], (r == 6 || r == 0 || r == 3) ? src[r * D + d] : -1.f);
  idx[1] = int32_t(R);
  dt_test::expect_error(
      [&] { ops::gather_rows(host_view(src), host_view(idx), R, M, D, host_view(got)); },
      {"gather_rows", "outside the rows"});
}

}  // namespace
