// Device tensors of the GPU model: stream-ordered pool allocations owned RAII, with an
// out-of-memory error that says what was being allocated and what to lower.
#pragma once

#include <cstdint>
#include <string>

#include "cuda/dtype.h"

namespace deltatron::gpu {

using cuda::DType;

// n elements of dt from the CUDA default memory pool (cudaMallocAsync on the default stream; the
// pool keeps freed memory cached, so steady-state steps do not call the driver). Move-only.
class Buf {
 public:
  Buf() = default;
  Buf(int64_t n, DType dt, const char* what);
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  Buf(Buf&& o) noexcept { swap(o); }
  Buf& operator=(Buf&& o) noexcept {
    Buf tmp(std::move(o));
    swap(tmp);
    return *this;
  }
  ~Buf();

  void* get() const { return p_; }
  float* f32() const;  // checks dt == f32
  int32_t* i32() const { return static_cast<int32_t*>(p_); }
  int64_t n() const { return n_; }
  DType dt() const { return dt_; }
  size_t bytes() const { return size_t(n_) * cuda::dtype_size(dt_); }
  // Element offset view (no ownership).
  void* at(int64_t i) const { return static_cast<char*>(p_) + size_t(i) * cuda::dtype_size(dt_); }
  void zero();  // async memset

 private:
  void swap(Buf& o) noexcept;
  void* p_ = nullptr;
  int64_t n_ = 0;
  DType dt_ = DType::f32;
};

// int32 device buffer (ids, targets, positions, segment bounds) uploaded from the host.
Buf upload_i32(const int32_t* host, int64_t n, const char* what);
// float32 host -> device buffer of dt (rounded to bf16 when dt is bf16).
Buf upload_f32(const float* host, int64_t n, DType dt, const char* what);
// A new float32 device buffer holding a copy of n floats of device memory x (async).
Buf copy_f32(const float* x, int64_t n, const char* what);
void copy_to_host(const Buf& b, float* host);        // any dt -> float32 host (syncs)
void copy_to_host_i32(const Buf& b, int32_t* host);  // syncs

// Text appended to out-of-memory errors (the planned activation size and token budget); set by
// the model before a step.
void set_oom_hint(std::string hint);
// Bytes held by live Bufs now and at most since the last reset (what the model asked for; the
// pool may hold more).
int64_t live_bytes();
int64_t peak_live_bytes();
void reset_peak_live_bytes();

}  // namespace deltatron::gpu
