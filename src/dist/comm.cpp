// connect() (which backend for which world and device), the single-rank communicator, and the
// argument checks every backend runs before a collective (dist/backend.h).
#include "dist/comm.h"

#include <signal.h>

#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>

#include "core/error.h"
#include "dist/backend.h"
#include "dist/rendezvous.h"

#ifdef DT_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace deltatron::dist {

namespace detail {

std::string where(const Comm& c, const char* op) {
  return std::string(c.backend()) + " " + op + " (rank " + std::to_string(c.rank()) + " of " +
         std::to_string(c.size()) + ")";
}

void check_view(const Comm& c, const char* op, const char* name, const core::View& v) {
  using core::DType;
  const bool dtype_ok = v.dtype == DType::f32 || v.dtype == DType::f64 || v.dtype == DType::bf16 ||
                        v.dtype == DType::i32 || v.dtype == DType::i64;
  DT_CHECK(dtype_ok, where(c, op), ": ", name, " is ", v.describe(),
           "; supported dtypes: f32, f64, bf16, i32, i64");
  DT_CHECK(v.device == c.device(), where(c, op), ": ", name, " is ", v.describe(),
           ", expected a view on ", core::device_name(c.device()));
  DT_CHECK(v.data || v.numel() == 0, where(c, op), ": ", name, " is a null view of ", v.describe());
}

namespace {

bool overlap(const core::View& a, const core::View& b) {
  if (a.bytes() == 0 || b.bytes() == 0) return false;
  const char* pa = static_cast<const char*>(a.data);
  const char* pb = static_cast<const char*>(b.data);
  return pa < pb + b.bytes() && pb < pa + a.bytes();
}

void check_same_dtype(const Comm& c, const char* op, const core::View& in, const core::View& out) {
  DT_CHECK(in.dtype == out.dtype, where(c, op), ": in is ", in.describe(), " but out is ",
           out.describe(), " (the dtypes must match)");
}

void check_counts(const Comm& c, const char* name, const std::vector<int64_t>& counts,
                  const core::View& v) {
  DT_CHECK(int64_t(counts.size()) == c.size(), where(c, "all_to_all_v"), ": ", name, " has ",
           counts.size(), " entries, expected one per rank (", c.size(), ")");
  int64_t total = 0;
  for (size_t p = 0; p < counts.size(); ++p) {
    DT_CHECK(counts[p] >= 0, where(c, "all_to_all_v"), ": ", name, "[", p, "] = ", counts[p],
             " is negative");
    total += counts[p];
  }
  DT_CHECK(total <= v.numel(), where(c, "all_to_all_v"), ": ", name, " add up to ", total,
           " elements but the view is ", v.describe());
}

}  // namespace

void check_all_reduce(const Comm& c, const core::View& x) { check_view(c, "all_reduce", "x", x); }

void check_reduce_scatter(const Comm& c, const core::View& in, const core::View& out) {
  check_view(c, "reduce_scatter", "in", in);
  check_view(c, "reduce_scatter", "out", out);
  check_same_dtype(c, "reduce_scatter", in, out);
  DT_CHECK(in.numel() == c.size() * out.numel(), where(c, "reduce_scatter"), ": in is ",
           in.describe(), ", expected ", c.size(), " blocks of out's ", out.numel(), " elements");
  DT_CHECK(!overlap(in, out), where(c, "reduce_scatter"), ": in and out overlap");
}

bool check_all_gather(const Comm& c, const core::View& in, const core::View& out) {
  check_view(c, "all_gather", "in", in);
  check_view(c, "all_gather", "out", out);
  check_same_dtype(c, "all_gather", in, out);
  DT_CHECK(out.numel() == c.size() * in.numel(), where(c, "all_gather"), ": out is ",
           out.describe(), ", expected ", c.size(), " blocks of in's ", in.numel(), " elements");
  const char* block = static_cast<const char*>(out.data) + size_t(c.rank()) * in.bytes();
  const bool in_place = in.data == block;
  DT_CHECK(in_place || !overlap(in, out), where(c, "all_gather"),
           ": in overlaps out without being out's block ", c.rank(), " (the in-place form)");
  return in_place;
}

void check_all_to_all_v(const Comm& c, const core::View& in,
                        const std::vector<int64_t>& send_counts, const core::View& out,
                        const std::vector<int64_t>& recv_counts) {
  check_view(c, "all_to_all_v", "in", in);
  check_view(c, "all_to_all_v", "out", out);
  check_same_dtype(c, "all_to_all_v", in, out);
  check_counts(c, "send_counts", send_counts, in);
  check_counts(c, "recv_counts", recv_counts, out);
  DT_CHECK(!overlap(in, out), where(c, "all_to_all_v"), ": in and out overlap");
}

void check_broadcast(const Comm& c, const core::View& x, int root) {
  check_view(c, "broadcast", "x", x);
  DT_CHECK(root >= 0 && root < c.size(), where(c, "broadcast"), ": root ", root,
           " is not a rank of the group");
}

std::vector<int64_t> offsets_of(const std::vector<int64_t>& counts) {
  std::vector<int64_t> off(counts.size() + 1, 0);
  std::partial_sum(counts.begin(), counts.end(), off.begin() + 1);
  return off;
}

double timeout_seconds(const CommOptions& opt) {
  double t = opt.timeout_s;
  if (const char* s = std::getenv("DT_DIST_TIMEOUT"); s && *s) {
    char* end = nullptr;
    t = std::strtod(s, &end);
    DT_CHECK(end && *end == '\0' && t > 0 && t < 1e9, "DT_DIST_TIMEOUT='", s,
             "' is not a positive number of seconds");
  }
  DT_CHECK(t > 0, "communicator timeout ", t, " s is not positive");
  return t;
}

#ifndef DT_HAVE_CUDA
std::unique_ptr<Comm> make_nccl_comm(std::shared_ptr<Rendezvous>, const World& world, double) {
  core::fail("connect: rank ", world.rank, ": a CUDA communicator needs a CUDA build of deltatron ",
             "(this one is CPU-only: use the cpu device)");
}
#endif

}  // namespace detail

namespace {

// dst = src, `bytes` bytes on `dev` (CUDA: queued on the default stream).
void copy_bytes(core::Device dev, void* dst, const void* src, size_t bytes) {
  if (dst == src || bytes == 0) return;
  if (dev == core::Device::cpu) {
    std::memmove(dst, src, bytes);
    return;
  }
#ifdef DT_HAVE_CUDA
  const cudaError_t err = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, 0);
  DT_CHECK(err == cudaSuccess, "self: device copy of ", bytes,
           " bytes failed: ", cudaGetErrorString(err));
#else
  core::fail("self: a CUDA view in a CPU-only build");
#endif
}

class SelfComm final : public Comm {
 public:
  explicit SelfComm(core::Device dev) : dev_(dev) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  core::Device device() const override { return dev_; }
  const char* backend() const override { return "self"; }

  void all_reduce(const core::View& x, ReduceOp) override { detail::check_all_reduce(*this, x); }
  void reduce_scatter(const core::View& in, const core::View& out) override {
    detail::check_reduce_scatter(*this, in, out);
    copy_bytes(dev_, out.data, in.data, out.bytes());
  }
  void all_gather(const core::View& in, const core::View& out) override {
    detail::check_all_gather(*this, in, out);
    copy_bytes(dev_, out.data, in.data, in.bytes());
  }
  void all_to_all_v(const core::View& in, const std::vector<int64_t>& send_counts,
                    const core::View& out, const std::vector<int64_t>& recv_counts) override {
    detail::check_all_to_all_v(*this, in, send_counts, out, recv_counts);
    DT_CHECK(send_counts[0] == recv_counts[0], detail::where(*this, "all_to_all_v"), ": sends ",
             send_counts[0], " elements to itself but expects ", recv_counts[0]);
    copy_bytes(dev_, out.data, in.data, size_t(send_counts[0]) * core::dtype_size(in.dtype));
  }
  void broadcast(const core::View& x, int root) override {
    detail::check_broadcast(*this, x, root);
  }
  void barrier() override {
#ifdef DT_HAVE_CUDA
    if (dev_ == core::Device::cuda) {
      const cudaError_t err = cudaDeviceSynchronize();
      DT_CHECK(err == cudaSuccess, "self barrier: ", cudaGetErrorString(err));
    }
#endif
  }
  std::unique_ptr<Comm> split(int, int) override { return std::make_unique<SelfComm>(dev_); }

 private:
  core::Device dev_;
};

}  // namespace

std::unique_ptr<Comm> self_comm(core::Device dev) { return std::make_unique<SelfComm>(dev); }

std::string requested_backend(const CommOptions& opt) {
  std::string b = opt.backend;
  if (const char* e = std::getenv("DT_DIST_BACKEND"); e && *e) b = e;
  DT_CHECK(b == "auto" || b == "gloo" || b == "nccl", "DT_DIST_BACKEND='", b,
           "': use auto, gloo or nccl");
  return b;
}

std::unique_ptr<Comm> connect(const World& world, core::Device dev, const CommOptions& opt) {
  DT_CHECK(world.size >= 1 && world.rank >= 0 && world.rank < world.size, "connect: rank ",
           world.rank, " of a world of ", world.size);
  const double timeout_s = detail::timeout_seconds(opt);
#ifndef DT_HAVE_CUDA
  DT_CHECK(dev != core::Device::cuda, "connect: rank ", world.rank,
           ": a CUDA communicator needs a CUDA build of deltatron (this one is CPU-only: use the "
           "cpu device)");
#endif
  const std::string backend = requested_backend(opt);
  DT_CHECK(!(backend == "nccl" && dev == core::Device::cpu),
           "connect: DT_DIST_BACKEND=nccl needs "
           "the cuda device");
  if (world.size == 1 && backend != "nccl") return self_comm(dev);
  // A peer's closed connection must be an error of the call, not a SIGPIPE that ends this
  // process: Gloo's TCP transport writes without MSG_NOSIGNAL. Ignored once, unless the program
  // installed its own handler (Python does the same at start-up).
  struct sigaction old {};
  if (::sigaction(SIGPIPE, nullptr, &old) == 0 && old.sa_handler == SIG_DFL)
    ::signal(SIGPIPE, SIG_IGN);
  auto store =
      std::make_shared<Rendezvous>(world.master_addr, world.master_port, world.rank, timeout_s);
  if (dev == core::Device::cpu) return detail::make_gloo_comm(std::move(store), world, timeout_s);
  if (backend == "gloo")
    return detail::make_staged_comm(detail::make_gloo_comm(std::move(store), world, timeout_s));
  return detail::make_nccl_comm(std::move(store), world, timeout_s);
}

}  // namespace deltatron::dist
