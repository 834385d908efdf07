// ZeRO 3's shard store with offloaded training state on CUDA (tests/zero3_offload_check.h): the
// pieces' moments and masters in pinned host memory, stepped through the copy pipeline in chunks,
// bitwise the store with the state on the device; in bf16 with offloaded fp32 masters (the
// routers' f32 masters stepped on the device) and with the lean pair's remainders offloaded.
#include <gtest/gtest.h>

#include <string>
#include <tuple>

#include "test_util.h"
#include "zero3_offload_check.h"

using namespace deltatron;

TEST(Zero3OffloadCuda, StoreStepsLikeTheDeviceStoreBf16) {
  for (const auto& [master, moments, what] :
       {std::tuple{"fp32", "fp32", "moments"}, std::tuple{"fp32", "fp32", "master+moments"},
        std::tuple{"fp32", "bf16", "master+moments"},
        std::tuple{"remainder", "bf16", "master+moments"}}) {
    SCOPED_TRACE(std::string(master) + " / " + moments + " / " + what);
    dt_test::expect_zero3_offload_store_like_device(
        core::Device::cuda, core::DType::bf16,
        model::parse_state_options(master, moments, what, "test"));
    if (HasFatalFailure()) return;
  }
}

TEST(Zero3OffloadCuda, StoreStepsLikeTheDeviceStoreF32) {
  dt_test::expect_zero3_offload_store_like_device(
      core::Device::cuda, core::DType::f32,
      model::parse_state_options("remainder", "fp32", "master+moments", "test"));
}
