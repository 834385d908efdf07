// Shared test helpers: seeded random data, error metrics that print the worst element, a
// central finite-difference driver for double-precision gradient checks, error-message checks,
// and scratch directories and whole-file reads/writes.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "core/view.h"

namespace dt_test {

// A flat host view of a test vector (f32, f64 or i32) for the ops:: view forms on the CPU. A const
// vector is fine for an op's inputs (the ops do not write through them).
template <typename T>
deltatron::core::View host_view(const std::vector<T>& x) {
  using deltatron::core::DType;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double> ||
                std::is_same_v<T, int32_t>);
  const DType t = std::is_same_v<T, float>    ? DType::f32
                  : std::is_same_v<T, double> ? DType::f64
                                              : DType::i32;
  return deltatron::core::View(const_cast<T*>(x.data()), t, deltatron::core::Device::cpu,
                               {int64_t(x.size())});
}

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
           " worst[" + std::to_string(worst) + "]: got " + std::to_string(a_worst) + " expected " +
           std::to_string(b_worst);
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
#define DT_EXPECT_CLOSE(got, want, tol, what)                   \
  do {                                                          \
    auto _r = ::dt_test::compare(got, want);                    \
    EXPECT_LE(_r.rel_rms, (tol)) << (what) << ": " << _r.str(); \
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
// n random bytes from seed (opaque tensor payloads).
inline std::vector<uint8_t> random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> b(n);
  for (auto& x : b) x = static_cast<uint8_t>(rng());
  return b;
}

inline double dot(const std::vector<double>& w, const std::vector<double>& y) {
  double s = 0;
  for (size_t i = 0; i < w.size(); ++i) s += w[i] * y[i];
  return s;
}

// Runs f, expecting a one-line core::Error whose message contains every part.
template <typename F>
void expect_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
  } catch (const deltatron::core::Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "multi-line message: " << msg;
    for (const auto& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "message lacks '" << p << "': " << msg;
    return;
  }
  ADD_FAILURE() << "expected core::Error mentioning '" << (parts.empty() ? "" : parts[0]) << "'";
}

// The message of the core::Error that f throws, or "(no error)".
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const deltatron::core::Error& e) {
    return e.what();
  }
  return "(no error)";
}

// ---- files ---------------------------------------------------------------------------------

// The whole file as bytes ("" if it cannot be opened).
inline std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Creates or truncates p and writes exactly these bytes.
inline void write_file(const std::filesystem::path& p, std::string_view bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// File names in dir (not recursive), sorted.
inline std::vector<std::string> dir_entries(const std::filesystem::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// A fresh, empty scratch directory, removed with its contents when it goes out of scope. The
// name is unique per process, test and instance: <tmp>/dt-<tag>-<pid>-<Suite>.<Test>-<n>.
struct TempDir {
  std::filesystem::path path;

  explicit TempDir(const std::string& tag = "test") {
    static int instances = 0;
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string test = info ? std::string(info->test_suite_name()) + "." + info->name() : "none";
    std::replace(test.begin(), test.end(), '/', '_');  // parameterised names contain '/'
    path =
        std::filesystem::temp_directory_path() / ("dt-" + tag + "-" + std::to_string(::getpid()) +
                                                  "-" + test + "-" + std::to_string(instances++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string operator/(const std::string& file) const { return (path / file).string(); }
  // Writes file (relative to the directory) and returns its path.
  std::string write(const std::string& file, std::string_view bytes) const {
    const std::string p = *this / file;
    write_file(p, bytes);
    return p;
  }
};

}  // namespace dt_test
