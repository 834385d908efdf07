// CUDA memory transfers and byte fills (see memory.h).
#include "cuda/memory.h"

#include <cuda_runtime_api.h>

#include <atomic>
#include <vector>

#include "core/error.h"
#include "cuda/device.h"

namespace deltatron::cuda {

namespace {
std::atomic<int64_t> g_device_to_host_copies{0};
}  // namespace

int64_t device_to_host_copies() { return g_device_to_host_copies.load(); }
void note_device_to_host_copy() { g_device_to_host_copies.fetch_add(1); }

void copy_from_host(void* dst, const void* src_host, size_t bytes) {
  if (bytes == 0) return;
  DT_CUDA_CHECK(cudaMemcpy(dst, src_host, bytes, cudaMemcpyHostToDevice));
}

void copy_to_host(void* dst_host, const void* src, size_t bytes) {
  if (bytes == 0) return;
  note_device_to_host_copy();
  DT_CUDA_CHECK(cudaMemcpy(dst_host, src, bytes, cudaMemcpyDeviceToHost));
}

void zero(void* x, size_t bytes) {
  if (bytes == 0) return;
  DT_CUDA_CHECK(cudaMemsetAsync(x, 0, bytes, cudaStreamLegacy));
}

void fill_i32(int32_t* x, int32_t value, int64_t n) {
  DT_CHECK(n >= 0, "cuda::fill_i32: negative n=", n);
  if (n == 0) return;
  if (value == 0) return zero(x, sizeof(int32_t) * size_t(n));
  const std::vector<int32_t> host(size_t(n), value);
  DT_CUDA_CHECK(cudaMemcpy(x, host.data(), sizeof(int32_t) * size_t(n), cudaMemcpyHostToDevice));
}

void synchronize() { DT_CUDA_CHECK(cudaDeviceSynchronize()); }

}  // namespace deltatron::cuda
