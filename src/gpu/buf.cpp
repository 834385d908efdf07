// Device tensors of the GPU model (see buf.h).
#include "gpu/buf.h"

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

#include "core/error.h"
#include "cuda/device.h"
#include "cuda/pointwise.h"

namespace deltatron::gpu {

namespace {
std::atomic<int64_t> g_live{0}, g_peak{0};
std::mutex g_hint_mu;
std::string g_hint;

void init_pool_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    int dev = 0;
    DT_CUDA_CHECK(cudaGetDevice(&dev));
    cudaMemPool_t pool;
    DT_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, dev));
    uint64_t keep = UINT64_MAX;  // never hand freed memory back to the driver between steps
    DT_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
  });
}

std::string gib(double bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f GiB", bytes / double(1ull << 30));
  return b;
}
}  // namespace

Buf::Buf(int64_t n, DType dt, const char* what) : n_(n), dt_(dt) {
  DT_CHECK(n >= 0, "negative device buffer size for ", what);
  if (n == 0) return;
  init_pool_once();
  cudaError_t err = cudaMallocAsync(&p_, bytes(), 0);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    p_ = nullptr;
    size_t free_b = 0, total_b = 0;
    (void)cudaMemGetInfo(&free_b, &total_b);
    (void)cudaGetLastError();
    std::string hint;
    {
      std::lock_guard<std::mutex> lock(g_hint_mu);
      hint = g_hint;
    }
    core::fail("out of GPU memory: allocating ", what, " (", gib(double(bytes())), ") with ",
               gib(double(g_live.load())),
               " already held by the model (device: ", gib(double(free_b)), " free of ",
               gib(double(total_b)), ")", hint.empty() ? "" : "; ", hint);
  }
  const int64_t live = g_live.fetch_add(int64_t(bytes())) + int64_t(bytes());
  int64_t peak = g_peak.load();
  while (live > peak && !g_peak.compare_exchange_weak(peak, live)) {
  }
}

Buf::~Buf() {
  if (!p_) return;
  (void)cudaFreeAsync(p_, 0);
  g_live.fetch_sub(int64_t(bytes()));
}

void Buf::swap(Buf& o) noexcept {
  std::swap(p_, o.p_);
  std::swap(n_, o.n_);
  std::swap(dt_, o.dt_);
}

float* Buf::f32() const {
  DT_CHECK(dt_ == DType::f32 || n_ == 0, "device buffer is ", cuda::dtype_name(dt_),
           ", expected f32");
  return static_cast<float*>(p_);
}

void Buf::zero() {
  if (p_) DT_CUDA_CHECK(cudaMemsetAsync(p_, 0, bytes(), 0));
}

Buf upload_i32(const int32_t* host, int64_t n, const char* what) {
  Buf b(n, DType::f32, what);  // 4-byte elements
  if (n) DT_CUDA_CHECK(cudaMemcpy(b.get(), host, size_t(n) * 4, cudaMemcpyHostToDevice));
  return b;
}

Buf upload_f32(const float* host, int64_t n, DType dt, const char* what) {
  Buf b(n, dt, what);
  if (!n) return b;
  if (dt == DType::f32) {
    DT_CUDA_CHECK(cudaMemcpy(b.get(), host, size_t(n) * 4, cudaMemcpyHostToDevice));
  } else {
    Buf tmp(n, DType::f32, what);
    DT_CUDA_CHECK(cudaMemcpy(tmp.get(), host, size_t(n) * 4, cudaMemcpyHostToDevice));
    cuda::cast(DType::f32, tmp.get(), dt, b.get(), n);
  }
  return b;
}

Buf copy_f32(const float* x, int64_t n, const char* what) {
  Buf b(n, DType::f32, what);
  if (n) DT_CUDA_CHECK(cudaMemcpyAsync(b.get(), x, size_t(n) * 4, cudaMemcpyDeviceToDevice, 0));
  return b;
}

void copy_to_host(const Buf& b, float* host) {
  if (!b.n()) return;
  if (b.dt() == DType::f32) {
    DT_CUDA_CHECK(cudaMemcpy(host, b.get(), b.bytes(), cudaMemcpyDeviceToHost));
  } else {
    Buf tmp(b.n(), DType::f32, "download staging");
    cuda::cast(b.dt(), b.get(), DType::f32, tmp.get(), b.n());
    DT_CUDA_CHECK(cudaMemcpy(host, tmp.get(), tmp.bytes(), cudaMemcpyDeviceToHost));
  }
}

void copy_to_host_i32(const Buf& b, int32_t* host) {
  if (b.n()) DT_CUDA_CHECK(cudaMemcpy(host, b.get(), size_t(b.n()) * 4, cudaMemcpyDeviceToHost));
}

void set_oom_hint(std::string hint) {
  std::lock_guard<std::mutex> lock(g_hint_mu);
  g_hint = std::move(hint);
}
int64_t live_bytes() { return g_live.load(); }
int64_t peak_live_bytes() { return g_peak.load(); }
void reset_peak_live_bytes() { g_peak.store(g_live.load()); }

}  // namespace deltatron::gpu
