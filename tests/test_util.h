// Shared test helpers: seeded random data, error metrics that print the worst element, and a
// central finite-difference driver for double-precision gradient checks.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace dt_test {

template <typename T>
std::vector<T> randn(size_t n, uint64_t seed, double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, scale);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(dist(rng));
  return v;
}

template <typename T>
std::vector<T> uniform(size_t n, uint64_t seed, double lo, double hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(dist(rng));
  return v;
}

// Relative RMS error ||a - b|| / max(||b||, tiny) and a report of the worst element.
struct ErrReport {
  double rel_rms = 0, max_abs = 0;
  size_t worst = 0;
  double a_worst = 0, b_worst = 0;
  std::string str() const {
    return "rel_rms=" + std::to_string(rel_rms) + " max_abs=" + std::to_string(max_abs) +
           " worst[" + std::to_string(worst) + "]: got " + std::to_string(a_worst) +
           " expected " + std::to_string(b_worst);
  }
};

template <typename A, typename B>
ErrReport compare(const A* a, const B* b, size_t n) {
  ErrReport r;
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(b[i]) * double(b[i]);
    if (std::abs(d) > r.max_abs || (i == 0)) {
      r.max_abs = std::abs(d);
      r.worst = i;
      r.a_worst = a[i];
      r.b_worst = b[i];
    }
  }
  r.rel_rms = std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
  return r;
}

template <typename A, typename B>
ErrReport compare(const std::vector<A>& a, const std::vector<B>& b) {
  EXPECT_EQ(a.size(), b.size());
  return compare(a.data(), b.data(), std::min(a.size(), b.size()));
}

// Expect rel_rms(got, want) <= tol, printing the worst element on failure.
#define DT_EXPECT_CLOSE(got, want, tol, what)                                  \
  do {                                                                         \
    auto _r = ::dt_test::compare(got, want);                                   \
    EXPECT_LE(_r.rel_rms, (tol)) << (what) << ": " << _r.str();                \
  } while (0)

// Central finite differences of a scalar function f(params) w.r.t. every element of x.
// f must read x (which is perturbed in place and restored).
inline std::vector<double> finite_diff(std::vector<double>& x, const std::function<double()>& f,
                                       double h = 1e-6) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    double orig = x[i];
    x[i] = orig + h;
    double fp = f();
    x[i] = orig - h;
    double fm = f();
    x[i] = orig;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

// Sum of w[i] * y[i]: a random projection that turns an op output into a scalar loss whose
// gradient w.r.t. y is w.
inline double dot(const std::vector<double>& w, const std::vector<double>& y) {
  double s = 0;
  for (size_t i = 0; i < w.size(); ++i) s += w[i] * y[i];
  return s;
}

}  // namespace dt_test
