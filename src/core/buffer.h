// Owning device memory behind a view: a Buffer takes its bytes from the allocator registered for
// its device. The host allocator is built in; a backend registers its own (the CUDA backend: the
// stream-ordered pool of cuda/allocator.h, with live/peak accounting and the out-of-memory
// message). Nothing in core knows a backend.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/view.h"

namespace deltatron::core {

class Allocator {
 public:
  virtual ~Allocator() = default;
  // `bytes` > 0. Errors (out of memory) throw core::Error naming `what`.
  virtual void* allocate(size_t bytes, const char* what) = 0;
  virtual void deallocate(void* p, size_t bytes) noexcept = 0;
  // Text appended to out-of-memory errors (what the caller plans to hold); bytes held by live
  // allocations now and at most since the last reset. The host allocator keeps no accounts.
  virtual void set_oom_hint(std::string) {}
  virtual int64_t live_bytes() const { return 0; }
  virtual int64_t peak_live_bytes() const { return 0; }
  virtual void reset_peak_live_bytes() {}
};

// The allocator of a device. The host one always exists; another device's is the one its backend
// registered (an error saying the build or the run has no such backend otherwise).
Allocator& allocator(Device d);
void register_allocator(Device d, Allocator* a);

// Host memory that a device can copy to and from asynchronously (page-locked: the offloaded
// training state). The CUDA backend registers its pinned allocator; without one this is the plain
// host allocator (the CPU engine, where "offloaded" state is where it would be anyway).
Allocator& pinned_host_allocator();
void register_pinned_host_allocator(Allocator* a);

// Memory for one tensor, freed on destruction; move-only. Contents are uninitialised.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Device d, DType t, Shape s, const char* what);
  // Host memory from pinned_host_allocator().
  static Buffer pinned_host(DType t, Shape s, const char* what);
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept { swap(o); }
  Buffer& operator=(Buffer&& o) noexcept {
    Buffer tmp(std::move(o));
    swap(tmp);
    return *this;
  }
  ~Buffer();

  const View& view() const { return view_; }
  // A buffer passes as its view to every op.
  operator const View&() const { return view_; }  // NOLINT(google-explicit-constructor)
  void* data() const { return view_.data; }
  DType dtype() const { return view_.dtype; }
  Device device() const { return view_.device; }
  const Shape& shape() const { return view_.shape; }
  int64_t numel() const { return view_.numel(); }
  size_t bytes() const { return view_.bytes(); }

 private:
  Buffer(Allocator& a, Device d, DType t, Shape s, const char* what);
  void swap(Buffer& o) noexcept;
  View view_{nullptr, DType::f32, Device::cpu, {0}};  // empty: no elements
  Allocator* alloc_ = nullptr;
};

}  // namespace deltatron::core
