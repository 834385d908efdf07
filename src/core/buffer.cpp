// Allocator registry, the host allocator, and Buffer.
#include "core/buffer.h"

#include <array>
#include <cstdlib>
#include <new>

namespace deltatron::core {

namespace {

// 64-byte aligned host memory (vector loads, cache lines).
class HostAllocator final : public Allocator {
 public:
  void* allocate(size_t bytes, const char* what) override {
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    DT_CHECK(p != nullptr, "out of host memory: allocating ", what, " (", bytes, " bytes)");
    return p;
  }
  void deallocate(void* p, size_t) noexcept override { std::free(p); }
};

HostAllocator& host_allocator() {
  static HostAllocator host;
  return host;
}

std::array<Allocator*, 2>& registry() {
  static std::array<Allocator*, 2> r = {&host_allocator(), nullptr};
  return r;
}

Allocator*& pinned_registry() {
  static Allocator* a = nullptr;
  return a;
}

}  // namespace

Allocator& allocator(Device d) {
  Allocator* a = registry()[static_cast<size_t>(d)];
  DT_CHECK(a != nullptr, "no allocator for device ", device_name(d),
           ": this build or run has no such backend");
  return *a;
}

void register_allocator(Device d, Allocator* a) { registry()[static_cast<size_t>(d)] = a; }

Allocator& pinned_host_allocator() {
  Allocator* a = pinned_registry();
  return a ? *a : host_allocator();
}

void register_pinned_host_allocator(Allocator* a) { pinned_registry() = a; }

Buffer::Buffer(Device d, DType t, Shape s, const char* what)
    : Buffer(allocator(d), d, t, std::move(s), what) {}

Buffer::Buffer(Allocator& a, Device d, DType t, Shape s, const char* what)
    : view_(nullptr, t, d, std::move(s)) {
  for (int64_t n : view_.shape) DT_CHECK(n >= 0, "negative dimension in the shape of ", what);
  if (view_.numel() == 0) return;
  alloc_ = &a;
  view_.data = alloc_->allocate(view_.bytes(), what);
}

Buffer Buffer::pinned_host(DType t, Shape s, const char* what) {
  return Buffer(pinned_host_allocator(), Device::cpu, t, std::move(s), what);
}

Buffer::~Buffer() {
  if (view_.data) alloc_->deallocate(view_.data, view_.bytes());
}

void Buffer::swap(Buffer& o) noexcept {
  std::swap(view_, o.view_);
  std::swap(alloc_, o.alloc_);
}

}  // namespace deltatron::core
