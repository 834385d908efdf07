// Device tensors of the GPU model: core::Buffers on Device::cuda (the pool allocator of
// cuda/allocator.h, RAII, with its out-of-memory error), with the element-count API the GPU model
// uses.
#pragma once

#include <cstdint>
#include <string>

#include "core/buffer.h"
#include "cuda/allocator.h"
#include "cuda/dtype.h"

namespace deltatron::gpu {

using cuda::DType;

// n elements of dt on the GPU. Move-only.
class Buf {
 public:
  Buf() = default;
  Buf(int64_t n, DType dt, const char* what);

  void* get() const { return buf_.data(); }
  float* f32() const;  // checks dt == f32
  int32_t* i32() const { return static_cast<int32_t*>(buf_.data()); }
  int64_t n() const { return buf_.numel(); }
  DType dt() const { return buf_.dtype(); }
  size_t bytes() const { return buf_.bytes(); }
  const core::View& view() const { return buf_.view(); }
  // Element offset view (no ownership).
  void* at(int64_t i) const {
    return static_cast<char*>(buf_.data()) + size_t(i) * cuda::dtype_size(dt());
  }
  void zero();  // async memset

 private:
  core::Buffer buf_;
};

// int32 device buffer (ids, targets, positions, segment bounds) uploaded from the host.
Buf upload_i32(const int32_t* host, int64_t n, const char* what);
// float32 host -> device buffer of dt (rounded to bf16 when dt is bf16).
Buf upload_f32(const float* host, int64_t n, DType dt, const char* what);
// A new float32 device buffer holding a copy of n floats of device memory x (async).
Buf copy_f32(const float* x, int64_t n, const char* what);
void copy_to_host(const Buf& b, float* host);        // any dt -> float32 host (syncs)
void copy_to_host_i32(const Buf& b, int32_t* host);  // syncs

// The allocator's out-of-memory hint and live/peak accounting (cuda/allocator.h).
using cuda::live_bytes;
using cuda::peak_live_bytes;
using cuda::reset_peak_live_bytes;
using cuda::set_oom_hint;

}  // namespace deltatron::gpu
