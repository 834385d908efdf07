// The CPU communicator: Gloo's collectives over its TCP transport, its contexts connected through
// the job's rendezvous store (dist/rendezvous.h).
//
// Choices:
//   - transport: Gloo's TCP device bound to this host's address on the connection to the store
//     (the interface that reaches rank 0; 127.0.0.1 for a single-host job), or to the interface
//     DT_GLOO_IFNAME names;
//   - collectives: gloo::allreduce (sum/max with Gloo's element functions), gloo::allgather,
//     gloo::alltoallv, gloo::broadcast, gloo::barrier; reduce_scatter is an allreduce of a copy
//     of `in` and the rank's block of the result (Gloo has no typed reduce-scatter in its options
//     API; the cost is the allreduce's);
//   - bf16: Gloo has no bf16 type, so all_reduce and reduce_scatter of bf16 reduce an f32 copy and
//     round the result to the nearest bf16 (ties to even) once: the exact sum of the bf16 inputs
//     rounded once, which a bf16 ring (NCCL) only approximates; data movement is byte-wise;
//   - timeout: every Gloo call gets the communicator's timeout; a peer that died is usually seen
//     at once (its TCP connections close), a silent one at the timeout. Any failure is a
//     core::Error "gloo <collective> (rank R of S): <Gloo's message>", and the communicator is
//     then unusable (Gloo's pairs are torn down): every later call is an error saying so;
//   - split: an all_gather of (color, key), then a new Gloo context over the group's members
//     through the same store, under a key prefix unique to this split ("<parent>/s<n>c<color>/").
#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/alltoallv.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/common/logging.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "core/bf16.h"
#include "core/error.h"
#include "dist/backend.h"
#include "dist/rendezvous.h"

namespace deltatron::dist {

namespace {

// Gloo's store interface over the job's rendezvous, every key under `prefix`. Waits use the
// rendezvous's own timeout (the communicator's).
class PrefixedStore final : public gloo::rendezvous::Store {
 public:
  PrefixedStore(Rendezvous& store, std::string prefix)
      : store_(store), prefix_(std::move(prefix)) {}
  void set(const std::string& key, const std::vector<char>& data) override {
    store_.set(prefix_ + key, data);
  }
  std::vector<char> get(const std::string& key) override { return store_.get(prefix_ + key); }
  void wait(const std::vector<std::string>& keys) override {
    for (const std::string& k : keys) store_.get(prefix_ + k);
  }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds&) override {
    wait(keys);
  }

 private:
  Rendezvous& store_;
  std::string prefix_;
};

using ReduceFn = void (*)(void*, const void*, const void*, size_t);

template <typename T>
ReduceFn reduce_fn(ReduceOp op) {
  return op == ReduceOp::sum ? static_cast<ReduceFn>(&gloo::sum<T>)
                             : static_cast<ReduceFn>(&gloo::max<T>);
}

std::shared_ptr<gloo::transport::Device> make_device(const Rendezvous& store) {
  gloo::transport::tcp::attr attr;
  if (const char* iface = std::getenv("DT_GLOO_IFNAME"); iface && *iface)
    attr.iface = iface;
  else
    attr.hostname = store.local_address();
  try {
    return gloo::transport::tcp::CreateDevice(attr);
  } catch (const std::exception& e) {
    core::fail("gloo connect (rank ", store.rank(), "): cannot open a TCP device on ",
               attr.iface.empty() ? attr.hostname : "interface " + attr.iface, ": ", e.what());
  }
}

class GlooComm final : public Comm {
 public:
  GlooComm(std::shared_ptr<Rendezvous> store, std::shared_ptr<gloo::transport::Device> device,
           std::string prefix, int rank, int size, double timeout_s)
      : store_(std::move(store)),
        device_(std::move(device)),
        prefix_(std::move(prefix)),
        rank_(rank),
        size_(size),
        timeout_(std::chrono::milliseconds(int64_t(timeout_s * 1000))) {
    run("connect", [&] {
      auto ctx = std::make_shared<gloo::rendezvous::Context>(rank, size);
      ctx->setTimeout(timeout_);
      PrefixedStore ps(*store_, prefix_);
      ctx->connectFullMesh(ps, device_);
      ctx_ = std::move(ctx);
    });
    // Every rank has read the addresses it needs from the store once all have connected: after
    // this, rank 0 may take the store down (exit) without stranding a rank mid-rendezvous.
    barrier();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  core::Device device() const override { return core::Device::cpu; }
  const char* backend() const override { return "gloo"; }

  void all_reduce(const core::View& x, ReduceOp op) override {
    detail::check_all_reduce(*this, x);
    if (x.numel() == 0) return;
    if (x.dtype == core::DType::bf16) {
      std::vector<float> f(size_t(x.numel()));
      const uint16_t* h = x.bf16();
      for (size_t i = 0; i < f.size(); ++i) f[i] = core::bf16_to_f32(h[i]);
      run("all_reduce", [&] { allreduce<float>(f.data(), f.size(), op); });
      for (size_t i = 0; i < f.size(); ++i) x.bf16()[i] = core::bf16_round_nearest_even(f[i]);
      return;
    }
    run("all_reduce", [&] {
      dispatch(x.dtype, [&](auto zero) {
        using T = decltype(zero);
        allreduce<T>(static_cast<T*>(x.data), size_t(x.numel()), op);
      });
    });
  }

  void reduce_scatter(const core::View& in, const core::View& out) override {
    detail::check_reduce_scatter(*this, in, out);
    const size_t n = size_t(out.numel());
    if (n == 0) return;
    if (in.dtype == core::DType::bf16) {
      std::vector<float> f(size_t(in.numel()));
      const uint16_t* h = in.bf16();
      for (size_t i = 0; i < f.size(); ++i) f[i] = core::bf16_to_f32(h[i]);
      run("reduce_scatter", [&] { allreduce<float>(f.data(), f.size(), ReduceOp::sum); });
      for (size_t i = 0; i < n; ++i)
        out.bf16()[i] = core::bf16_round_nearest_even(f[size_t(rank_) * n + i]);
      return;
    }
    run("reduce_scatter", [&] {
      dispatch(in.dtype, [&](auto zero) {
        using T = decltype(zero);
        const T* src = static_cast<const T*>(in.data);
        std::vector<T> all(src, src + in.numel());
        allreduce<T>(all.data(), all.size(), ReduceOp::sum);
        std::memcpy(out.data, all.data() + size_t(rank_) * n, n * sizeof(T));
      });
    });
  }

  void all_gather(const core::View& in, const core::View& out) override {
    const bool in_place = detail::check_all_gather(*this, in, out);
    if (in.numel() == 0) return;
    run("all_gather", [&] {
      gloo::AllgatherOptions opts(ctx_);
      if (!in_place) opts.setInput<char>(static_cast<char*>(in.data), in.bytes());
      opts.setOutput<char>(static_cast<char*>(out.data), out.bytes());
      opts.setTag(next_tag());
      opts.setTimeout(timeout_);
      gloo::allgather(opts);
    });
  }

  void all_to_all_v(const core::View& in, const std::vector<int64_t>& send_counts,
                    const core::View& out, const std::vector<int64_t>& recv_counts) override {
    detail::check_all_to_all_v(*this, in, send_counts, out, recv_counts);
    const int64_t esize = int64_t(core::dtype_size(in.dtype));
    std::vector<int64_t> send_bytes(send_counts), recv_bytes(recv_counts);
    for (int64_t& b : send_bytes) b *= esize;
    for (int64_t& b : recv_bytes) b *= esize;
    // Gloo sizes its buffers from the counts; a zero-byte buffer still needs an address.
    char dummy = 0;
    char* src = in.data ? static_cast<char*>(in.data) : &dummy;
    char* dst = out.data ? static_cast<char*>(out.data) : &dummy;
    run("all_to_all_v", [&] {
      gloo::AlltoallvOptions opts(ctx_);
      opts.setInput<char>(src, send_bytes);
      opts.setOutput<char>(dst, recv_bytes);
      opts.setTag(next_tag());
      opts.setTimeout(timeout_);
      gloo::alltoallv(opts);
    });
  }

  void broadcast(const core::View& x, int root) override {
    detail::check_broadcast(*this, x, root);
    if (x.numel() == 0) return;
    run("broadcast", [&] {
      gloo::BroadcastOptions opts(ctx_);
      opts.setOutput<char>(static_cast<char*>(x.data), x.bytes());
      opts.setRoot(root);
      opts.setTag(next_tag());
      opts.setTimeout(timeout_);
      gloo::broadcast(opts);
    });
  }

  void barrier() override {
    run("barrier", [&] {
      gloo::BarrierOptions opts(ctx_);
      opts.setTag(next_tag());
      opts.setTimeout(timeout_);
      gloo::barrier(opts);
    });
  }

  std::unique_ptr<Comm> split(int color, int key) override {
    std::vector<int32_t> mine = {color, key}, all(size_t(2 * size_));
    all_gather(core::View(mine.data(), core::DType::i32, core::Device::cpu, {2}),
               core::View(all.data(), core::DType::i32, core::Device::cpu, {2 * size_}));
    std::vector<int> members;  // parent ranks of this color, ordered by (key, parent rank)
    for (int r = 0; r < size_; ++r)
      if (all[size_t(2 * r)] == color) members.push_back(r);
    std::stable_sort(members.begin(), members.end(),
                     [&](int a, int b) { return all[size_t(2 * a + 1)] < all[size_t(2 * b + 1)]; });
    const int new_rank = int(std::find(members.begin(), members.end(), rank_) - members.begin());
    const std::string prefix =
        prefix_ + "s" + std::to_string(splits_++) + "c" + std::to_string(color) + "/";
    const double timeout_s = double(timeout_.count()) / 1000;
    if (members.size() == 1) return self_comm(core::Device::cpu);
    return std::make_unique<GlooComm>(store_, device_, prefix, new_rank, int(members.size()),
                                      timeout_s);
  }

 private:
  // Calls f() with a value of the C++ type of `t` (bf16 excluded: it has none).
  template <typename F>
  static void dispatch(core::DType t, F&& f) {
    switch (t) {
      case core::DType::f32:
        return f(float{});
      case core::DType::f64:
        return f(double{});
      case core::DType::i32:
        return f(int32_t{});
      case core::DType::i64:
        return f(int64_t{});
      default:
        core::fail("gloo: no reduction for dtype ", core::dtype_name(t));
    }
  }

  template <typename T>
  void allreduce(T* x, size_t n, ReduceOp op) {
    gloo::AllreduceOptions opts(ctx_);
    opts.setOutput<T>(x, n);
    opts.setReduceFunction(reduce_fn<T>(op));
    opts.setTag(next_tag());
    opts.setTimeout(timeout_);
    gloo::allreduce(opts);
  }

  // Tags tell concurrent Gloo operations apart; every rank calls the collectives in the same order,
  // so a counter gives matching tags.
  uint32_t next_tag() { return tag_++; }

  // Runs a Gloo call, turning its exceptions into core::Error (and the communicator unusable).
  template <typename F>
  void run(const char* op, F&& f) {
    DT_CHECK(failed_.empty(), detail::where(*this, op), ": this communicator failed earlier (",
             failed_, ") and cannot be used again");
    std::string msg;
    try {
      f();
      return;
    } catch (const core::Error&) {
      throw;
    } catch (const gloo::Exception& e) {
      msg = e.what();
    } catch (const gloo::EnforceNotMet& e) {
      msg = e.what();
    } catch (const std::exception& e) {
      msg = e.what();
    }
    std::replace(msg.begin(), msg.end(), '\n', ' ');  // one-line errors
    failed_ = std::string(op) + ": " + msg;
    core::fail(detail::where(*this, op), ": ", msg, " (timeout ", double(timeout_.count()) / 1000,
               " s; a peer exited or stopped answering?)");
  }

  std::shared_ptr<Rendezvous> store_;
  std::shared_ptr<gloo::transport::Device> device_;
  std::string prefix_;
  int rank_, size_;
  std::chrono::milliseconds timeout_;
  std::shared_ptr<gloo::Context> ctx_;
  uint32_t tag_ = 0;
  int splits_ = 0;
  std::string failed_;  // the first failure, once one happened
};

}  // namespace

std::unique_ptr<Comm> detail::make_gloo_comm(std::shared_ptr<Rendezvous> store, const World& world,
                                             double timeout_s) {
  auto device = make_device(*store);
  return std::make_unique<GlooComm>(std::move(store), std::move(device), "gloo/", world.rank,
                                    world.size, timeout_s);
}

}  // namespace deltatron::dist
