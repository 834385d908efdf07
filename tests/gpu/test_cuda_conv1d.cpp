// GPU parity of the segment-aware conv1d + SiLU kernels (cuda::conv1d_*) against cpu::conv1d_*.
//
// Reference: cpu::conv1d_*<double> on the values the device sees (bf16-rounded in bf16 mode).
// Outputs are NaN-poisoned before each call so unwritten elements fail; dw accumulates onto
// random values. Bounds (relative RMS): bf16 forward 5e-3, backward 1e-2 (y and dx are stored in
// bf16, so their error is bf16 rounding, ~1e-3); f32 mode 1e-5. Packs mix segment lengths
// {1, 3, 63, 64, 65, 130, 4096} with empty segments, so segment starts fall on, just before and
// just after the kernels' 32- and 64-token tiles.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "cpu/conv1d.h"
#include "cuda/conv1d.h"
#include "cuda/device.h"
#include "dev_tensor.h"
#include "test_util.h"

namespace dt = deltatron;
using dt::cuda::DType;

namespace {

using dt_test::DevTensor;
using dt_test::download;
using dt_test::poisoned;
using dt_test::to_double;
using dt_test::upload;

// Cheap approximately normal values (Irwin-Hall of 4 uniforms from a splitmix64 hash of the index,
// mean 0, standard deviation `scale`): tens of millions of inputs without seconds of mt19937.
std::vector<float> noise(size_t n, uint64_t seed, double scale = 1.0) {
  std::vector<float> v(n);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) {
    uint64_t z = (seed << 40) ^ i;
    double s = 0;
    for (int k = 0; k < 4; ++k) {
      z += 0x9E3779B97F4A7C15ull;
      uint64_t h = z;
      h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
      h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
      h ^= h >> 31;
      s += double(h >> 11) * 0x1.0p-53;
    }
    v[i] = float((s - 2.0) * std::sqrt(3.0) * scale);  // Var(sum of 4 U(0,1)) = 1/3
  }
  return v;
}

void check(const std::vector<float>& got, const std::vector<double>& want, double tol,
           const std::string& what) {
  size_t bad = 0;
  for (float g : got) bad += !std::isfinite(g);
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " non-finite elements (unwritten?)";
  auto r = dt_test::compare(got, want);
  EXPECT_LE(r.rel_rms, tol) << what << ": " << r.str();
  std::printf("  %-48s rel_rms=%.3e max_abs=%.3e (tol %.0e)\n", what.c_str(), r.rel_rms, r.max_abs,
              tol);
}

std::vector<int32_t> boundaries(const std::vector<int>& lengths) {
  std::vector<int32_t> cu{0};
  for (int l : lengths) cu.push_back(cu.back() + l);
  return cu;
}

// The mixed pack of the parity sweep, empty segments included (N = 4425).
const std::vector<int> kMixed = {0, 1, 3, 63, 0, 64, 65, 130, 4096, 0, 1, 2};
// The real pack: N = 8192 with the mixed lengths and long documents.
const std::vector<int> kReal = {1, 3, 63, 64, 65, 130, 4096, 2048, 0, 1000, 700, 22};

struct Result {
  std::vector<float> y, dx, dw;
};

// Runs fwd and bwd on the device and checks them against the double CPU reference.
Result run_case(const std::vector<int>& lengths, int64_t C, int64_t W, DType t, uint64_t seed,
                bool check_values = true, size_t off = 0) {
  const std::vector<int32_t> cu = boundaries(lengths);
  const int nseg = int(lengths.size());
  const int64_t N = cu.back();
  const std::string name = std::string(dt::cuda::dtype_name(t)) + " N=" + std::to_string(N) +
                           " C=" + std::to_string(C) + " W=" + std::to_string(W) +
                           (off ? " misaligned" : "");
  const double tol_fwd = t == DType::bf16 ? 5e-3 : 1e-5;
  const double tol_bwd = t == DType::bf16 ? 1e-2 : 1e-5;

  DevTensor x = upload(noise(N * C, seed + 1), t, off);
  DevTensor w = upload(noise(C * W, seed + 2, 0.5), t, off);
  DevTensor dy = upload(noise(N * C, seed + 3), t, off);
  dt::cuda::DeviceBuffer cu_dev(cu.size() * 4, "cu");
  DT_CUDA_CHECK(cudaMemcpy(cu_dev.get(), cu.data(), cu.size() * 4, cudaMemcpyHostToDevice));
  const auto* cu_d = static_cast<const int32_t*>(cu_dev.get());

  DevTensor y = poisoned(N * C, t, off), dx = poisoned(N * C, t, off);
  const std::vector<float> dw0 = noise(C * W, seed + 4);
  DevTensor dw = upload(dw0, DType::f32);
  dt::cuda::conv1d_fwd(t, x.ptr, w.ptr, cu_d, nseg, N, C, W, y.ptr);
  dt::cuda::conv1d_bwd(t, x.ptr, w.ptr, cu_d, nseg, dy.ptr, N, C, W, dx.ptr,
                       static_cast<float*>(dw.ptr));
  Result r{download(y), download(dx), download(dw)};
  if (!check_values) return r;

  std::printf("%s\n", name.c_str());
  const auto x_d = to_double(x.host), w_d = to_double(w.host), dy_d = to_double(dy.host);
  const dt::core::Segments seg{cu.data(), nseg};
  std::vector<double> y_ref(N * C), dx_ref(N * C), dw_ref = to_double(dw0);
  dt::cpu::conv1d_fwd<double>(x_d.data(), w_d.data(), seg, N, C, W, y_ref.data());
  dt::cpu::conv1d_bwd<double>(x_d.data(), w_d.data(), seg, dy_d.data(), N, C, W, dx_ref.data(),
                              dw_ref.data());
  check(r.y, y_ref, tol_fwd, name + " y");
  check(r.dx, dx_ref, tol_bwd, name + " dx (=)");
  check(r.dw, dw_ref, tol_bwd, name + " dw (+=)");
  // The accumulated part alone: dw - dw0 against the reference increment.
  std::vector<float> inc(r.dw.size());
  std::vector<double> inc_ref(r.dw.size());
  for (size_t i = 0; i < inc.size(); ++i) {
    inc[i] = r.dw[i] - dw0[i];
    inc_ref[i] = dw_ref[i] - double(dw0[i]);
  }
  check(inc, inc_ref, tol_bwd, name + " dw increment");
  return r;
}

class CudaConv1d : public ::testing::Test {
 protected:
  void SetUp() override { dt::cuda::require_hopper(); }
};

}  // namespace

TEST_F(CudaConv1d, MixedPackOddChannels) {
  for (DType t : {DType::f32, DType::bf16})
    for (int64_t W : {2, 3, 4}) run_case(kMixed, 37, W, t, 100 + 10 * W);
}

TEST_F(CudaConv1d, OtherWidthsAndTinyPacks) {
  for (DType t : {DType::f32, DType::bf16}) {
    run_case(kMixed, 5, 1, t, 200);
    run_case(kMixed, 3, 8, t, 210);
    run_case({1}, 7, 4, t, 220);               // one token
    run_case({2, 0, 1}, 130, 4, t, 230);       // shorter than W, empty segment between
    run_case({0, 0, 33}, 129, 3, t, 240);      // leading empty segments, one-past-tile length
    run_case(kMixed, 130, 4, t, 250);          // 2 channels per thread
    run_case(kMixed, 64, 3, t, 260);           // 4 channels per thread
    run_case(kMixed, 64, 4, t, 270, true, 1);  // misaligned rows: single channels
  }
}

TEST_F(CudaConv1d, RealShapes) {
  for (DType t : {DType::f32, DType::bf16}) {
    run_case(kReal, 8192, 4, t, 300);
    run_case(kMixed, 6144, 4, t, 310);
  }
}

// Two runs of the real shape give bitwise equal y, dx and dw.
TEST_F(CudaConv1d, Deterministic) {
  for (DType t : {DType::bf16, DType::f32}) {
    const Result a = run_case(kReal, 8192, 4, t, 400, false);
    const Result b = run_case(kReal, 8192, 4, t, 400, false);
    EXPECT_EQ(std::memcmp(a.y.data(), b.y.data(), a.y.size() * 4), 0) << "y differs";
    EXPECT_EQ(std::memcmp(a.dx.data(), b.dx.data(), a.dx.size() * 4), 0) << "dx differs";
    EXPECT_EQ(std::memcmp(a.dw.data(), b.dw.data(), a.dw.size() * 4), 0) << "dw differs";
  }
}

// Non-finite inputs in one segment never reach another one (no tap crosses a segment start).
TEST_F(CudaConv1d, NonFiniteInputStaysInItsSegment) {
  const std::vector<int32_t> cu = {0, 5, 9, 20};
  const int64_t N = 20, C = 3, W = 4;
  std::vector<float> xv = noise(N * C, 500);
  for (int64_t t = 5; t < 9; ++t)
    for (int64_t c = 0; c < C; ++c) xv[t * C + c] = std::numeric_limits<float>::infinity();
  DevTensor x = upload(xv, DType::f32);
  DevTensor w = upload(noise(C * W, 501), DType::f32);
  DevTensor dy = upload(noise(N * C, 502), DType::f32);
  dt::cuda::DeviceBuffer cu_dev(cu.size() * 4, "cu");
  DT_CUDA_CHECK(cudaMemcpy(cu_dev.get(), cu.data(), cu.size() * 4, cudaMemcpyHostToDevice));
  const auto* cu_d = static_cast<const int32_t*>(cu_dev.get());
  DevTensor y = poisoned(N * C, DType::f32), dx = poisoned(N * C, DType::f32);
  DevTensor dw = poisoned(C * W, DType::f32);
  dt::cuda::conv1d_fwd(DType::f32, x.ptr, w.ptr, cu_d, 3, N, C, W, y.ptr);
  dt::cuda::conv1d_bwd(DType::f32, x.ptr, w.ptr, cu_d, 3, dy.ptr, N, C, W, dx.ptr,
                       static_cast<float*>(dw.ptr));
  const std::vector<float> yh = download(y), dxh = download(dx);
  for (int64_t t = 0; t < N; ++t) {
    if (t >= 5 && t < 9) continue;
    for (int64_t c = 0; c < C; ++c) {
      EXPECT_TRUE(std::isfinite(yh[t * C + c])) << "y[" << t << "," << c << "]";
      EXPECT_TRUE(std::isfinite(dxh[t * C + c])) << "dx[" << t << "," << c << "]";
    }
  }
}

TEST_F(CudaConv1d, EmptyPackAndBadWidth) {
  std::vector<float> dw_host = {1.f, 2.f, 3.f, 4.f};
  DevTensor dw = upload(dw_host, DType::f32);
  const int32_t cu0 = 0;
  dt::cuda::DeviceBuffer cu_dev(4, "cu");
  DT_CUDA_CHECK(cudaMemcpy(cu_dev.get(), &cu0, 4, cudaMemcpyHostToDevice));
  const auto* cu_d = static_cast<const int32_t*>(cu_dev.get());
  dt::cuda::conv1d_fwd(DType::bf16, nullptr, nullptr, cu_d, 0, 0, 1, 4, nullptr);
  dt::cuda::conv1d_bwd(DType::bf16, nullptr, nullptr, cu_d, 0, nullptr, 0, 1, 4, nullptr,
                       static_cast<float*>(dw.ptr));
  EXPECT_EQ(download(dw), dw_host) << "N = 0 must leave dw untouched";
  dt_test::expect_error(
      [&] { dt::cuda::conv1d_fwd(DType::bf16, nullptr, nullptr, cu_d, 1, 1, 1, 9, nullptr); },
      {"cuda::conv1d_fwd", "W=9", "not supported"});
}

// Informative: kernel times at the real shape (bf16, N = C = 8192, W = 4), with aligned rows
// (4 channels per thread) and rows offset by 2 or 1 elements (2 or 1 channels per thread).
TEST_F(CudaConv1d, RealShapeTiming) {
  const int64_t N = 8192, C = 8192, W = 4;
  const std::vector<int32_t> cu = boundaries(kReal);
  dt::cuda::DeviceBuffer cu_dev(cu.size() * 4, "cu");
  DT_CUDA_CHECK(cudaMemcpy(cu_dev.get(), cu.data(), cu.size() * 4, cudaMemcpyHostToDevice));
  const auto* cu_d = static_cast<const int32_t*>(cu_dev.get());
  const int nseg = int(kReal.size());
  const std::vector<float> xv = noise(N * C, 600), dyv = noise(N * C, 602);
  DevTensor w = upload(noise(C * W, 601, 0.5), DType::bf16);
  DevTensor dw = upload(std::vector<float>(C * W, 0.f), DType::f32);
  auto time_us = [](auto&& f) {
    f();
    DT_CUDA_CHECK(cudaDeviceSynchronize());
    const int reps = 20;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) f();
    DT_CUDA_CHECK(cudaDeviceSynchronize());
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
               .count() /
           reps;
  };
  for (size_t off : {0, 2, 1}) {
    DevTensor x = upload(xv, DType::bf16, off), dy = upload(dyv, DType::bf16, off);
    DevTensor y = poisoned(N * C, DType::bf16, off), dx = poisoned(N * C, DType::bf16, off);
    const double fwd = time_us(
        [&] { dt::cuda::conv1d_fwd(DType::bf16, x.ptr, w.ptr, cu_d, nseg, N, C, W, y.ptr); });
    const double bwd = time_us([&] {
      dt::cuda::conv1d_bwd(DType::bf16, x.ptr, w.ptr, cu_d, nseg, dy.ptr, N, C, W, dx.ptr,
                           static_cast<float*>(dw.ptr));
    });
    const double mb = double(N * C * 2) / 1e6;  // one bf16 [N, C] tensor
    std::printf(
        "  conv1d bf16 N=C=8192 W=4 row offset %zu: fwd %.1f us (%.0f GB/s), "
        "bwd %.1f us (%.0f GB/s)\n",
        off, fwd, 2 * mb / fwd * 1e3, bwd, 3 * mb / bwd * 1e3);
  }
}
