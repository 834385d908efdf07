// CUDA device checks, error checks and allocation: every CUDA failure becomes one core::Error line.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

namespace deltatron::cuda {

// Throws core::Error unless a usable Hopper GPU (compute capability 9.x) is present:
// "no CUDA device found; use --device cpu" without a device or driver, or a line naming the GPU
// and its compute capability for any other architecture. Checks the current device.
void require_hopper();

// cudaMalloc that turns failure (out of memory included) into core::Error naming `what`, the
// requested size and the free/total device memory. Returns nullptr for bytes == 0.
void* device_alloc(size_t bytes, const char* what);
// cudaFree; ignores nullptr. Never throws (usable from destructors).
void device_free(void* ptr) noexcept;

// Throws core::Error "<file>:<line>: <api> failed: <error name> (<description>)".
[[noreturn]] void fail_cuda(const char* api, cudaError_t err, const char* file, int line);

// Owning device buffer of `bytes` bytes (move-only).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(size_t bytes, const char* what) : ptr_(device_alloc(bytes, what)), bytes_(bytes) {}
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      device_free(ptr_);
      ptr_ = o.ptr_;
      bytes_ = o.bytes_;
      o.ptr_ = nullptr;
      o.bytes_ = 0;
    }
    return *this;
  }
  ~DeviceBuffer() { device_free(ptr_); }
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace deltatron::cuda

// DT_CUDA_CHECK(cudaMemcpy(...)): throws core::Error with file:line and the API call's text.
#define DT_CUDA_CHECK(call)                                                  \
  do {                                                                       \
    cudaError_t dt_cuda_err_ = (call);                                       \
    if (dt_cuda_err_ != cudaSuccess)                                         \
      ::deltatron::cuda::fail_cuda(#call, dt_cuda_err_, __FILE__, __LINE__); \
  } while (0)
