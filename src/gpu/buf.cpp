// Device tensors of the GPU model (see buf.h).
#include "gpu/buf.h"

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/error.h"
#include "cuda/device.h"
#include "cuda/pointwise.h"

namespace deltatron::gpu {

Buf::Buf(int64_t n, DType dt, const char* what) {
  DT_CHECK(n >= 0, "negative device buffer size for ", what);
  if (n > 0) cuda::install_allocator();
  buf_ = core::Buffer(core::Device::cuda, dt, {n}, what);
}

float* Buf::f32() const {
  DT_CHECK(dt() == DType::f32 || n() == 0, "device buffer is ", cuda::dtype_name(dt()),
           ", expected f32");
  return static_cast<float*>(buf_.data());
}

void Buf::zero() {
  if (buf_.data()) DT_CUDA_CHECK(cudaMemsetAsync(buf_.data(), 0, bytes(), 0));
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

}  // namespace deltatron::gpu
