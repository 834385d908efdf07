// Tests for the token-mixing ops: interleaved-MRoPE rotary, varlen GQA attention, causal conv1d.
#include <omp.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/segments.h"
#include "cpu/attention.h"
#include "cpu/conv1d.h"
#include "cpu/rope.h"
#include "ops/attention.h"
#include "ops/conv1d.h"
#include "ops/rope.h"
#include "test_util.h"

namespace dt = deltatron;
using dt_test::compare;
using dt_test::dot;
using dt_test::finite_diff;
using dt_test::host_view;
using dt_test::randn;

namespace {

template <typename To, typename From>
std::vector<To> cast(const std::vector<From>& v) {
  return std::vector<To>(v.begin(), v.end());
}

dt::core::Segments segments(const std::vector<int32_t>& cu) {
  return {cu.data(), int(cu.size()) - 1};
}

// Expect bitwise equality of two ranges, naming the first differing element.
template <typename T>
void expect_bitwise(const T* a, const T* b, size_t n, const std::string& what) {
  for (size_t i = 0; i < n; ++i)
    if (a[i] != b[i]) {
      ADD_FAILURE() << what << ": differs at " << i << ": " << a[i] << " vs " << b[i];
      return;
    }
}

// ---------------------------------------------------------------------------------------------
// RoPE

// Plain 1-D NeoX rotary on the first R dims, written from the HF recipe (float32 angles).
std::vector<float> neox_rope_hf(const std::vector<float>& x, const std::vector<int32_t>& pos,
                                int64_t N, int64_t H, int64_t K, int64_t R, double theta) {
  std::vector<float> y = x;
  const int64_t half = R / 2;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < half; ++j) {
      const float inv_freq = 1.0f / std::pow(float(theta), float(2 * j) / float(R));
      const float ang = float(pos[n]) * inv_freq;
      const float c = std::cos(ang), s = std::sin(ang);
      for (int64_t h = 0; h < H; ++h) {
        const float* xi = &x[(n * H + h) * K];
        float* yi = &y[(n * H + h) * K];
        yi[j] = xi[j] * c + (-xi[j + half]) * s;  // x * cos + rotate_half(x) * sin
        yi[j + half] = xi[j + half] * c + xi[j] * s;
      }
    }
  return y;
}

// The same rotation with exact double angles theta^(-2j/R) * pos.
std::vector<double> neox_rope_exact(const std::vector<double>& x, const std::vector<int32_t>& pos,
                                    int64_t N, int64_t H, int64_t K, int64_t R, double theta) {
  std::vector<double> y = x;
  const int64_t half = R / 2;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < half; ++j) {
      const double ang = pos[n] * std::pow(theta, -2.0 * double(j) / double(R));
      for (int64_t h = 0; h < H; ++h) {
        const double a = x[(n * H + h) * K + j], b = x[(n * H + h) * K + j + half];
        y[(n * H + h) * K + j] = a * std::cos(ang) - b * std::sin(ang);
        y[(n * H + h) * K + j + half] = b * std::cos(ang) + a * std::sin(ang);
      }
    }
  return y;
}

TEST(Rope, BwdMatchesFiniteDiff) {
  const int64_t N = 7, H = 3, K = 13, R = 10;
  const int sec[3] = {2, 2, 1};
  std::vector<int32_t> pos(3 * N);
  for (int64_t n = 0; n < N; ++n) {
    pos[n] = int32_t(n);
    pos[N + n] = int32_t(3 * n + 1);
    pos[2 * N + n] = int32_t(50 - 7 * n);
  }
  std::vector<double> x = randn<double>(N * H * K, 1);
  const std::vector<double> w = randn<double>(N * H * K, 2);
  auto loss = [&]() {
    std::vector<double> y = x;
    dt::cpu::rope_fwd(y.data(), pos.data(), N, H, K, R, 1e4, sec);
    return dot(w, y);
  };
  const std::vector<double> fd = finite_diff(x, loss);
  std::vector<double> g = w;
  dt::cpu::rope_bwd(g.data(), pos.data(), N, H, K, R, 1e4, sec);
  DT_EXPECT_CLOSE(g, fd, 1e-8, "rope dx vs finite differences");

  // bwd undoes fwd up to the float32 rounding of cos/sin (c^2 + s^2 = 1 within ~1e-7).
  std::vector<double> y = x;
  dt::cpu::rope_fwd(y.data(), pos.data(), N, H, K, R, 1e4, sec);
  dt::cpu::rope_bwd(y.data(), pos.data(), N, H, K, R, 1e4, sec);
  DT_EXPECT_CLOSE(y, x, 3e-7, "rope_bwd(rope_fwd(x))");
}

TEST(Rope, EqualRowsIsNeoxRope) {
  const int64_t N = 9, H = 2, K = 24, R = 16;
  const double theta = 1e7;
  const int sec[3] = {3, 3, 2};
  std::vector<int32_t> p1 = {0, 1, 2, 3, 0, 1, 2, 3, 4};  // two documents, positions restart
  std::vector<int32_t> pos3;
  for (int r = 0; r < 3; ++r) pos3.insert(pos3.end(), p1.begin(), p1.end());
  const std::vector<double> xd = randn<double>(N * H * K, 3);
  const std::vector<float> xf = cast<float>(xd);

  std::vector<float> yf = xf;
  dt::ops::rope_fwd(host_view(yf), host_view(pos3), N, H, K, R, theta, sec);
  const std::vector<float> want_hf = neox_rope_hf(xf, p1, N, H, K, R, theta);
  expect_bitwise(yf.data(), want_hf.data(), yf.size(), "float rope vs HF-recipe NeoX");

  std::vector<double> yd = xd;
  dt::cpu::rope_fwd(yd.data(), pos3.data(), N, H, K, R, theta, sec);
  DT_EXPECT_CLOSE(yd, neox_rope_exact(xd, p1, N, H, K, R, theta), 1e-6, "rope vs exact NeoX");
  DT_EXPECT_CLOSE(yf, yd, 1e-6, "float vs double rope");
}

TEST(Rope, InterleavedSectionsAndPassThrough) {
  // Qwen3.5: R = 64, mrope_section {11, 11, 10}; dims 64..71 must pass through.
  const int64_t N = 2, H = 2, K = 72, R = 64, half = R / 2;
  const double theta = 1e7;
  const int sec[3] = {11, 11, 10};
  const char* table = "THWTHWTHWTHWTHWTHWTHWTHWTHWTHWTH";  // rows for j = 0..31
  ASSERT_EQ(std::string(table).size(), size_t(half));
  const std::vector<int32_t> pos3 = {5, 40, 17, 80, 29, 120};  // rows T, H, W for tokens 0, 1
  std::vector<float> x = cast<float>(randn<double>(N * H * K, 4));
  for (int64_t n = 0; n < N; ++n)  // head 0: unit vector per pair so x' = (cos, sin)
    for (int64_t j = 0; j < half; ++j) {
      x[(n * H) * K + j] = 1.0f;
      x[(n * H) * K + j + half] = 0.0f;
    }
  std::vector<float> y = x;
  dt::ops::rope_fwd(host_view(y), host_view(pos3), N, H, K, R, theta, sec);
  const std::string rows = "THW";
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t j = 0; j < half; ++j) {
      const float inv_freq = 1.0f / std::pow(float(theta), float(2 * j) / float(R));
      std::string matched;
      for (int r = 0; r < 3; ++r) {
        const float ang = float(pos3[r * N + n]) * inv_freq;
        if (y[(n * H) * K + j] == std::cos(ang) && y[(n * H) * K + j + half] == std::sin(ang))
          matched += rows[r];
      }
      EXPECT_EQ(matched, std::string(1, table[j])) << "token " << n << " frequency j=" << j;
    }
    for (int64_t h = 0; h < H; ++h)
      expect_bitwise(&y[(n * H + h) * K + R], &x[(n * H + h) * K + R], size_t(K - R),
                     "dims >= R token " + std::to_string(n) + " head " + std::to_string(h));
  }
}

// ---------------------------------------------------------------------------------------------
// Attention

// Dense masked-softmax reference in double: every query row against its whole segment prefix.
void attention_naive(const std::vector<double>& q, const std::vector<double>& k,
                     const std::vector<double>& v, const std::vector<int32_t>& cu, int64_t H,
                     int64_t J, int64_t K, double scale, std::vector<double>& o,
                     std::vector<double>& lse) {
  const int64_t N = cu.back();
  o.assign(N * H * K, 0.0);
  lse.assign(N * H, 0.0);
  for (size_t s = 0; s + 1 < cu.size(); ++s)
    for (int64_t n = cu[s]; n < cu[s + 1]; ++n)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t j = h / (H / J);
        std::vector<double> sc;
        for (int64_t m = cu[s]; m <= n; ++m) {
          double d = 0;
          for (int64_t x = 0; x < K; ++x) d += q[(n * H + h) * K + x] * k[(m * J + j) * K + x];
          sc.push_back(scale * d);
        }
        double mx = sc[0], z = 0;
        for (double e : sc) mx = std::max(mx, e);
        for (double e : sc) z += std::exp(e - mx);
        lse[n * H + h] = mx + std::log(z);
        for (int64_t m = cu[s]; m <= n; ++m) {
          const double p = std::exp(sc[m - cu[s]] - mx) / z;
          for (int64_t x = 0; x < K; ++x) o[(n * H + h) * K + x] += p * v[(m * J + j) * K + x];
        }
      }
}

struct AttnCase {
  std::vector<int32_t> cu;
  int64_t H, J, K;
};

void check_attention_fwd(const AttnCase& c, uint64_t seed) {
  const int64_t N = c.cu.back(), H = c.H, J = c.J, K = c.K;
  const double scale = 1.0 / std::sqrt(double(K));
  const auto q = randn<double>(N * H * K, seed), k = randn<double>(N * J * K, seed + 1),
             v = randn<double>(N * J * K, seed + 2);
  std::vector<double> o_ref, lse_ref;
  attention_naive(q, k, v, c.cu, H, J, K, scale, o_ref, lse_ref);

  std::vector<double> o(N * H * K), lse(N * H);
  dt::cpu::attention_fwd(q.data(), k.data(), v.data(), segments(c.cu), N, H, J, K, scale, o.data(),
                         lse.data());
  DT_EXPECT_CLOSE(o, o_ref, 1e-13, "double o vs naive");
  DT_EXPECT_CLOSE(lse, lse_ref, 1e-13, "double lse vs naive");

  const auto qf = cast<float>(q), kf = cast<float>(k), vf = cast<float>(v);
  std::vector<float> of(N * H * K), lsef(N * H);
  dt::ops::attention_fwd(host_view(qf), host_view(kf), host_view(vf), host_view(c.cu),
                         segments(c.cu), N, H, J, K, float(scale), host_view(of), host_view(lsef));
  DT_EXPECT_CLOSE(of, o_ref, 2e-6, "float o vs naive");
  DT_EXPECT_CLOSE(lsef, lse_ref, 2e-6, "float lse vs naive");
}

TEST(Attention, FwdMatchesNaive) {
  check_attention_fwd({{0, 4, 4, 11}, 4, 2, 5}, 10);       // segments 4, 0, 7
  check_attention_fwd({{0, 130, 131, 150}, 4, 1, 7}, 20);  // several row blocks, length 1
}

void check_attention_bwd(const AttnCase& c, uint64_t seed) {
  const int64_t N = c.cu.back(), H = c.H, J = c.J, K = c.K;
  const double scale = 1.0 / std::sqrt(double(K));
  auto q = randn<double>(N * H * K, seed), k = randn<double>(N * J * K, seed + 1),
       v = randn<double>(N * J * K, seed + 2);
  const auto w = randn<double>(N * H * K, seed + 3);  // loss = sum w * o, so do = w
  const auto seg = segments(c.cu);
  std::vector<double> o(N * H * K), lse(N * H);
  auto loss = [&]() {
    dt::cpu::attention_fwd(q.data(), k.data(), v.data(), seg, N, H, J, K, scale, o.data(),
                           lse.data());
    return dot(w, o);
  };
  const auto fq = finite_diff(q, loss), fk = finite_diff(k, loss), fv = finite_diff(v, loss);
  loss();
  std::vector<double> dq(N * H * K, 7.0), dk(N * J * K, 7.0), dv(N * J * K, 7.0);  // overwrite
  dt::cpu::attention_bwd(q.data(), k.data(), v.data(), o.data(), lse.data(), w.data(), seg, N, H, J,
                         K, scale, dq.data(), dk.data(), dv.data());
  DT_EXPECT_CLOSE(dq, fq, 1e-7, "dq vs finite differences");
  DT_EXPECT_CLOSE(dk, fk, 1e-7, "dk vs finite differences");
  DT_EXPECT_CLOSE(dv, fv, 1e-7, "dv vs finite differences");
}

TEST(Attention, BwdMatchesFiniteDiff) {
  check_attention_bwd({{0, 4, 4, 11}, 4, 2, 5}, 30);     // segments 4, 0, 7
  check_attention_bwd({{0, 70, 71, 140}, 2, 1, 3}, 40);  // several row blocks, length 1
}

TEST(Attention, SegmentIsolationAndThreadDeterminism) {
  const std::vector<int32_t> cu = {0, 70, 150};
  const int64_t N = 150, H = 4, J = 2, K = 8;
  const float scale = 1.0f / std::sqrt(float(K));
  const auto seg = segments(cu);
  auto q = cast<float>(randn<double>(N * H * K, 50)), k = cast<float>(randn<double>(N * J * K, 51)),
       v = cast<float>(randn<double>(N * J * K, 52));
  const auto dO = cast<float>(randn<double>(N * H * K, 53));
  auto run = [&](std::vector<float>& o, std::vector<float>& lse, std::vector<float>& dq,
                 std::vector<float>& dk, std::vector<float>& dv) {
    o.assign(N * H * K, 0);
    lse.assign(N * H, 0);
    dq.assign(N * H * K, 0);
    dk.assign(N * J * K, 0);
    dv.assign(N * J * K, 0);
    dt::cpu::attention_fwd(q.data(), k.data(), v.data(), seg, N, H, J, K, scale, o.data(),
                           lse.data());
    dt::cpu::attention_bwd(q.data(), k.data(), v.data(), o.data(), lse.data(), dO.data(), seg, N, H,
                           J, K, scale, dq.data(), dk.data(), dv.data());
  };
  std::vector<float> o1, l1, dq1, dk1, dv1, o2, l2, dq2, dk2, dv2;
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  run(o1, l1, dq1, dk1, dv1);
  omp_set_num_threads(std::max(2, threads));
  run(o2, l2, dq2, dk2, dv2);
  omp_set_num_threads(threads);
  expect_bitwise(o1.data(), o2.data(), o1.size(), "o, 1 vs several threads");
  expect_bitwise(dq1.data(), dq2.data(), dq1.size(), "dq, 1 vs several threads");
  expect_bitwise(dk1.data(), dk2.data(), dk1.size(), "dk, 1 vs several threads");
  expect_bitwise(dv1.data(), dv2.data(), dv1.size(), "dv, 1 vs several threads");

  // Change every input of segment 0: segment 1's outputs and gradients stay bit-identical.
  for (int64_t i = 0; i < 70 * H * K; ++i) q[i] = -2.0f * q[i] + 0.5f;
  for (int64_t i = 0; i < 70 * J * K; ++i) k[i] = 3.0f * k[i], v[i] = v[i] - 1.0f;
  run(o2, l2, dq2, dk2, dv2);
  const size_t h0 = 70 * H * K, j0 = 70 * J * K;
  expect_bitwise(o1.data() + h0, o2.data() + h0, o1.size() - h0, "segment 1 o");
  expect_bitwise(l1.data() + 70 * H, l2.data() + 70 * H, l1.size() - 70 * H, "segment 1 lse");
  expect_bitwise(dq1.data() + h0, dq2.data() + h0, dq1.size() - h0, "segment 1 dq");
  expect_bitwise(dk1.data() + j0, dk2.data() + j0, dk1.size() - j0, "segment 1 dk");
  expect_bitwise(dv1.data() + j0, dv2.data() + j0, dv1.size() - j0, "segment 1 dv");
  double change = 0;
  for (size_t i = 0; i < h0; ++i) change += std::abs(o1[i] - o2[i]);
  EXPECT_GT(change, 1.0) << "segment 0 outputs should have changed";
}

TEST(Attention, SegmentOfLengthOne) {
  // Token 3 is a segment of its own: o = v of its kv head, lse = scale q.k, dq = dk = 0,
  // dv = sum of do over the query heads of the group.
  const std::vector<int32_t> cu = {0, 3, 4, 6};
  const int64_t N = 6, H = 4, J = 2, K = 5, G = H / J, n = 3;
  const double scale = 0.37;
  const auto seg = segments(cu);
  const auto q = randn<double>(N * H * K, 60), k = randn<double>(N * J * K, 61),
             v = randn<double>(N * J * K, 62), dO = randn<double>(N * H * K, 63);
  std::vector<double> o(N * H * K), lse(N * H), dq(N * H * K), dk(N * J * K), dv(N * J * K);
  dt::cpu::attention_fwd(q.data(), k.data(), v.data(), seg, N, H, J, K, scale, o.data(),
                         lse.data());
  dt::cpu::attention_bwd(q.data(), k.data(), v.data(), o.data(), lse.data(), dO.data(), seg, N, H,
                         J, K, scale, dq.data(), dk.data(), dv.data());
  for (int64_t h = 0; h < H; ++h) {
    const int64_t j = h / G;
    double qk = 0;
    for (int64_t x = 0; x < K; ++x) qk += q[(n * H + h) * K + x] * k[(n * J + j) * K + x];
    EXPECT_NEAR(lse[n * H + h], scale * qk, 1e-14) << "head " << h;
    for (int64_t x = 0; x < K; ++x) {
      EXPECT_NEAR(o[(n * H + h) * K + x], v[(n * J + j) * K + x], 1e-14) << "head " << h;
      EXPECT_NEAR(dq[(n * H + h) * K + x], 0.0, 1e-14) << "head " << h;
    }
  }
  for (int64_t j = 0; j < J; ++j)
    for (int64_t x = 0; x < K; ++x) {
      double want = 0;
      for (int64_t g = 0; g < G; ++g) want += dO[(n * H + j * G + g) * K + x];
      EXPECT_NEAR(dv[(n * J + j) * K + x], want, 1e-14) << "kv head " << j;
      EXPECT_NEAR(dk[(n * J + j) * K + x], 0.0, 1e-14) << "kv head " << j;
    }
}

// ---------------------------------------------------------------------------------------------
// Causal depthwise conv1d + SiLU

std::vector<double> conv1d_naive(const std::vector<double>& x, const std::vector<double>& w,
                                 const std::vector<int32_t>& cu, int64_t C, int64_t W) {
  const int64_t N = cu.back();
  std::vector<double> y(N * C);
  for (size_t s = 0; s + 1 < cu.size(); ++s)
    for (int64_t t = cu[s]; t < cu[s + 1]; ++t)
      for (int64_t c = 0; c < C; ++c) {
        double a = 0;
        for (int64_t i = 0; i < W; ++i) {
          const int64_t u = t - (W - 1) + i;
          if (u >= cu[s]) a += w[c * W + i] * x[u * C + c];
        }
        y[t * C + c] = a / (1.0 + std::exp(-a));
      }
  return y;
}

void check_conv1d_fwd(const std::vector<int32_t>& cu, int64_t C, int64_t W, uint64_t seed) {
  const int64_t N = cu.back();
  const auto x = randn<double>(N * C, seed), w = randn<double>(C * W, seed + 1, 0.7);
  const auto want = conv1d_naive(x, w, cu, C, W);
  std::vector<double> y(N * C);
  dt::cpu::conv1d_fwd(x.data(), w.data(), segments(cu), N, C, W, y.data());
  DT_EXPECT_CLOSE(y, want, 1e-14, "double conv1d vs naive");
  const auto xf = cast<float>(x), wf = cast<float>(w);
  std::vector<float> yf(N * C);
  dt::ops::conv1d_fwd(host_view(xf), host_view(wf), host_view(cu), segments(cu), N, C, W,
                      host_view(yf));
  DT_EXPECT_CLOSE(yf, want, 1e-6, "float conv1d vs naive");
}

TEST(Conv1d, FwdMatchesNaive) {
  check_conv1d_fwd({0, 5, 5, 6, 8, 13}, 7, 4, 70);  // segments 5, 0, 1, 2, 5 (three < W)
  check_conv1d_fwd({0, 3, 150, 300}, 70, 4, 71);    // parallel path
}

TEST(Conv1d, ShortSegmentHandComputed) {
  // Segments {3, 2} with W = 4: the second segment's outputs read only their own tokens.
  const std::vector<int32_t> cu = {0, 3, 5};
  const int64_t C = 2, W = 4, N = 5;
  const auto x = randn<double>(N * C, 72), w = randn<double>(C * W, 73);
  std::vector<double> y(N * C);
  dt::cpu::conv1d_fwd(x.data(), w.data(), segments(cu), N, C, W, y.data());
  auto silu = [](double a) { return a / (1.0 + std::exp(-a)); };
  for (int64_t c = 0; c < C; ++c) {
    EXPECT_NEAR(y[3 * C + c], silu(w[c * W + 3] * x[3 * C + c]), 1e-15);
    EXPECT_NEAR(y[4 * C + c], silu(w[c * W + 2] * x[3 * C + c] + w[c * W + 3] * x[4 * C + c]),
                1e-15);
    EXPECT_NEAR(y[0 * C + c], silu(w[c * W + 3] * x[0 * C + c]), 1e-15);
  }
}

TEST(Conv1d, BwdMatchesFiniteDiff) {
  const std::vector<int32_t> cu = {0, 5, 5, 6, 8, 13};
  const int64_t N = 13, C = 7, W = 4;
  auto x = randn<double>(N * C, 80), w = randn<double>(C * W, 81, 0.7);
  const auto r = randn<double>(N * C, 82);  // loss = sum r * y, so dy = r
  const auto seg = segments(cu);
  std::vector<double> y(N * C);
  auto loss = [&]() {
    dt::cpu::conv1d_fwd(x.data(), w.data(), seg, N, C, W, y.data());
    return dot(r, y);
  };
  const auto fx = finite_diff(x, loss), fw = finite_diff(w, loss);
  std::vector<double> dx(N * C, 5.0);                        // overwritten
  const std::vector<double> dw0 = randn<double>(C * W, 83);  // accumulated onto
  std::vector<double> dw = dw0;
  dt::cpu::conv1d_bwd(x.data(), w.data(), seg, r.data(), N, C, W, dx.data(), dw.data());
  for (size_t i = 0; i < dw.size(); ++i) dw[i] -= dw0[i];
  DT_EXPECT_CLOSE(dx, fx, 1e-8, "conv1d dx vs finite differences");
  DT_EXPECT_CLOSE(dw, fw, 1e-8, "conv1d dw (accumulated part) vs finite differences");
}

TEST(Conv1d, SegmentIsolation) {
  // Changing segment 0 leaves every output of segment 1 (its first W-1 included) and its dx
  // bit-identical.
  const std::vector<int32_t> cu = {0, 9, 20};
  const int64_t N = 20, C = 5, W = 4, n0 = 9;
  auto x = cast<float>(randn<double>(N * C, 90));
  const auto w = cast<float>(randn<double>(C * W, 91)), dy = cast<float>(randn<double>(N * C, 92));
  const auto seg = segments(cu);
  auto run = [&](std::vector<float>& y, std::vector<float>& dx) {
    y.assign(N * C, 0);
    dx.assign(N * C, 0);
    std::vector<float> dw(C * W, 0);
    dt::cpu::conv1d_fwd(x.data(), w.data(), seg, N, C, W, y.data());
    dt::cpu::conv1d_bwd(x.data(), w.data(), seg, dy.data(), N, C, W, dx.data(), dw.data());
  };
  std::vector<float> y1, dx1, y2, dx2;
  run(y1, dx1);
  for (int64_t i = 0; i < n0 * C; ++i) x[i] = 10.0f * x[i] + 3.0f;
  run(y2, dx2);
  expect_bitwise(y1.data() + n0 * C, y2.data() + n0 * C, size_t((N - n0) * C), "segment 1 y");
  expect_bitwise(dx1.data() + n0 * C, dx2.data() + n0 * C, size_t((N - n0) * C), "segment 1 dx");
  double change = 0;
  for (int64_t i = 0; i < n0 * C; ++i) change += std::abs(y1[i] - y2[i]);
  EXPECT_GT(change, 1.0) << "segment 0 outputs should have changed";
}

}  // namespace
