// The CUDA communicator: NCCL collectives on the current device's legacy default stream (stream
// 0, where every deltatron kernel runs), the unique id swapped through the job's rendezvous.
//
// Choices:
//   - device: the caller selects the rank's GPU (cudaSetDevice(LOCAL_RANK % devices)) before
//     connect(); the communicator uses the device current at connect();
//   - collectives: ncclAllReduce, ncclReduceScatter, ncclAllGather (in place when in is out's
//     block rank()), ncclBroadcast; all_to_all_v is ncclSend/ncclRecv pairs (zero counts skipped)
//     in one ncclGroupStart/ncclGroupEnd; split is ncclCommSplit; bf16 sums in bf16 (NCCL's
//     ncclBfloat16: rounded at every step of its algorithm);
//   - timeouts: the communicator is non-blocking (ncclConfig_t::blocking = 0). Set-up, split and
//     every call that NCCL reports in progress are polled with ncclCommGetAsyncError until done,
//     an error, or the timeout: then ncclCommAbort and a core::Error. A collective's kernel that
//     waits for a dead peer does not fail its (asynchronous) call: the hang is caught by the next
//     barrier(), which waits for the stream with the same polling and deadline, and an error
//     NCCL's proxy detected meanwhile (a closed connection) by the next call of any kind. There
//     is no watchdog thread: code that must not hang between barriers calls barrier();
//   - after any failure the communicator is aborted: every later call is an error saying so.
#ifdef DT_HAVE_CUDA

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "core/error.h"
#include "dist/backend.h"
#include "dist/rendezvous.h"

namespace deltatron::dist {

namespace {

using Clock = std::chrono::steady_clock;

// The engine's stream: the legacy default stream (this file is plain C++, built without
// --default-stream per-thread, so 0 is the legacy stream as in the kernels' launches).
const cudaStream_t kStream = 0;

ncclDataType_t nccl_type(core::DType t) {
  switch (t) {
    case core::DType::f32:
      return ncclFloat32;
    case core::DType::f64:
      return ncclFloat64;
    case core::DType::bf16:
      return ncclBfloat16;
    case core::DType::i32:
      return ncclInt32;
    case core::DType::i64:
      return ncclInt64;
    default:
      core::fail("nccl: unsupported dtype ", core::dtype_name(t));
  }
}

ncclConfig_t nonblocking_config() {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  return config;
}

class NcclComm final : public Comm {
 public:
  NcclComm(ncclComm_t comm, int rank, int size, double timeout_s)
      : comm_(comm), rank_(rank), size_(size), timeout_s_(timeout_s) {
    cudaGetDevice(&device_);
    const cudaError_t err = cudaMalloc(&one_, sizeof(int32_t));
    if (err != cudaSuccess) {
      ncclCommAbort(comm_);
      core::fail(detail::where(*this, "connect"),
                 ": cudaMalloc of 4 bytes failed: ", cudaGetErrorString(err));
    }
  }
  ~NcclComm() override {
    cudaFree(one_);
    if (!failed_.empty()) {
      ncclCommAbort(comm_);
      return;
    }
    // Flush, then destroy; a communicator that cannot finish within the timeout is aborted.
    ncclResult_t r = ncclCommFinalize(comm_);
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s_);
    while (r == ncclInProgress && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      if (ncclCommGetAsyncError(comm_, &r) != ncclSuccess) break;
    }
    if (r == ncclSuccess)
      ncclCommDestroy(comm_);
    else
      ncclCommAbort(comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  core::Device device() const override { return core::Device::cuda; }
  const char* backend() const override { return "nccl"; }

  void all_reduce(const core::View& x, ReduceOp op) override {
    detail::check_all_reduce(*this, x);
    check_device_memory("all_reduce", "x", x);
    if (x.numel() == 0) return;
    call("all_reduce", [&] {
      return ncclAllReduce(x.data, x.data, size_t(x.numel()), nccl_type(x.dtype),
                           op == ReduceOp::sum ? ncclSum : ncclMax, comm_, kStream);
    });
  }

  void reduce_scatter(const core::View& in, const core::View& out) override {
    detail::check_reduce_scatter(*this, in, out);
    check_device_memory("reduce_scatter", "in", in);
    check_device_memory("reduce_scatter", "out", out);
    if (out.numel() == 0) return;
    call("reduce_scatter", [&] {
      return ncclReduceScatter(in.data, out.data, size_t(out.numel()), nccl_type(in.dtype), ncclSum,
                               comm_, kStream);
    });
  }

  void all_gather(const core::View& in, const core::View& out) override {
    detail::check_all_gather(*this, in, out);
    check_device_memory("all_gather", "in", in);
    check_device_memory("all_gather", "out", out);
    if (in.numel() == 0) return;
    call("all_gather", [&] {
      return ncclAllGather(in.data, out.data, size_t(in.numel()), nccl_type(in.dtype), comm_,
                           kStream);
    });
  }

  void all_to_all_v(const core::View& in, const std::vector<int64_t>& send_counts,
                    const core::View& out, const std::vector<int64_t>& recv_counts) override {
    detail::check_all_to_all_v(*this, in, send_counts, out, recv_counts);
    check_device_memory("all_to_all_v", "in", in);
    check_device_memory("all_to_all_v", "out", out);
    const std::vector<int64_t> send_off = detail::offsets_of(send_counts);
    const std::vector<int64_t> recv_off = detail::offsets_of(recv_counts);
    const ncclDataType_t t = nccl_type(in.dtype);
    const size_t esize = core::dtype_size(in.dtype);
    call("all_to_all_v", [&] {
      ncclResult_t r = ncclGroupStart();
      for (int p = 0; p < size_ && (r == ncclSuccess || r == ncclInProgress); ++p) {
        if (send_counts[size_t(p)] > 0)
          r = ncclSend(static_cast<const char*>(in.data) + size_t(send_off[size_t(p)]) * esize,
                       size_t(send_counts[size_t(p)]), t, p, comm_, kStream);
        if (recv_counts[size_t(p)] > 0 && (r == ncclSuccess || r == ncclInProgress))
          r = ncclRecv(static_cast<char*>(out.data) + size_t(recv_off[size_t(p)]) * esize,
                       size_t(recv_counts[size_t(p)]), t, p, comm_, kStream);
      }
      const ncclResult_t end = ncclGroupEnd();  // always closes the group
      return r == ncclSuccess || r == ncclInProgress ? end : r;
    });
  }

  void broadcast(const core::View& x, int root) override {
    detail::check_broadcast(*this, x, root);
    check_device_memory("broadcast", "x", x);
    if (x.numel() == 0) return;
    call("broadcast", [&] {
      return ncclBroadcast(x.data, x.data, size_t(x.numel()), nccl_type(x.dtype), root, comm_,
                           kStream);
    });
  }

  // An all-reduce of one integer, then a wait for the stream (all of the device's earlier work
  // on it too), polled against the timeout.
  void barrier() override {
    call("barrier",
         [&] { return ncclAllReduce(one_, one_, 1, ncclInt32, ncclSum, comm_, kStream); });
    cudaEvent_t done;
    cudaError_t err = cudaEventCreateWithFlags(&done, cudaEventDisableTiming);
    if (err == cudaSuccess) err = cudaEventRecord(done, kStream);
    if (err != cudaSuccess) fail("barrier", std::string("CUDA: ") + cudaGetErrorString(err));
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s_);
    for (;;) {
      err = cudaEventQuery(done);
      if (err != cudaErrorNotReady) break;
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress) {
        cudaEventDestroy(done);
        fail("barrier", nccl_message(async));
      }
      if (Clock::now() >= deadline) {
        cudaEventDestroy(done);
        fail("barrier", "the device's work did not finish within the timeout");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    cudaEventDestroy(done);
    if (err != cudaSuccess) fail("barrier", std::string("CUDA: ") + cudaGetErrorString(err));
  }

  std::unique_ptr<Comm> split(int color, int key) override {
    DT_CHECK(color >= 0, detail::where(*this, "split"), ": color ", color,
             " is negative (NCCL reserves negative colors)");
    ncclComm_t sub = nullptr;
    ncclConfig_t config = nonblocking_config();
    call("split", [&] { return ncclCommSplit(comm_, color, key, &sub, &config); });
    // Non-blocking: the new communicator's handle may be stored only once NCCL's split job has
    // run (on one H100, ncclCommGetAsyncError on it right after the call reported "comm argument
    // is NULL"), so wait for the handle before polling its state.
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s_);
    while (std::atomic_ref<ncclComm_t>(sub).load() == nullptr) {
      if (Clock::now() >= deadline) fail("split", "no communicator within the timeout");
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    int sub_rank = 0, sub_size = 0;
    wait_ready("split", sub);
    ncclCommUserRank(sub, &sub_rank);
    ncclCommCount(sub, &sub_size);
    return std::make_unique<NcclComm>(sub, sub_rank, sub_size, timeout_s_);
  }

  // Waits until `comm` (this communicator or a new one) has finished its pending set-up or call:
  // core::Error on an error or after the timeout (the communicator aborted).
  void wait_ready(const char* op, ncclComm_t comm) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s_);
    for (;;) {
      ncclResult_t state = ncclSuccess;
      const ncclResult_t r = ncclCommGetAsyncError(comm, &state);
      if (r != ncclSuccess) state = r;
      if (state == ncclSuccess) return;
      if (state != ncclInProgress || Clock::now() >= deadline) {
        if (comm != comm_) ncclCommAbort(comm);
        fail(op, state == ncclInProgress ? "not finished within the timeout (a peer missing?)"
                                         : nccl_message(state));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }

 private:
  template <typename F>
  void call(const char* op, F&& f) {
    DT_CHECK(failed_.empty(), detail::where(*this, op), ": this communicator failed earlier (",
             failed_, ") and was aborted");
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(comm_, &async);
    if (async != ncclSuccess && async != ncclInProgress)
      fail(op, "an earlier operation failed: " + nccl_message(async));
    if (async == ncclInProgress) wait_ready(op, comm_);
    const ncclResult_t r = f();
    if (r == ncclInProgress) {
      wait_ready(op, comm_);
    } else if (r != ncclSuccess) {
      fail(op, nccl_message(r));
    }
  }

  std::string nccl_message(ncclResult_t r) const {
    std::string m = ncclGetErrorString(r);
    if (const char* last = ncclGetLastError(comm_); last && *last) m += std::string(": ") + last;
    return m;
  }

  void check_device_memory(const char* op, const char* name, const core::View& v) const {
    if (!v.data) return;
    cudaPointerAttributes a{};
    const cudaError_t err = cudaPointerGetAttributes(&a, v.data);
    DT_CHECK(
        err == cudaSuccess && (a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged),
        detail::where(*this, op), ": ", name, " (", v.describe(), ") is not device memory");
  }

  [[noreturn]] void fail(const char* op, const std::string& msg) {
    failed_ = std::string(op) + ": " + msg;
    ncclCommAbort(comm_);
    core::fail(detail::where(*this, op), " on GPU ", device_, ": ", msg, " (timeout ", timeout_s_,
               " s)");
  }

  ncclComm_t comm_;
  int rank_, size_;
  double timeout_s_;
  int device_ = -1;
  int32_t* one_ = nullptr;  // the barrier's all-reduce operand
  std::string failed_;
};

}  // namespace

std::unique_ptr<Comm> detail::make_nccl_comm(std::shared_ptr<Rendezvous> store, const World& world,
                                             double timeout_s) {
  int device = -1, count = 0;
  const cudaError_t err = cudaGetDevice(&device);
  DT_CHECK(err == cudaSuccess && cudaGetDeviceCount(&count) == cudaSuccess && count > 0,
           "connect: rank ", world.rank, ": no CUDA device (", cudaGetErrorString(err), ")");
  ncclUniqueId id;
  if (world.rank == 0) {
    const ncclResult_t r = ncclGetUniqueId(&id);
    DT_CHECK(r == ncclSuccess, "connect: rank 0: ncclGetUniqueId failed: ", ncclGetErrorString(r));
    store->set("nccl/id", std::vector<char>(id.internal, id.internal + sizeof(id.internal)));
  } else {
    const std::vector<char> bytes = store->get("nccl/id");
    DT_CHECK(bytes.size() == sizeof(id.internal), "connect: rank ", world.rank, ": NCCL id of ",
             bytes.size(), " bytes from the store at ", store->where());
    std::memcpy(id.internal, bytes.data(), bytes.size());
  }
  ncclComm_t comm = nullptr;
  ncclConfig_t config = nonblocking_config();
  const ncclResult_t r = ncclCommInitRankConfig(&comm, world.size, id, world.rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    if (comm) ncclCommAbort(comm);
    core::fail("nccl connect (rank ", world.rank, " of ", world.size, ") on GPU ", device, ": ",
               ncclGetErrorString(r));
  }
  auto c = std::make_unique<NcclComm>(comm, world.rank, world.size, timeout_s);
  c->wait_ready("connect", comm);
  // Every rank has the id once all are connected: rank 0 may then take the store down.
  c->barrier();
  return c;
}

}  // namespace deltatron::dist

#endif  // DT_HAVE_CUDA
