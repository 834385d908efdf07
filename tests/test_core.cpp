// core views and buffers: checked accessors, sub-views, the contract check's message, the host
// allocator, and the allocator registry a backend plugs into.
#include <gtest/gtest.h>

#include <string>

#include "core/buffer.h"
#include "core/constants.h"
#include "core/view.h"
#include "cpu/cross_entropy.h"
#include "data/sample.h"
#include "test_util.h"

using namespace deltatron;
using core::Device;
using core::DType;

namespace {

using dt_test::error_of;

TEST(CoreView, TypedAccessorsRowsAndReshape) {
  core::Tensor t({4, 3});
  for (int64_t i = 0; i < t.numel(); ++i) t.data[i] = float(i);
  const core::View v = core::View::of(t);
  EXPECT_EQ(v.numel(), 12);
  EXPECT_EQ(v.bytes(), 48u);
  EXPECT_EQ(v.dim(1), 3);
  EXPECT_EQ(v.f32(), t.ptr());
  EXPECT_NE(error_of([&] { v.i32(); }).find("a f32 [4, 3] on cpu view used as i32"),
            std::string::npos);
  EXPECT_NE(error_of([&] { v.dim(2); }).find("dimension 2 of a rank-2 view"), std::string::npos);
  const core::View r = v.rows(1, 3);
  EXPECT_EQ(r.shape, (core::Shape{2, 3}));
  EXPECT_EQ(r.f32()[0], 3.f);
  EXPECT_EQ(r.f32()[5], 8.f);
  EXPECT_NE(error_of([&] { v.rows(3, 5); }).find("rows [3, 5)"), std::string::npos);
  EXPECT_EQ(v.reshaped({2, 6}).shape, (core::Shape{2, 6}));
  EXPECT_NE(error_of([&] {
              v.reshaped({5, 2});
            }).find("cannot view [4, 3] as [5, 2]"),
            std::string::npos);
}

TEST(CoreView, ExpectNamesOpTensorAndBothDescriptions) {
  core::Tensor t({2, 5});
  const core::View v = core::View::of(t);
  core::expect(v, DType::f32, Device::cpu, {2, 5}, "rmsnorm_fwd", "x_ND");  // no error
  EXPECT_EQ(error_of([&] {
              core::expect(v, DType::bf16, Device::cpu, {2, 5}, "op", "x_ND");
            }),
            "op: x_ND is f32 [2, 5] on cpu, expected bf16 [2, 5] on cpu");
  EXPECT_EQ(error_of([&] {
              core::expect(v, DType::f32, Device::cuda, {2, 4}, "op", "w");
            }),
            "op: w is f32 [2, 5] on cpu, expected f32 [2, 4] on cuda");
  const core::View null(nullptr, DType::f32, Device::cpu, {3});
  EXPECT_EQ(error_of([&] { core::expect(null, DType::f32, Device::cpu, {3}, "op", "y"); }),
            "op: y is a null view, expected f32 [3] on cpu");
}

TEST(CoreBuffer, HostAllocationsAreAlignedAndMovable) {
  core::Buffer b(Device::cpu, DType::i32, {7, 3}, "ids");
  ASSERT_NE(b.data(), nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % 64, 0u);
  EXPECT_EQ(b.bytes(), 84u);
  b.view().i32()[20] = 5;
  core::Buffer c = std::move(b);
  EXPECT_EQ(b.data(), nullptr);
  EXPECT_EQ(c.view().i32()[20], 5);
  // A default (or moved-from) buffer holds no elements: numel 0, not the 1 of a scalar shape.
  EXPECT_EQ(core::Buffer().numel(), 0);
  EXPECT_EQ(core::Buffer().bytes(), 0u);
  core::Buffer empty(Device::cpu, DType::f32, {0, 4}, "nothing");
  EXPECT_EQ(empty.data(), nullptr);
  EXPECT_NE(error_of([] {
              core::Buffer(Device::cpu, DType::f32, {-1}, "bad");
            }).find("negative dimension in the shape of bad"),
            std::string::npos);
}

// A backend registers its allocator; buffers on that device use it, and without one the error
// says there is no such backend.
class CountingAllocator final : public core::Allocator {
 public:
  int live = 0;
  size_t last = 0;
  void* allocate(size_t bytes, const char*) override {
    ++live;
    last = bytes;
    return ::operator new(bytes);
  }
  void deallocate(void* p, size_t) noexcept override {
    --live;
    ::operator delete(p);
  }
};

TEST(CoreBuffer, BackendAllocatorRegistry) {
  EXPECT_NE(error_of([] {
              core::Buffer(Device::cuda, DType::bf16, {8}, "w");
            }).find("no allocator for device cuda"),
            std::string::npos);
  CountingAllocator a;
  core::register_allocator(Device::cuda, &a);
  {
    core::Buffer b(Device::cuda, DType::bf16, {8}, "w");
    EXPECT_EQ(a.live, 1);
    EXPECT_EQ(a.last, 16u);
    EXPECT_EQ(b.view().describe(), "bf16 [8] on cuda");
  }
  EXPECT_EQ(a.live, 0);
  core::register_allocator(Device::cuda, nullptr);
}

TEST(CoreConstants, OneIgnoreIndexEverywhere) {
  static_assert(&data::kIgnoreIndex == &core::kIgnoreIndex);
  static_assert(&cpu::kIgnoreIndex == &core::kIgnoreIndex);
  EXPECT_EQ(core::kIgnoreIndex, -100);
}

}  // namespace
