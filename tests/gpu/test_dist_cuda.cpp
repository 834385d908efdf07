// The CUDA communicators on one GPU: NCCL with one rank (DT_DIST_BACKEND=nccl's path: every
// collective, its dtypes and split on device memory) and the staged Gloo communicator (device
// views through host memory) over two forked ranks sharing the GPU, each checked exactly on
// integer-valued data.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <vector>

#include "core/buffer.h"
#include "dist/comm.h"
#include "ops/device.h"
#include "ops/tensor.h"

using namespace deltatron;

namespace {

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

template <typename T>
core::Buffer dev_of(const std::vector<T>& v, core::DType dt) {
  core::Buffer b(core::Device::cuda, dt, {int64_t(v.size())}, "test values");
  ops::copy_from_host(b, v.data());
  return b;
}

template <typename T>
std::vector<T> host_of(const core::View& b) {
  std::vector<T> v(size_t(b.numel()));
  ops::copy_to_host(b, v.data());
  return v;
}

// Every collective on one communicator of `n` ranks (rank r), exact on integers. Returns the
// number of failed checks (printed).
int check_collectives(dist::Comm& c) {
  const int r = c.rank(), n = c.size();
  int bad = 0;
  const auto expect = [&](bool ok, const char* what) {
    if (!ok) std::fprintf(stderr, "rank %d of %d (%s): %s wrong\n", r, n, c.backend(), what), ++bad;
  };
  {  // all_reduce f32 sum, f64 max, i64 sum
    core::Buffer x = dev_of(std::vector<float>{float(r + 1), 2.f, -3.f}, core::DType::f32);
    c.all_reduce(x, dist::ReduceOp::sum);
    const auto v = host_of<float>(x);
    expect(v[0] == float(n * (n + 1) / 2) && v[1] == 2.f * n && v[2] == -3.f * n, "all_reduce f32");
    core::Buffer y = dev_of(std::vector<double>{double(r), -double(r)}, core::DType::f64);
    c.all_reduce(y, dist::ReduceOp::max);
    const auto w = host_of<double>(y);
    expect(w[0] == n - 1 && w[1] == 0, "all_reduce f64 max");
    core::Buffer z = dev_of(std::vector<int64_t>{int64_t(1) << 40, r}, core::DType::i64);
    c.all_reduce(z, dist::ReduceOp::sum);
    const auto u = host_of<int64_t>(z);
    expect(u[0] == n * (int64_t(1) << 40) && u[1] == int64_t(n) * (n - 1) / 2, "all_reduce i64");
  }
  {  // reduce_scatter: block b of rank s holds s + 10 b
    std::vector<float> in;
    for (int b = 0; b < n; ++b) in.insert(in.end(), {float(r + 10 * b), 1.f});
    core::Buffer i = dev_of(in, core::DType::f32);
    core::Buffer o(core::Device::cuda, core::DType::f32, {2}, "out");
    c.reduce_scatter(i, o);
    const auto v = host_of<float>(o);
    expect(v[0] == float(n * (n - 1) / 2 + 10 * r * n) && v[1] == float(n), "reduce_scatter");
  }
  {  // all_gather
    core::Buffer i = dev_of(std::vector<int32_t>{r, 100 + r}, core::DType::i32);
    core::Buffer o(core::Device::cuda, core::DType::i32, {2 * n}, "out");
    c.all_gather(i, o);
    const auto v = host_of<int32_t>(o);
    bool ok = true;
    for (int s = 0; s < n; ++s) ok = ok && v[2 * s] == s && v[2 * s + 1] == 100 + s;
    expect(ok, "all_gather");
  }
  {  // all_to_all_v: rank r sends (p + 1) elements valued 1000 r + p to rank p
    std::vector<int64_t> sc(n), rc(n);
    std::vector<float> in;
    for (int p = 0; p < n; ++p) {
      sc[p] = p + 1;
      rc[p] = r + 1;
      for (int k = 0; k <= p; ++k) in.push_back(float(1000 * r + p));
    }
    core::Buffer i = dev_of(in, core::DType::f32);
    core::Buffer o(core::Device::cuda, core::DType::f32, {int64_t(n) * (r + 1)}, "out");
    c.all_to_all_v(i, sc, o, rc);
    const auto v = host_of<float>(o);
    bool ok = true;
    for (int s = 0; s < n; ++s)
      for (int k = 0; k <= r; ++k) ok = ok && v[size_t(s * (r + 1) + k)] == float(1000 * s + r);
    expect(ok, "all_to_all_v");
  }
  {  // bf16 sum (1.0 and 2.0 are exact in bf16)
    const uint16_t one = 0x3f80;
    core::Buffer x = dev_of(std::vector<uint16_t>{one, one}, core::DType::bf16);
    c.all_reduce(x, dist::ReduceOp::sum);
    const auto v = host_of<uint16_t>(x);
    const uint16_t want = n == 1 ? 0x3f80 : n == 2 ? 0x4000 : 0;
    expect(n > 2 || (v[0] == want && v[1] == want), "all_reduce bf16");
  }
  {  // broadcast from the last rank
    core::Buffer x = dev_of(std::vector<float>{float(r), float(7 * r)}, core::DType::f32);
    c.broadcast(x, n - 1);
    const auto v = host_of<float>(x);
    expect(v[0] == float(n - 1) && v[1] == float(7 * (n - 1)), "broadcast");
  }
  c.barrier();
  {  // split: every rank alone (color = rank), then an all_reduce on it
    auto s = c.split(r, 0);
    expect(s->size() == 1 && s->rank() == 0, "split");
    core::Buffer x = dev_of(std::vector<float>{float(r)}, core::DType::f32);
    s->all_reduce(x, dist::ReduceOp::sum);
    expect(host_of<float>(x)[0] == float(r), "all_reduce on a split");
  }
  return bad;
}

}  // namespace

// Two ranks forked before either touches CUDA, sharing GPU 0 through the staged Gloo backend.
TEST(CudaDist, StagedGlooTwoRanksShareOneGpu) {
  const int port = free_port();
  std::vector<pid_t> kids;
  for (int r = 0; r < 2; ++r) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      int bad = 1;
      try {
        ops::check_device(core::Device::cuda);
        dist::World w;
        w.rank = r;
        w.size = 2;
        w.master_port = port;
        dist::CommOptions o;
        o.backend = "gloo";
        o.timeout_s = 60;
        auto c = dist::connect(w, core::Device::cuda, o);
        bad = check_collectives(*c);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "rank %d: %s\n", r, e.what());
      }
      ::_exit(bad == 0 ? 0 : 1);
    }
    kids.push_back(pid);
  }
  for (pid_t pid : kids) {
    int st = 0;
    ::waitpid(pid, &st, 0);
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "a rank failed (see stderr)";
  }
}

// After the forked test: this process initialises CUDA itself.
TEST(CudaDist, NcclOneRankRunsEveryCollective) {
  ops::check_device(core::Device::cuda);
  dist::World w;
  w.master_port = free_port();
  dist::CommOptions o;
  o.backend = "nccl";
  o.timeout_s = 60;
  auto c = dist::connect(w, core::Device::cuda, o);
  EXPECT_STREQ(c->backend(), "nccl");
  EXPECT_EQ(check_collectives(*c), 0);
}
