// CUDA device checks, error checks and allocation: every CUDA failure becomes one core::Error line.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <mutex>

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

// A grow-only device buffer that one op family reuses across calls (create it once, e.g. a
// function-local `static ScratchBuffer* s = new ScratchBuffer("...")`, leaked so exit order does
// not matter). Reuse needs no synchronisation: every user queues on the legacy default stream,
// so a later call's kernels run after the earlier call's. Growing waits for the device, frees
// the old buffer first (the peak is the new size alone), then allocates exactly `bytes`.
// get() is thread-safe; `mu` is for callers that must hold the buffer for a whole call.
class ScratchBuffer {
 public:
  explicit ScratchBuffer(const char* what) : what_(what) {}
  void* get(size_t bytes);
  size_t bytes();  // the size held now
  std::mutex mu;

 private:
  const char* what_;
  std::mutex grow_mu_;
  DeviceBuffer buf_;
};

// Throws core::Error "<op>: <name> is not device memory" for a host pointer (an asynchronous
// illegal-address error later otherwise), or when the pointer cannot be inspected; also refuses
// every pointer when no device is usable. nullptr passes (skipped outputs).
void check_device_ptr(const char* op, const char* name, const void* p);

}  // namespace deltatron::cuda

// DT_CUDA_CHECK(cudaMemcpy(...)): throws core::Error with file:line and the API call's text.
#define DT_CUDA_CHECK(call)                                                  \
  do {                                                                       \
    cudaError_t dt_cuda_err_ = (call);                                       \
    if (dt_cuda_err_ != cudaSuccess)                                         \
      ::deltatron::cuda::fail_cuda(#call, dt_cuda_err_, __FILE__, __LINE__); \
  } while (0)
