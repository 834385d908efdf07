// The single-rank communicator, the collectives' argument checks (shared by every backend),
// connect()'s choices and errors, and DT_DIST_TIMEOUT.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "dist/comm.h"
#include "dist/launch.h"
#include "test_util.h"

using namespace deltatron;
using core::DType;
using core::View;
using dt_test::expect_error;

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

TEST(DistSelf, OneRankCopiesWhereOutIsNotIn) {
  std::unique_ptr<dist::Comm> c = dist::connect(dist::World{}, core::Device::cpu);
  EXPECT_STREQ(c->backend(), "self");
  EXPECT_EQ(c->rank(), 0);
  EXPECT_EQ(c->size(), 1);
  std::vector<float> a = {1, 2, 3}, b(3, 0);
  const View va = dt_test::host_view(a), vb = dt_test::host_view(b);
  c->all_reduce(va, dist::ReduceOp::sum);
  EXPECT_EQ(a, (std::vector<float>{1, 2, 3}));
  c->all_gather(va, vb);
  EXPECT_EQ(b, a);
  std::fill(b.begin(), b.end(), 0.f);
  c->reduce_scatter(va, vb);
  EXPECT_EQ(b, a);
  std::fill(b.begin(), b.end(), 0.f);
  c->all_to_all_v(va, {2}, vb, {2});
  EXPECT_EQ(b, (std::vector<float>{1, 2, 0}));
  c->broadcast(va, 0);
  c->barrier();
  EXPECT_STREQ(c->split(3, 1)->backend(), "self");
  expect_error([&] { c->all_to_all_v(va, {2}, vb, {1}); }, {"self all_to_all_v", "itself"});
}

TEST(DistSelf, ArgumentChecksNameTheCollectiveAndTheView) {
  std::unique_ptr<dist::Comm> c = dist::self_comm(core::Device::cpu);
  std::vector<float> a(4), b(4);
  std::vector<uint16_t> u(4);
  const View va = dt_test::host_view(a), vb = dt_test::host_view(b);
  expect_error(
      [&] {
        c->all_reduce(View(u.data(), DType::u16, core::Device::cpu, {4}), dist::ReduceOp::sum);
      },
      {"self all_reduce (rank 0 of 1)", "u16", "supported dtypes"});
  expect_error(
      [&] {
        c->all_reduce(View(a.data(), DType::f32, core::Device::cuda, {4}), dist::ReduceOp::max);
      },
      {"self all_reduce", "on cuda", "expected a view on cpu"});
  expect_error([&] { c->reduce_scatter(va, vb.slice(0, 3)); }, {"self reduce_scatter", "blocks"});
  expect_error([&] { c->reduce_scatter(va, va); }, {"self reduce_scatter", "overlap"});
  expect_error([&] { c->all_gather(va.slice(0, 2), vb.slice(0, 3)); }, {"self all_gather"});
  expect_error([&] { c->all_gather(va.slice(1, 2), va.slice(0, 2)); },
               {"self all_gather", "in-place form"});
  std::vector<int32_t> i(4);
  expect_error([&] { c->all_gather(dt_test::host_view(i), vb); }, {"self all_gather", "dtypes"});
  expect_error(
      [&] {
        c->all_to_all_v(va, {1, 1}, vb, {1});
      },
      {"self all_to_all_v", "send_counts has 2 entries"});
  expect_error([&] { c->all_to_all_v(va, {-1}, vb, {1}); }, {"send_counts[0] = -1"});
  expect_error([&] { c->all_to_all_v(va, {5}, vb, {5}); }, {"send_counts add up to 5"});
  expect_error([&] { c->broadcast(va, 1); }, {"self broadcast", "root 1"});
  expect_error(
      [&] {
        c->all_reduce(View(nullptr, DType::f32, core::Device::cpu, {4}), dist::ReduceOp::sum);
      },
      {"null view"});
}

#ifndef DT_HAVE_CUDA
TEST(DistSelf, CudaCommunicatorNeedsACudaBuild) {
  expect_error([] { dist::connect(dist::World{}, core::Device::cuda); },
               {"connect: rank 0", "CUDA build"});
}
#endif

// DT_DIST_TIMEOUT, set for the test's duration.
class DistTimeout : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const char* v = std::getenv("DT_DIST_TIMEOUT")) saved_ = v;
    had_ = std::getenv("DT_DIST_TIMEOUT") != nullptr;
  }
  void TearDown() override {
    if (had_)
      ::setenv("DT_DIST_TIMEOUT", saved_.c_str(), 1);
    else
      ::unsetenv("DT_DIST_TIMEOUT");
  }
  std::string saved_;
  bool had_ = false;
};

TEST_F(DistTimeout, FromTheEnvironmentOverridesTheOptions) {
  ::setenv("DT_DIST_TIMEOUT", "soon", 1);
  expect_error([] { dist::connect(dist::World{}, core::Device::cpu); }, {"DT_DIST_TIMEOUT='soon'"});
  ::setenv("DT_DIST_TIMEOUT", "-1", 1);
  expect_error([] { dist::connect(dist::World{}, core::Device::cpu); }, {"DT_DIST_TIMEOUT='-1'"});
  ::setenv("DT_DIST_TIMEOUT", "0.5", 1);
  // A rank of 2 whose store never answers fails after DT_DIST_TIMEOUT, not the options' 300 s.
  dist::World w;
  w.rank = 1;
  w.size = w.local_size = 2;
  w.master_port = dist::free_port();
  const auto t0 = Clock::now();
  expect_error([&] { dist::connect(w, core::Device::cpu, {300}); }, {"0.5 s", "rank 1"});
  EXPECT_LT(since(t0), 3.0);
}

}  // namespace
