// Device tensors for the GPU op tests: upload (bf16-rounded, with an element offset to misalign),
// NaN-poisoned outputs, download, and a parity check that records the worst error per output.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "bf16_util.h"
#include "core/error.h"
#include "cuda/device.h"
#include "test_util.h"

namespace dt_test {

using deltatron::cuda::DType;

// A device tensor of n elements of type t at an element offset (to misalign it); `host` holds
// exactly the values the device was given (bf16-rounded for bf16).
struct DevTensor {
  std::vector<float> host;
  deltatron::cuda::DeviceBuffer buf;
  DType t = DType::f32;
  size_t n = 0;
  void* ptr = nullptr;
  float* f32() const { return static_cast<float*>(ptr); }
};

inline DevTensor alloc(size_t n, DType t, size_t offset) {
  DevTensor d;
  d.t = t;
  d.n = n;
  const size_t es = deltatron::cuda::dtype_size(t);
  d.buf = deltatron::cuda::DeviceBuffer((n + offset + 1) * es, "test tensor");
  d.ptr = static_cast<char*>(d.buf.get()) + offset * es;
  return d;
}

inline DevTensor upload(std::vector<float> v, DType t, size_t offset = 0) {
  DevTensor d = alloc(v.size(), t, offset);
  if (t == DType::bf16) {
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      h[i] = to_bf16(v[i]);
      v[i] = from_bf16(h[i]);
    }
    DT_CUDA_CHECK(cudaMemcpy(d.ptr, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  } else {
    DT_CUDA_CHECK(cudaMemcpy(d.ptr, v.data(), v.size() * 4, cudaMemcpyHostToDevice));
  }
  d.host = std::move(v);
  return d;
}

// NaN-filled output (0xFF bytes are NaN in fp32 and bf16).
inline DevTensor poisoned(size_t n, DType t, size_t offset = 0) {
  DevTensor d = alloc(n, t, offset);
  DT_CUDA_CHECK(cudaMemset(d.buf.get(), 0xFF, d.buf.bytes()));
  return d;
}

inline std::vector<uint8_t> bytes_of(const DevTensor& d) {
  std::vector<uint8_t> b(d.n * deltatron::cuda::dtype_size(d.t));
  DT_CUDA_CHECK(cudaDeviceSynchronize());
  if (!b.empty()) DT_CUDA_CHECK(cudaMemcpy(b.data(), d.ptr, b.size(), cudaMemcpyDeviceToHost));
  return b;
}

inline std::vector<float> download(const DevTensor& d) {
  const std::vector<uint8_t> b = bytes_of(d);
  std::vector<float> v(d.n);
  for (size_t i = 0; i < d.n; ++i) {
    if (d.t == DType::bf16) {
      uint16_t h;
      std::memcpy(&h, b.data() + 2 * i, 2);
      v[i] = from_bf16(h);
    } else {
      std::memcpy(&v[i], b.data() + 4 * i, 4);
    }
  }
  return v;
}

inline std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// The op-test bounds (docs/tolerances.md): outputs stored in fp32 1e-5; in bf16 5e-3 forward,
// 1e-2 backward.
inline double tol_for(DType stored, bool bwd) {
  return stored == DType::f32 ? 1e-5 : (bwd ? 1e-2 : 5e-3);
}

// Worst relative RMS and max abs per op output, printed at the end of the run by PrintWorst
// (register it once per test executable with ::testing::AddGlobalTestEnvironment).
inline std::map<std::string, std::pair<double, double>>& worst() {
  static std::map<std::string, std::pair<double, double>> w;
  return w;
}

struct PrintWorst : ::testing::Environment {
  void TearDown() override {
    std::printf("\nmeasured worst (relative RMS, max abs) per op output:\n");
    for (auto& [k, v] : worst())
      std::printf("  %-40s rel_rms=%.3e max_abs=%.3e\n", k.c_str(), v.first, v.second);
  }
};

// Expects finite values and rel RMS <= tol; prints the measurement; records the worst under key.
inline void check(const std::vector<float>& got, const std::vector<double>& want, double tol,
                  const std::string& key, const std::string& where) {
  size_t bad = 0;
  for (float g : got) bad += !std::isfinite(g);
  EXPECT_EQ(bad, 0u) << key << " " << where << ": " << bad << " non-finite (unwritten?) elements";
  if (got.empty()) return;
  const auto r = compare(got, want);
  EXPECT_LE(r.rel_rms, tol) << key << " " << where << ": " << r.str();
  std::printf("  %-34s %-26s rel_rms=%.3e max_abs=%.3e (tol %.0e)\n", key.c_str(), where.c_str(),
              r.rel_rms, r.max_abs, tol);
  auto& w = worst()[key];
  w.first = std::max(w.first, r.rel_rms);
  w.second = std::max(w.second, r.max_abs);
}

}  // namespace dt_test
