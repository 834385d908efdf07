// The CUDA pool allocator (see allocator.h).
#include "cuda/allocator.h"

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdio>
#include <mutex>

#include "core/buffer.h"
#include "core/error.h"
#include "cuda/device.h"

namespace deltatron::cuda {

namespace {

std::atomic<int64_t> g_live{0}, g_peak{0};
std::mutex g_hint_mu;
std::string g_hint;

std::string gib(double bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f GiB", bytes / double(1ull << 30));
  return b;
}

class PoolAllocator final : public core::Allocator {
 public:
  void* allocate(size_t bytes, const char* what) override {
    void* p = nullptr;
    const cudaError_t err = cudaMallocAsync(&p, bytes, 0);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      (void)cudaMemGetInfo(&free_b, &total_b);
      (void)cudaGetLastError();
      std::string hint;
      {
        std::lock_guard<std::mutex> lock(g_hint_mu);
        hint = g_hint;
      }
      core::fail("out of GPU memory: allocating ", what, " (", gib(double(bytes)), ") with ",
                 gib(double(g_live.load())),
                 " already held by the model (device: ", gib(double(free_b)), " free of ",
                 gib(double(total_b)), ")", hint.empty() ? "" : "; ", hint);
    }
    const int64_t live = g_live.fetch_add(int64_t(bytes)) + int64_t(bytes);
    int64_t peak = g_peak.load();
    while (live > peak && !g_peak.compare_exchange_weak(peak, live)) {
    }
    return p;
  }
  void deallocate(void* p, size_t bytes) noexcept override {
    (void)cudaFreeAsync(p, 0);
    g_live.fetch_sub(int64_t(bytes));
  }
  void set_oom_hint(std::string hint) override { cuda::set_oom_hint(std::move(hint)); }
  int64_t live_bytes() const override { return cuda::live_bytes(); }
  int64_t peak_live_bytes() const override { return cuda::peak_live_bytes(); }
  void reset_peak_live_bytes() override { cuda::reset_peak_live_bytes(); }
};

// Page-locked host memory (cudaHostAlloc): the offloaded training state, which the AdamW step
// streams through the GPU with asynchronous copies.
class PinnedHostAllocator final : public core::Allocator {
 public:
  void* allocate(size_t bytes, const char* what) override {
    void* p = nullptr;
    const cudaError_t e = cudaHostAlloc(&p, bytes, cudaHostAllocDefault);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      core::fail("out of pinned host memory: allocating ", what, " (",
                 double(bytes) / double(1ull << 30), " GiB): ", cudaGetErrorString(e),
                 "; offload less state (training.offload) or free host memory");
    }
    return p;
  }
  void deallocate(void* p, size_t) noexcept override { (void)cudaFreeHost(p); }
};

}  // namespace

void install_allocator() {
  static std::once_flag once;
  std::call_once(once, [] {
    int dev = 0;
    DT_CUDA_CHECK(cudaGetDevice(&dev));
    cudaMemPool_t pool;
    DT_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, dev));
    uint64_t keep = UINT64_MAX;  // never hand freed memory back to the driver between steps
    DT_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    static PoolAllocator allocator;
    core::register_allocator(core::Device::cuda, &allocator);
    static PinnedHostAllocator pinned;
    core::register_pinned_host_allocator(&pinned);
  });
}

void set_oom_hint(std::string hint) {
  std::lock_guard<std::mutex> lock(g_hint_mu);
  g_hint = std::move(hint);
}
int64_t live_bytes() { return g_live.load(); }
int64_t peak_live_bytes() { return g_peak.load(); }
void reset_peak_live_bytes() { g_peak.store(g_live.load()); }

}  // namespace deltatron::cuda
