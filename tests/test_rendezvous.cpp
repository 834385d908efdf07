// The rendezvous store (dist/rendezvous.h): set and a get that waits for another rank's set,
// rank 0 starting late, an unreachable store, a missing key, a taken port, a lost host.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <thread>

#include "core/error.h"
#include "dist/launch.h"
#include "dist/rendezvous.h"
#include "test_util.h"

using namespace deltatron;
using dt_test::expect_error;

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

TEST(Rendezvous, SetAndWaitingGetAcrossRanks) {
  const int port = dist::free_port();
  dist::Rendezvous host("127.0.0.1", port, 0, 10);
  EXPECT_EQ(host.local_address(), "127.0.0.1");
  std::vector<char> got;
  std::thread other([&] {
    dist::Rendezvous r1("127.0.0.1", port, 1, 10);
    got = r1.get("late");  // waits for the host's set below
    r1.set("back", {'o', 'k'});
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::vector<char> big(3 << 20);
  for (size_t k = 0; k < big.size(); ++k) big[k] = char(k * 7);
  host.set("late", big);
  EXPECT_EQ(host.get("back"), (std::vector<char>{'o', 'k'}));
  other.join();
  EXPECT_EQ(got, big);
  std::vector<char> v;
  EXPECT_FALSE(host.try_get("never", v));
  host.set("empty", {});
  EXPECT_TRUE(host.try_get("empty", v));
  EXPECT_TRUE(v.empty());
}

TEST(Rendezvous, RetriesWhileRankZeroStarts) {
  const int port = dist::free_port();
  std::unique_ptr<dist::Rendezvous> host;
  std::thread late([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    host = std::make_unique<dist::Rendezvous>("127.0.0.1", port, 0, 10);
    host->set("k", {'1'});
  });
  dist::Rendezvous r1("localhost", port, 1, 10);
  EXPECT_EQ(r1.get("k"), std::vector<char>{'1'});
  late.join();
}

TEST(Rendezvous, UnreachableStoreAndMissingKeyAreErrorsInTime) {
  const int port = dist::free_port();
  auto t0 = Clock::now();
  expect_error([&] { dist::Rendezvous("127.0.0.1", port, 3, 0.5); },
               {"rendezvous: rank 3", "127.0.0.1:" + std::to_string(port), "0.5 s"});
  EXPECT_LT(since(t0), 3.0);
  expect_error([&] { dist::Rendezvous("no-such-host.invalid", port, 1, 0.3); },
               {"no-such-host.invalid:" + std::to_string(port), "resolve"});
  dist::Rendezvous host("127.0.0.1", port, 0, 0.5);
  t0 = Clock::now();
  expect_error([&] { host.get("nobody"); }, {"rank 0 waited 0.5 s", "'nobody'"});
  EXPECT_GT(since(t0), 0.4);
  EXPECT_LT(since(t0), 3.0);
}

TEST(Rendezvous, TakenPortIsAnErrorForRankZero) {
  const int port = dist::free_port();
  dist::Rendezvous first("127.0.0.1", port, 0, 5);
  expect_error([&] { dist::Rendezvous("127.0.0.1", port, 0, 5); },
               {"rank 0 cannot listen on port " + std::to_string(port), "in use"});
}

TEST(Rendezvous, LostHostIsAnError) {
  const int port = dist::free_port();
  auto host = std::make_unique<dist::Rendezvous>("127.0.0.1", port, 0, 5);
  dist::Rendezvous r1("127.0.0.1", port, 1, 5);
  host.reset();
  expect_error([&] { r1.get("x"); }, {"rendezvous: rank 1", "did rank 0 exit?"});
}

}  // namespace
