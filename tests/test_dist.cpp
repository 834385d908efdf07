// The CPU communicator (Gloo) across 2, 3 and 4 ranks, each a child process of the test (fork) on
// a port of its own: every collective exactly, on integer-valued data in every dtype; split and
// collectives on the split; a rank that dies or stops answering ends the others' call with a
// core::Error within the timeout; and ranks started by `deltatron launch`.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <set>
#include <sstream>
#include <thread>

#include "core/bf16.h"
#include "core/error.h"
#include "dist/comm.h"
#include "dist/launch.h"
#include "test_util.h"

using namespace deltatron;
using core::DType;
using core::View;

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// A failed check inside a rank: its message goes back to the test through the rank's pipe.
struct CheckFailed : std::runtime_error {
  using std::runtime_error::runtime_error;
};
template <typename... Parts>
void require(bool cond, const Parts&... parts) {
  if (cond) return;
  std::ostringstream os;
  (os << ... << parts);
  throw CheckFailed(os.str());
}

// ---- ranks as child processes ------------------------------------------------------------------

struct RankOutcome {
  int status = -1;      // waitpid's status
  std::string message;  // what the rank reported (a failed check or an exception)
  bool hung = false;    // still running at the time limit (killed)
};

// Runs body(world) in n forked ranks (RANK r of n, a free port on 127.0.0.1). A rank succeeds by
// returning; a failed check or an exception is reported through its pipe and exit status 1. The
// ranks in `lingering` may still run when the others are done: they are then killed, not failed.
std::vector<RankOutcome> run_ranks(int n, const std::function<void(const dist::World&)>& body,
                                   double limit_s = 30, const std::set<int>& lingering = {}) {
  dist::World world;
  world.size = world.local_size = n;
  world.master_port = dist::free_port();
  world.launcher = "torchrun";
  std::vector<pid_t> pids(size_t(n), -1);
  std::vector<int> fds(size_t(n), -1);
  std::fflush(nullptr);
  for (int r = 0; r < n; ++r) {
    int p[2];
    if (::pipe(p) != 0) std::abort();
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(p[0]);
      world.rank = world.local_rank = r;
      std::string msg;
      int code = 1;
      try {
        body(world);
        code = 0;
      } catch (const CheckFailed& e) {
        msg = e.what();
      } catch (const core::Error& e) {
        msg = std::string("core::Error: ") + e.what();
      } catch (const std::exception& e) {
        msg = std::string("exception: ") + e.what();
      }
      [[maybe_unused]] ssize_t w = ::write(p[1], msg.data(), msg.size());
      ::_exit(code);
    }
    ::close(p[1]);
    pids[size_t(r)] = pid;
    fds[size_t(r)] = p[0];
  }
  std::vector<RankOutcome> out(static_cast<size_t>(n));
  const auto deadline = Clock::now() + std::chrono::duration<double>(limit_s);
  std::set<int> open;
  for (int r = 0; r < n; ++r) open.insert(r);
  auto waiting_for_needed = [&] {
    return std::any_of(open.begin(), open.end(), [&](int r) { return !lingering.count(r); });
  };
  while (waiting_for_needed() && Clock::now() < deadline) {
    std::vector<pollfd> pfds;
    for (int r : open) pfds.push_back({fds[size_t(r)], POLLIN, 0});
    ::poll(pfds.data(), pfds.size(), 50);
    for (const pollfd& pfd : pfds) {
      if (!pfd.revents) continue;
      const int r = int(std::find(fds.begin(), fds.end(), pfd.fd) - fds.begin());
      char buf[4096];
      const ssize_t k = ::read(pfd.fd, buf, sizeof(buf));
      if (k > 0) {
        out[size_t(r)].message.append(buf, size_t(k));
      } else {
        open.erase(r);
      }
    }
  }
  for (int r = 0; r < n; ++r) {
    if (open.count(r)) {
      ::kill(pids[size_t(r)], SIGKILL);
      out[size_t(r)].hung = !lingering.count(r);
    }
    ::waitpid(pids[size_t(r)], &out[size_t(r)].status, 0);
    ::close(fds[size_t(r)]);
  }
  return out;
}

void expect_all_passed(const std::vector<RankOutcome>& outcomes) {
  for (size_t r = 0; r < outcomes.size(); ++r) {
    const RankOutcome& o = outcomes[r];
    if (o.hung) {
      ADD_FAILURE() << "rank " << r << " hung (killed at the time limit); said: " << o.message;
    } else if (!WIFEXITED(o.status) || WEXITSTATUS(o.status) != 0) {
      ADD_FAILURE() << "rank " << r << " failed (status " << o.status << "): " << o.message;
    }
  }
}

// ---- typed buffers ---------------------------------------------------------------------------

// n elements of dtype t, read and written as doubles (integer values, exact in every dtype).
struct Buf {
  DType dtype;
  std::vector<char> bytes;
  Buf(DType t, int64_t n) : dtype(t), bytes(size_t(n) * core::dtype_size(t) + 1) {}
  int64_t n() const { return int64_t((bytes.size() - 1) / core::dtype_size(dtype)); }
  View view() { return View(bytes.data(), dtype, core::Device::cpu, {n()}); }
  void set(int64_t i, double v) {
    char* p = bytes.data() + size_t(i) * core::dtype_size(dtype);
    switch (dtype) {
      case DType::f32:
        *reinterpret_cast<float*>(p) = float(v);
        break;
      case DType::f64:
        *reinterpret_cast<double*>(p) = v;
        break;
      case DType::i32:
        *reinterpret_cast<int32_t*>(p) = int32_t(v);
        break;
      case DType::i64:
        *reinterpret_cast<int64_t*>(p) = int64_t(v);
        break;
      case DType::bf16:
        *reinterpret_cast<uint16_t*>(p) = core::bf16_round_nearest_even(float(v));
        break;
      default:
        std::abort();
    }
  }
  double get(int64_t i) const {
    const char* p = bytes.data() + size_t(i) * core::dtype_size(dtype);
    switch (dtype) {
      case DType::f32:
        return *reinterpret_cast<const float*>(p);
      case DType::f64:
        return *reinterpret_cast<const double*>(p);
      case DType::i32:
        return *reinterpret_cast<const int32_t*>(p);
      case DType::i64:
        return double(*reinterpret_cast<const int64_t*>(p));
      case DType::bf16:
        return core::bf16_to_f32(*reinterpret_cast<const uint16_t*>(p));
      default:
        std::abort();
    }
  }
  void fill(const std::function<double(int64_t)>& f) {
    for (int64_t i = 0; i < n(); ++i) set(i, f(i));
  }
  // Every element equals want(i), or a CheckFailed naming the first one that does not.
  void expect(const std::string& what, const std::function<double(int64_t)>& want) const {
    for (int64_t i = 0; i < n(); ++i)
      require(get(i) == want(i), what, " (", core::dtype_name(dtype), "): element ", i, " is ",
              get(i), ", expected ", want(i));
  }
};

// Small integers (-5..5), different on every rank and element: exact sums in bf16 too.
double val(int rank, int64_t i) { return double((rank * 7 + i * 3) % 11) - 5; }

constexpr DType kDTypes[] = {DType::f32, DType::f64, DType::i32, DType::i64, DType::bf16};

// ---- every collective on one group ---------------------------------------------------------

void check_collectives(dist::Comm& c, const std::string& tag) {
  const int S = c.size(), R = c.rank();
  for (const DType t : kDTypes) {
    const std::string in = tag + " " + core::dtype_name(t);
    {  // all_reduce sum and max
      Buf x(t, 13);
      x.fill([&](int64_t i) { return val(R, i); });
      c.all_reduce(x.view(), dist::ReduceOp::sum);
      x.expect(in + " all_reduce sum", [&](int64_t i) {
        double s = 0;
        for (int r = 0; r < S; ++r) s += val(r, i);
        return s;
      });
      x.fill([&](int64_t i) { return val(R, i); });
      c.all_reduce(x.view(), dist::ReduceOp::max);
      x.expect(in + " all_reduce max", [&](int64_t i) {
        double m = val(0, i);
        for (int r = 1; r < S; ++r) m = std::max(m, val(r, i));
        return m;
      });
    }
    {  // reduce_scatter: 5 elements per rank
      const int64_t n = 5;
      Buf x(t, S * n), y(t, n);
      x.fill([&](int64_t i) { return val(R, i); });
      y.fill([](int64_t) { return 99; });
      c.reduce_scatter(x.view(), y.view());
      y.expect(in + " reduce_scatter", [&](int64_t i) {
        double s = 0;
        for (int r = 0; r < S; ++r) s += val(r, R * n + i);
        return s;
      });
      x.expect(in + " reduce_scatter's input", [&](int64_t i) { return val(R, i); });
    }
    {  // all_gather: 3 elements per rank, apart and in place
      const int64_t n = 3;
      Buf x(t, n), y(t, S * n);
      x.fill([&](int64_t i) { return val(R, i) + 1; });
      y.fill([](int64_t) { return 99; });
      c.all_gather(x.view(), y.view());
      y.expect(in + " all_gather", [&](int64_t i) { return val(int(i / n), i % n) + 1; });
      Buf z(t, S * n);
      z.fill([&](int64_t i) { return i / n == R ? val(R, i % n) - 1 : 99; });
      c.all_gather(z.view().slice(R * n, n), z.view());
      z.expect(in + " all_gather in place", [&](int64_t i) { return val(int(i / n), i % n) - 1; });
    }
    {  // all_to_all_v: (src + 2 dst) % 3 elements from src to dst (zero counts included), two
       // spare elements after the received blocks that must stay untouched
      auto count = [](int src, int dst) { return int64_t((src + 2 * dst) % 3); };
      auto value = [](int src, int dst, int64_t k) { return double(src * 16 + dst * 4 + k); };
      std::vector<int64_t> send(static_cast<size_t>(S)), recv(static_cast<size_t>(S));
      int64_t ns = 0, nr = 0;
      for (int p = 0; p < S; ++p) {
        send[size_t(p)] = count(R, p);
        recv[size_t(p)] = count(p, R);
        ns += send[size_t(p)];
        nr += recv[size_t(p)];
      }
      Buf x(t, ns), y(t, nr + 2);
      int64_t o = 0;
      for (int p = 0; p < S; ++p)
        for (int64_t k = 0; k < send[size_t(p)]; ++k) x.set(o++, value(R, p, k));
      y.fill([](int64_t) { return 77; });
      c.all_to_all_v(x.view(), send, y.view(), recv);
      std::vector<double> want;
      for (int p = 0; p < S; ++p)
        for (int64_t k = 0; k < recv[size_t(p)]; ++k) want.push_back(value(p, R, k));
      want.push_back(77);
      want.push_back(77);
      y.expect(in + " all_to_all_v", [&](int64_t i) { return want[size_t(i)]; });
    }
    {  // broadcast from the last rank
      const int root = S - 1;
      Buf x(t, 7);
      x.fill([&](int64_t i) { return R == root ? val(root, i) + 2 : 55; });
      c.broadcast(x.view(), root);
      x.expect(in + " broadcast from " + std::to_string(root),
               [&](int64_t i) { return val(root, i) + 2; });
    }
  }
  {  // a long all_reduce: several of Gloo's 1 MiB segments
    Buf x(DType::f32, 300001);
    x.fill([&](int64_t i) { return val(R, i); });
    c.all_reduce(x.view(), dist::ReduceOp::sum);
    x.expect(tag + " all_reduce of 300001", [&](int64_t i) {
      double s = 0;
      for (int r = 0; r < S; ++r) s += val(r, i);
      return s;
    });
  }
  {  // barrier: nobody leaves before rank 0 (200 ms late) arrives. steady_clock is the host's
     // CLOCK_MONOTONIC, one clock for every rank.
    auto now_ns = [] {
      return int64_t(
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
              .count());
    };
    int64_t arrived = 0;
    if (R == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      arrived = now_ns();
    }
    c.barrier();
    const int64_t left = now_ns();
    c.broadcast(View(&arrived, DType::i64, core::Device::cpu, {1}), 0);
    require(left >= arrived, tag, " barrier: left ", (arrived - left) / 1e6,
            " ms before rank 0 arrived");
  }
}

// split(color = rank % 2, key = -rank): each group ordered by descending parent rank.
void check_split(dist::Comm& c) {
  const int S = c.size(), R = c.rank();
  std::unique_ptr<dist::Comm> sub = c.split(R % 2, -R);
  std::vector<int> members;  // parent ranks, in the group's rank order
  for (int r = S - 1; r >= 0; --r)
    if (r % 2 == R % 2) members.push_back(r);
  const int want_rank = int(std::find(members.begin(), members.end(), R) - members.begin());
  require(sub->size() == int(members.size()), "split: size ", sub->size(), ", expected ",
          members.size());
  require(sub->rank() == want_rank, "split: rank ", sub->rank(), ", expected ", want_rank);
  require(std::string(sub->backend()) == (members.size() == 1 ? "self" : "gloo"), "split: backend ",
          sub->backend());
  Buf g(DType::i32, sub->size());
  int32_t mine = R;
  sub->all_gather(View(&mine, DType::i32, core::Device::cpu, {1}), g.view());
  g.expect("split all_gather of parent ranks", [&](int64_t i) { return members[size_t(i)]; });
  check_collectives(*sub, "split color " + std::to_string(R % 2));

  // Another split of the same parent (one group, parent order) and a split of the split.
  std::unique_ptr<dist::Comm> all = c.split(7, R);
  require(all->size() == S && all->rank() == R, "second split: rank ", all->rank(), " of ",
          all->size());
  Buf x(DType::i64, 1);
  x.set(0, R + 1);
  all->all_reduce(x.view(), dist::ReduceOp::sum);
  x.expect("second split all_reduce", [&](int64_t) { return S * (S + 1) / 2; });
  std::unique_ptr<dist::Comm> sub2 = sub->split(0, 0);
  require(sub2->size() == sub->size() && sub2->rank() == sub->rank(), "split of a split: rank ",
          sub2->rank(), " of ", sub2->size());
  sub2->barrier();
}

class DistRanks : public ::testing::TestWithParam<int> {};

TEST_P(DistRanks, EveryCollectiveIsExactAndSplitsWork) {
  const auto outcomes = run_ranks(GetParam(), [](const dist::World& w) {
    std::unique_ptr<dist::Comm> c = dist::connect(w, core::Device::cpu, {20});
    require(c->rank() == w.rank && c->size() == w.size, "rank ", c->rank(), " of ", c->size());
    require(std::string(c->backend()) == "gloo", "backend ", c->backend());
    check_collectives(*c, "world");
    check_split(*c);
  });
  expect_all_passed(outcomes);
}

INSTANTIATE_TEST_SUITE_P(Sizes, DistRanks, ::testing::Values(2, 3, 4));

// ---- failures ------------------------------------------------------------------------------

constexpr double kTimeout = 3;    // the communicators' timeout in the failure tests
constexpr double kMarginS = 2.5;  // what an error may take beyond it (a loaded CI machine)

// Ranks other than `dead` call all_reduce and must get a core::Error naming it and their rank
// within the timeout (plus the margin); later calls are errors too.
void expect_error_in_time(dist::Comm& c, bool timeout_path) {
  Buf x(DType::f32, 1000);
  const auto t0 = Clock::now();
  try {
    c.all_reduce(x.view(), dist::ReduceOp::sum);
  } catch (const core::Error& e) {
    const double s = since(t0);
    const std::string msg = e.what();
    require(s < kTimeout + kMarginS, "all_reduce failed only after ", s, " s: ", msg);
    if (timeout_path) require(s > 0.8 * kTimeout, "all_reduce failed before the timeout: ", msg);
    require(msg.find("gloo all_reduce (rank " + std::to_string(c.rank())) != std::string::npos,
            "message names neither the collective nor the rank: ", msg);
    require(msg.find('\n') == std::string::npos, "multi-line message: ", msg);
    try {
      c.barrier();
    } catch (const core::Error& e2) {
      require(std::string(e2.what()).find("failed earlier") != std::string::npos,
              "later call: ", e2.what());
      return;
    }
    require(false, "a barrier after the failure returned");
  }
  require(false, "all_reduce returned although a rank is gone");
}

TEST(DistFailure, DeadRankEndsTheOthersCallsWithAnError) {
  const auto outcomes = run_ranks(3, [](const dist::World& w) {
    std::unique_ptr<dist::Comm> c = dist::connect(w, core::Device::cpu, {kTimeout});
    c->barrier();
    if (w.rank == 2) ::_exit(0);  // dies before the all_reduce
    expect_error_in_time(*c, false);
  });
  expect_all_passed(outcomes);
}

TEST(DistFailure, SilentRankEndsTheOthersCallsAtTheTimeout) {
  const auto outcomes =
      run_ranks(2,
                [](const dist::World& w) {
                  std::unique_ptr<dist::Comm> c = dist::connect(w, core::Device::cpu, {kTimeout});
                  c->barrier();
                  if (w.rank == 1) std::this_thread::sleep_for(std::chrono::seconds(60));  // killed
                  expect_error_in_time(*c, true);
                },
                30, {1});
  expect_all_passed({outcomes[0]});
}

TEST(DistFailure, MissingRankIsAnErrorAtConnect) {
  // Rank 0 of 2 alone: the store comes up, rank 1 never registers.
  const auto outcomes = run_ranks(1, [](const dist::World& w1) {
    dist::World w = w1;
    w.size = w.local_size = 2;
    const auto t0 = Clock::now();
    try {
      dist::connect(w, core::Device::cpu, {1.0});
    } catch (const core::Error& e) {
      require(since(t0) < 1.0 + kMarginS, "connect failed only after ", since(t0), " s");
      require(std::string(e.what()).find("rank 0") != std::string::npos, e.what());
      return;
    }
    require(false, "connect returned without rank 1");
  });
  expect_all_passed(outcomes);
}

// ---- ranks started by deltatron launch ---------------------------------------------------------

// Runs only under `deltatron launch` (RANK set), started by the test below.
TEST(DistLaunched, RanksFromTheEnvironmentConnect) {
  if (!std::getenv("RANK")) GTEST_SKIP() << "runs under deltatron launch (LaunchedRanksConnect)";
  const dist::World w = dist::world_from_env();
  EXPECT_EQ(w.launcher, "torchrun");
  EXPECT_EQ(w.size, 3);
  std::unique_ptr<dist::Comm> c = dist::connect(w, core::Device::cpu);
  int64_t x = w.rank + 1;
  c->all_reduce(View(&x, DType::i64, core::Device::cpu, {1}), dist::ReduceOp::sum);
  EXPECT_EQ(x, 6);
}

TEST(DistLaunch, LaunchedRanksConnect) {
  const dt_test::TempDir tmp("launch");
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  const std::string cmd = "DT_DIST_TIMEOUT=20 " + std::string(DT_BINARY) + " launch --nproc 3 -- " +
                          self + " --gtest_filter=DistLaunched.* > " + tmp / "out.txt" + " 2>&1";
  const int rc = std::system(cmd.c_str());
  EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0) << cmd << ": status " << rc << "\n"
                                                     << dt_test::read_file(tmp / "out.txt");
}

}  // namespace
