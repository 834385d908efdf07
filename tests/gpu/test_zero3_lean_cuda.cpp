// ZeRO 3's shard store with the lean training state on CUDA in bf16 (tests/zero3_lean_check.h):
// the pair stepped in the shard as in the flat store, the routers' f32 weights gathered, the
// pair joined on reads, bitwise.
#include <gtest/gtest.h>

#include "test_util.h"
#include "zero3_lean_check.h"

using namespace deltatron;

TEST(Zero3LeanCuda, ShardStoreStepsLikeTheFlatStoreBf16) {
  dt_test::expect_zero3_lean_store_like_flat(core::Device::cuda, core::DType::bf16);
}

TEST(Zero3LeanCuda, ShardStoreStepsLikeTheFlatStoreF32) {
  dt_test::expect_zero3_lean_store_like_flat(core::Device::cuda, core::DType::f32);
}
