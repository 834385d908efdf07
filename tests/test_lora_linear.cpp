// The LoRA adapter's forward and backward (model/lora_linear.h) on the CPU against a float64
// reference of y = x W^T + s (x A^T) B^T, and the float64 reference's own finite differences; the
// linear ops' alpha (which carries s) against plain products.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "model/lora_linear.h"
#include "ops/linear.h"
#include "test_util.h"

using namespace deltatron;
using core::DType;
using core::View;

namespace {

View v(std::vector<float>& x) {
  return View(x.data(), DType::f32, core::Device::cpu, {int64_t(x.size())});
}

struct Case {
  int64_t N = 7, I = 12, O = 9, r = 3;
  double s = 2.5;
  std::vector<double> x, A, B, g;  // g: the loss weights, L = sum_no g[n,o] y[n,o]
};

// y (the adapter's share only) in float64.
std::vector<double> ref_y(const Case& c, const std::vector<double>& A,
                          const std::vector<double>& B) {
  std::vector<double> h(size_t(c.N * c.r), 0.0), y(size_t(c.N * c.O), 0.0);
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t k = 0; k < c.r; ++k)
      for (int64_t i = 0; i < c.I; ++i)
        h[size_t(n * c.r + k)] += c.x[size_t(n * c.I + i)] * A[size_t(k * c.I + i)];
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t o = 0; o < c.O; ++o)
      for (int64_t k = 0; k < c.r; ++k)
        y[size_t(n * c.O + o)] += c.s * h[size_t(n * c.r + k)] * B[size_t(o * c.r + k)];
  return y;
}

double ref_loss(const Case& c, const std::vector<double>& x, const std::vector<double>& A,
                const std::vector<double>& B) {
  Case d = c;
  d.x = x;
  const auto y = ref_y(d, A, B);
  double L = 0;
  for (size_t i = 0; i < y.size(); ++i) L += c.g[i] * y[i];
  return L;
}

std::vector<float> to_f(const std::vector<double>& x) { return {x.begin(), x.end()}; }

}  // namespace

TEST(LoraLinear, ForwardAndBackwardMatchFloat64AndFiniteDifferences) {
  Case c;
  const auto rd = [](size_t n, uint64_t seed) {
    const auto f = dt_test::randn<float>(n, seed, 0.5);
    return std::vector<double>(f.begin(), f.end());
  };
  c.x = rd(size_t(c.N * c.I), 1);
  c.A = rd(size_t(c.r * c.I), 2);
  c.B = rd(size_t(c.O * c.r), 3);
  c.g = rd(size_t(c.N * c.O), 4);
  std::vector<float> x = to_f(c.x), A = to_f(c.A), B = to_f(c.B), g = to_f(c.g);
  std::vector<float> y(size_t(c.N * c.O), 0.25f), h(size_t(c.N * c.r)), dh(size_t(c.N * c.r));
  const model::LoraShape d{c.N, c.I, c.O, c.r, float(c.s)};
  model::lora_fwd(d, v(x), v(A), v(B), v(h), v(y));
  const auto yr = ref_y(c, c.A, c.B);
  for (size_t i = 0; i < y.size(); ++i)
    ASSERT_NEAR(y[i], 0.25 + yr[i], 1e-5 * (1 + std::abs(yr[i]))) << i;

  std::vector<float> dx(size_t(c.N * c.I), 1.0f), dA(A.size(), 0.5f), dB(B.size(), -0.5f);
  model::lora_bwd(d, v(x), v(g), v(A), v(B), v(h), v(dh), v(dx), v(dA), v(dB));
  // The float64 gradients of L by central differences (L is linear in each of x, A, B: exact up
  // to rounding), against what lora_bwd accumulated onto the starting values.
  const double eps = 1e-3;
  const auto fd = [&](std::vector<double>& which, size_t i) {  // which: c.x, c.A or c.B
    const double keep = which[i];
    which[i] = keep + eps;
    const double up = ref_loss(c, c.x, c.A, c.B);
    which[i] = keep - eps;
    const double down = ref_loss(c, c.x, c.A, c.B);
    which[i] = keep;
    return (up - down) / (2 * eps);
  };
  for (size_t i = 0; i < dA.size(); ++i) EXPECT_NEAR(dA[i] - 0.5, fd(c.A, i), 1e-4) << "dA " << i;
  for (size_t i = 0; i < dB.size(); ++i) EXPECT_NEAR(dB[i] + 0.5, fd(c.B, i), 1e-4) << "dB " << i;
  for (size_t i = 0; i < dx.size(); ++i) EXPECT_NEAR(dx[i] - 1.0, fd(c.x, i), 1e-4) << "dx " << i;
}

// alpha scales each product of the linear op family: equal to the unscaled product times alpha,
// stored or accumulated.
TEST(LoraLinear, LinearAlphaScalesTheProduct) {
  const int64_t N = 5, I = 4, O = 3;
  std::vector<float> x = dt_test::randn<float>(N * I, 5), W = dt_test::randn<float>(O * I, 6),
                     dy = dt_test::randn<float>(N * O, 7);
  std::vector<float> y1(N * O), y2(N * O, 1.0f), dx1(N * I), dx2(N * I, 1.0f), dW1(O * I, 0.f),
      dW2(O * I, 1.0f);
  ops::linear_fwd(v(x), v(W), N, I, O, v(y1), false);
  ops::linear_fwd(v(x), v(W), N, I, O, v(y2), true, -0.75f);
  ops::linear_bwd_dx(v(dy), v(W), N, I, O, v(dx1), false);
  ops::linear_bwd_dx(v(dy), v(W), N, I, O, v(dx2), true, 3.0f);
  ops::linear_bwd_dw(v(x), v(dy), N, I, O, v(dW1));
  ops::linear_bwd_dw(v(x), v(dy), N, I, O, v(dW2), 0.5f);
  for (size_t i = 0; i < y1.size(); ++i) EXPECT_FLOAT_EQ(y2[i], 1.0f + -0.75f * y1[i]);
  for (size_t i = 0; i < dx1.size(); ++i) EXPECT_FLOAT_EQ(dx2[i], 1.0f + 3.0f * dx1[i]);
  for (size_t i = 0; i < dW1.size(); ++i) EXPECT_FLOAT_EQ(dW2[i], 1.0f + 0.5f * dW1[i]);
  std::vector<float> y3(N * O);
  ops::linear_fwd(v(x), v(W), N, I, O, v(y3), false, 2.0f);
  for (size_t i = 0; i < y1.size(); ++i) EXPECT_FLOAT_EQ(y3[i], 2.0f * y1[i]);
}
