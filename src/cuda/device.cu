// CUDA device checks, error checks and allocation (see device.h).
#include "core/error.h"
#include "cuda/device.h"

namespace deltatron::cuda {

void fail_cuda(const char* api, cudaError_t err, const char* file, int line) {
  core::fail(file, ":", line, ": ", api, " failed: ", cudaGetErrorName(err), " (",
             cudaGetErrorString(err), ")");
}

void require_hopper() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    (void)cudaGetLastError();  // clear the sticky "no device/driver" error
    if (err == cudaSuccess || err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver)
      core::fail("no CUDA device found; use --device cpu");
    core::fail("no CUDA device found (", cudaGetErrorName(err), ": ", cudaGetErrorString(err),
               "); use --device cpu");
  }
  int dev = 0;
  DT_CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp prop{};
  DT_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  if (prop.major != 9)
    core::fail("CUDA device ", dev, " (", prop.name, ") has compute capability ", prop.major, ".",
               prop.minor, "; deltatron's CUDA backend needs Hopper (9.x); use --device cpu");
}

void* device_alloc(size_t bytes, const char* what) {
  if (bytes == 0) return nullptr;
  void* ptr = nullptr;
  cudaError_t err = cudaMalloc(&ptr, bytes);
  if (err == cudaSuccess) return ptr;
  (void)cudaGetLastError();  // an out-of-memory error is not sticky; clear it
  size_t free_b = 0, total_b = 0;
  const bool have_info = cudaMemGetInfo(&free_b, &total_b) == cudaSuccess;
  (void)cudaGetLastError();
  constexpr double kMiB = 1024.0 * 1024.0;
  if (err == cudaErrorMemoryAllocation) {
    if (have_info)
      core::fail("CUDA out of memory allocating ", bytes, " bytes (", bytes / kMiB, " MiB) for ",
                 what, "; free ", free_b / kMiB, " MiB of ", total_b / kMiB, " MiB");
    core::fail("CUDA out of memory allocating ", bytes, " bytes (", bytes / kMiB, " MiB) for ",
               what);
  }
  core::fail("cudaMalloc of ", bytes, " bytes for ", what, " failed: ", cudaGetErrorName(err), " (",
             cudaGetErrorString(err), ")");
}

void device_free(void* ptr) noexcept {
  if (ptr) (void)cudaFree(ptr);
}

void* ScratchBuffer::get(size_t bytes) {
  std::lock_guard<std::mutex> lock(grow_mu_);
  if (buf_.bytes() < bytes) {
    if (buf_.get()) DT_CUDA_CHECK(cudaDeviceSynchronize());  // queued kernels may still use it
    buf_ = DeviceBuffer();
    buf_ = DeviceBuffer(bytes, what_);
  }
  return buf_.get();
}

size_t ScratchBuffer::bytes() {
  std::lock_guard<std::mutex> lock(grow_mu_);
  return buf_.bytes();
}

void check_device_ptr(const char* op, const char* name, const void* p) {
  if (!p) return;
  cudaPointerAttributes attr{};
  cudaError_t err = cudaPointerGetAttributes(&attr, p);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    core::fail(op, ": cannot inspect pointer ", name, ": ", cudaGetErrorName(err), " (",
               cudaGetErrorString(err), ")");
  }
  DT_CHECK(attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged, op, ": ", name,
           " is not device memory");
}

}  // namespace deltatron::cuda
