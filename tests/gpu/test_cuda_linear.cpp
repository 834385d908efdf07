// GPU parity of the cuBLASLt linear layer (cuda::linear_*) against the CPU reference (label gpu).
//
// Reference: cpu::linear_* in double on the same inputs (bf16-rounded for the bf16 cases).
// Outputs are poisoned with NaN before each call so unwritten elements fail; accumulating
// outputs start from random values. Tolerances (relative RMS): float32 inputs 1e-5 (no TF32);
// bf16 inputs 5e-3 forward and 1e-2 backward, as the op-parity table allows for bf16.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "bf16_util.h"
#include "core/error.h"
#include "core/view.h"
#include "cpu/linear.h"
#include "cuda/device.h"
#include "cuda/linear.h"
#include "ops/linear.h"
#include "test_util.h"

namespace dt = deltatron;
using dt::cuda::DType;

namespace {

// float -> bfloat16 bits, round to nearest even (inputs here are finite).
using dt_test::from_bf16;
using dt_test::to_bf16;

// A host float32 tensor on the device, as float32 or bf16, at an element offset (to exercise
// misaligned pointers). `host` holds the values the device sees (bf16-rounded if bf16).
struct DevInput {
  std::vector<float> host;
  dt::cuda::DeviceBuffer buf;
  const void* ptr = nullptr;
};

DevInput upload(std::vector<float> v, DType t, size_t offset) {
  DevInput d;
  const size_t esz = t == DType::bf16 ? 2 : 4;
  d.buf = dt::cuda::DeviceBuffer((v.size() + offset) * esz, "test input");
  char* base = static_cast<char*>(d.buf.get()) + offset * esz;
  if (t == DType::bf16) {
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      h[i] = to_bf16(v[i]);
      v[i] = from_bf16(h[i]);
    }
    DT_CUDA_CHECK(cudaMemcpy(base, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  } else {
    DT_CUDA_CHECK(cudaMemcpy(base, v.data(), v.size() * 4, cudaMemcpyHostToDevice));
  }
  d.host = std::move(v);
  d.ptr = base;
  return d;
}

// float32 output buffer: NaN-poisoned (init empty) or holding `init`.
dt::cuda::DeviceBuffer output(size_t n, const std::vector<float>& init) {
  dt::cuda::DeviceBuffer b(n * 4, "test output");
  if (init.empty())
    DT_CUDA_CHECK(cudaMemset(b.get(), 0xFF, n * 4));  // all-ones bits: NaN
  else
    DT_CUDA_CHECK(cudaMemcpy(b.get(), init.data(), n * 4, cudaMemcpyHostToDevice));
  return b;
}

std::vector<float> download(const dt::cuda::DeviceBuffer& b, size_t n) {
  std::vector<float> h(n);
  DT_CUDA_CHECK(cudaDeviceSynchronize());
  DT_CUDA_CHECK(cudaMemcpy(h.data(), b.get(), n * 4, cudaMemcpyDeviceToHost));
  return h;
}

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// Checks got against want: no NaN/inf, rel RMS <= tol; prints the measured error either way.
double check(const std::vector<float>& got, const std::vector<double>& want, double tol,
             const std::string& what) {
  size_t bad = 0;
  for (float g : got) bad += !std::isfinite(g);
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " non-finite elements (unwritten or overflow)";
  auto r = dt_test::compare(got, want);
  EXPECT_LE(r.rel_rms, tol) << what << ": " << r.str();
  std::printf("  %-44s rel_rms=%.3e max_abs=%.3e (tol %.0e)\n", what.c_str(), r.rel_rms, r.max_abs,
              tol);
  return r.rel_rms;
}

struct Case {
  int64_t N, I, O;
  DType t;
  size_t offset;  // element offset of every input pointer (0: 256-byte aligned)
};

std::string name(const Case& c) {
  return std::string(c.t == DType::bf16 ? "bf16" : "f32") + " N=" + std::to_string(c.N) +
         " I=" + std::to_string(c.I) + " O=" + std::to_string(c.O) +
         (c.offset ? " off=" + std::to_string(c.offset) : "");
}

void run_case(const Case& c, uint64_t seed) {
  const auto [N, I, O, t, off] = c;
  const double tol_fwd = t == DType::bf16 ? 5e-3 : 1e-5;
  const double tol_bwd = t == DType::bf16 ? 1e-2 : 1e-5;
  std::printf("%s\n", name(c).c_str());
  DevInput x = upload(dt_test::randn<float>(N * I, seed + 1), t, off);
  DevInput W = upload(dt_test::randn<float>(O * I, seed + 2, 0.05), t, off);
  DevInput dy = upload(dt_test::randn<float>(N * O, seed + 3), t, off);
  auto x_d = to_double(x.host), W_d = to_double(W.host), dy_d = to_double(dy.host);

  // forward
  auto y = output(N * O, {});
  dt::cuda::linear_fwd(t, x.ptr, W.ptr, N, I, O, static_cast<float*>(y.get()));
  std::vector<double> y_ref(N * O);
  dt::cpu::linear_fwd<double>(x_d.data(), W_d.data(), N, I, O, y_ref.data());
  check(download(y, N * O), y_ref, tol_fwd, name(c) + " y");

  // backward: dx overwritten (poisoned), dW accumulated onto random values
  auto dW0 = dt_test::randn<float>(O * I, seed + 4);
  auto dx = output(N * I, {});
  auto dW = output(O * I, dW0);
  dt::cuda::linear_bwd(t, x.ptr, W.ptr, dy.ptr, N, I, O, static_cast<float*>(dx.get()), false,
                       static_cast<float*>(dW.get()));
  std::vector<double> dx_ref(N * I), dW_ref = to_double(dW0);
  dt::cpu::linear_bwd<double>(x_d.data(), W_d.data(), dy_d.data(), N, I, O, dx_ref.data(), false,
                              dW_ref.data());
  check(download(dx, N * I), dx_ref, tol_bwd, name(c) + " dx (=)");
  check(download(dW, O * I), dW_ref, tol_bwd, name(c) + " dW (+=)");

  // backward: dx accumulated onto random values, dW skipped
  auto dx0 = dt_test::randn<float>(N * I, seed + 5);
  auto dx_acc = output(N * I, dx0);
  dt::cuda::linear_bwd(t, x.ptr, W.ptr, dy.ptr, N, I, O, static_cast<float*>(dx_acc.get()), true,
                       nullptr);
  std::vector<double> dx_acc_ref = to_double(dx0);
  dt::cpu::linear_bwd<double>(x_d.data(), W_d.data(), dy_d.data(), N, I, O, dx_acc_ref.data(), true,
                              nullptr);
  check(download(dx_acc, N * I), dx_acc_ref, tol_bwd, name(c) + " dx (+=)");
}

class CudaLinear : public ::testing::Test {
 protected:
  void SetUp() override { dt::cuda::require_hopper(); }
};

}  // namespace

TEST_F(CudaLinear, Float32MatchesCpu) {
  run_case({7, 13, 11, DType::f32, 0}, 100);
  run_case({7, 13, 11, DType::f32, 1}, 110);
  run_case({113, 203, 77, DType::f32, 0}, 120);
  run_case({1000, 2048, 6144, DType::f32, 0}, 130);
}

TEST_F(CudaLinear, Bf16InputsMatchCpuOnRoundedInputs) {
  run_case({7, 13, 11, DType::bf16, 0}, 200);
  run_case({7, 13, 11, DType::bf16, 1}, 210);
  run_case({113, 203, 77, DType::bf16, 0}, 220);
  run_case({1000, 2048, 6144, DType::bf16, 0}, 230);
}

// ops::linear_fwd on cuda views reaches the cuBLASLt path (float32, device pointers).
TEST_F(CudaLinear, OpsDispatchUsesCuda) {
  const int64_t N = 5, I = 9, O = 3;
  DevInput x = upload(dt_test::randn<float>(N * I, 300), DType::f32, 0);
  DevInput W = upload(dt_test::randn<float>(O * I, 301), DType::f32, 0);
  auto y = output(N * O, {});
  const auto on_gpu = [](const void* p, int64_t n) {
    return dt::core::View(const_cast<void*>(p), DType::f32, dt::core::Device::cuda, {n});
  };
  dt::ops::linear_fwd(on_gpu(x.ptr, N * I), on_gpu(W.ptr, O * I), N, I, O, on_gpu(y.get(), N * O),
                      false);
  std::vector<double> y_ref(N * O), x_d = to_double(x.host), W_d = to_double(W.host);
  dt::cpu::linear_fwd<double>(x_d.data(), W_d.data(), N, I, O, y_ref.data());
  check(download(y, N * O), y_ref, 1e-5, "ops dispatch y");
}

// alpha (the LoRA scale) scales each product on the GPU as on the CPU: overwrite, accumulate, dW.
TEST_F(CudaLinear, AlphaScalesEveryProduct) {
  const int64_t N = 6, I = 10, O = 7;
  const float alpha = -1.75f;
  DevInput x = upload(dt_test::randn<float>(N * I, 310), DType::f32, 0);
  DevInput W = upload(dt_test::randn<float>(O * I, 311), DType::f32, 0);
  DevInput dy = upload(dt_test::randn<float>(N * O, 312), DType::f32, 0);
  const auto on_gpu = [](const void* p, int64_t n) {
    return dt::core::View(const_cast<void*>(p), DType::f32, dt::core::Device::cuda, {n});
  };
  std::vector<double> x_d = to_double(x.host), W_d = to_double(W.host), dy_d = to_double(dy.host);
  std::vector<double> y_ref(N * O), dx_ref(N * I, 0.0), dW_ref(O * I, 0.0);
  dt::cpu::linear_fwd<double>(x_d.data(), W_d.data(), N, I, O, y_ref.data());
  dt::cpu::linear_bwd<double>(x_d.data(), W_d.data(), dy_d.data(), N, I, O, dx_ref.data(), false,
                              dW_ref.data());
  for (double& t : y_ref) t *= alpha;
  for (double& t : dx_ref) t *= alpha;
  for (double& t : dW_ref) t *= alpha;
  auto y = output(N * O, {});
  dt::ops::linear_fwd(on_gpu(x.ptr, N * I), on_gpu(W.ptr, O * I), N, I, O, on_gpu(y.get(), N * O),
                      false, alpha);
  check(download(y, N * O), y_ref, 1e-5, "alpha y");
  auto dx = output(N * I, {});
  dt::ops::linear_bwd_dx(on_gpu(dy.ptr, N * O), on_gpu(W.ptr, O * I), N, I, O,
                         on_gpu(dx.get(), N * I), false, alpha);
  check(download(dx, N * I), dx_ref, 1e-5, "alpha dx");
  auto dW = output(O * I, std::vector<float>(size_t(O * I), 0.f));
  dt::ops::linear_bwd_dw(on_gpu(x.ptr, N * I), on_gpu(dy.ptr, N * O), N, I, O,
                         on_gpu(dW.get(), O * I), alpha);
  check(download(dW, O * I), dW_ref, 1e-5, "alpha dW");
}

// accumulate = false (a step's first write of a gradient, model::Params::g_target): dW is
// overwritten without being read (NaN-poisoned here), in bf16 and f32, and N = 0 writes zeros.
TEST_F(CudaLinear, WeightGradientOverwriteDoesNotReadDw) {
  for (DType t : {DType::f32, DType::bf16}) {
    const int64_t N = 37, I = 24, O = 40;
    DevInput x = upload(dt_test::randn<float>(N * I, 320), t, 0);
    DevInput dy = upload(dt_test::randn<float>(N * O, 321), t, 0);
    std::vector<double> dW_ref(O * I, 0.0);
    dt::cpu::linear_bwd<double>(to_double(x.host).data(), nullptr, to_double(dy.host).data(), N, I,
                                O, nullptr, false, dW_ref.data());
    auto dW = output(O * I, {});  // NaN
    dt::cuda::linear_bwd_dw(t, x.ptr, dy.ptr, N, I, O, static_cast<float*>(dW.get()), 1.0f, false);
    check(download(dW, O * I), dW_ref, t == DType::f32 ? 1e-5 : 1e-2, "dW overwritten");
    dt::cuda::linear_bwd_dw(t, x.ptr, dy.ptr, N, I, O, static_cast<float*>(dW.get()));  // then +=
    for (double& v : dW_ref) v *= 2;
    check(download(dW, O * I), dW_ref, t == DType::f32 ? 1e-5 : 1e-2, "dW overwritten, then added");
    auto dW0 = output(O * I, {});
    dt::cuda::linear_bwd_dw(t, x.ptr, dy.ptr, 0, I, O, static_cast<float*>(dW0.get()), 1.0f, false);
    EXPECT_EQ(download(dW0, O * I), std::vector<float>(size_t(O * I), 0.f)) << "N = 0 overwrite";
  }
}

// The second call with the same shape reuses the cached plan.
TEST_F(CudaLinear, PlansAreCachedByShape) {
  const int64_t N = 17, I = 19, O = 23;
  DevInput x = upload(dt_test::randn<float>(N * I, 400), DType::f32, 0);
  DevInput W = upload(dt_test::randn<float>(O * I, 401), DType::f32, 0);
  auto y = output(N * O, {});
  dt::cuda::linear_fwd(DType::f32, x.ptr, W.ptr, N, I, O, static_cast<float*>(y.get()));
  const int64_t plans = dt::cuda::linear_plan_count();
  dt::cuda::linear_fwd(DType::f32, x.ptr, W.ptr, N, I, O, static_cast<float*>(y.get()));
  EXPECT_EQ(dt::cuda::linear_plan_count(), plans);
  DT_CUDA_CHECK(cudaDeviceSynchronize());
}

// Token counts change with nearly every pack: each new shape costs one cuBLASLt heuristic query
// per product (cuda/linear.cu), a repeated one none (its cached plan).
TEST_F(CudaLinear, EachNewShapeSearchesOnceAndRepeatsReuseThePlan) {
  const int64_t I = 72, O = 40;
  const int64_t q0 = dt::cuda::linear_plan_count();
  run_case({7169, I, O, DType::bf16, 0}, 900);
  const int64_t q1 = dt::cuda::linear_plan_count();
  EXPECT_GT(q1, q0);  // the new shapes' searches (forward, dx =, dW +=, dx +=)
  run_case({7169, I, O, DType::bf16, 0}, 901);
  EXPECT_EQ(dt::cuda::linear_plan_count(), q1) << "a repeated shape searched again";
  run_case({7170, I, O, DType::bf16, 0}, 902);
  EXPECT_EQ(dt::cuda::linear_plan_count(), 2 * q1 - q0) << "another token count";
  EXPECT_EQ(dt::ops::linear_heuristic_queries(dt::core::Device::cuda), 2 * q1 - q0);
}

TEST_F(CudaLinear, OutOfMemoryIsOneLineErrorWithSize) {
  const size_t huge = size_t(1) << 50;  // 1 PiB
  dt_test::expect_error([&] { dt::cuda::DeviceBuffer b(huge, "test tensor"); },
                        {"out of memory", std::to_string(huge), "test tensor"});
  // the device stays usable afterwards
  dt::cuda::DeviceBuffer ok(1024, "small");
  DT_CUDA_CHECK(cudaMemset(ok.get(), 0, 1024));
  DT_CUDA_CHECK(cudaDeviceSynchronize());
}

TEST_F(CudaLinear, CudaCheckNamesApiAndLocation) {
  dt_test::expect_error(
      [] { DT_CUDA_CHECK(cudaSetDevice(12345)); },
      {"test_cuda_linear.cpp:", "cudaSetDevice(12345)", "cudaErrorInvalidDevice"});
}

TEST_F(CudaLinear, HostPointersAreRefused) {
  std::vector<float> x(4, 1.f), y(4);
  dt_test::expect_error(
      [&] { dt::cuda::linear_fwd(DType::f32, x.data(), x.data(), 2, 2, 2, y.data()); },
      {"cuda::linear_fwd", "x_NI", "not device memory"});
}
