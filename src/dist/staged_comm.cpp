// Gloo for CUDA views (DT_DIST_BACKEND=gloo): each collective stages its device views through
// host memory around the host communicator's call. Slow (two copies per call, synchronous), but it
// runs where NCCL cannot: several ranks on one GPU, which is how the CUDA path of every layout is
// checked on a machine with one GPU.
#include <memory>
#include <vector>

#include "core/error.h"
#include "dist/backend.h"

#ifdef DT_HAVE_CUDA
#include <cuda_runtime_api.h>

namespace deltatron::dist::detail {

namespace {

void cuda_ok(cudaError_t e, const char* what) {
  DT_CHECK(e == cudaSuccess, "gloo (staged) ", what, ": ", cudaGetErrorString(e));
}

// A host copy of a device view (and back).
struct Staged {
  std::vector<unsigned char> bytes;
  core::View host;
  core::View dev;
  explicit Staged(const core::View& d, bool copy_in) : dev(d) {
    bytes.resize(std::max<size_t>(d.bytes(), 1));
    host = core::View(bytes.data(), d.dtype, core::Device::cpu, d.shape);
    if (copy_in && d.bytes() > 0)
      cuda_ok(cudaMemcpy(bytes.data(), d.data, d.bytes(), cudaMemcpyDeviceToHost), "copy in");
  }
  void copy_out() const {
    if (dev.bytes() > 0)
      cuda_ok(cudaMemcpy(dev.data, bytes.data(), dev.bytes(), cudaMemcpyHostToDevice), "copy out");
  }
};

class StagedComm final : public Comm {
 public:
  explicit StagedComm(std::unique_ptr<Comm> host) : host_(std::move(host)) {}
  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  core::Device device() const override { return core::Device::cuda; }
  const char* backend() const override { return "gloo (staged)"; }

  void all_reduce(const core::View& x, ReduceOp op) override {
    check_all_reduce(*this, x);
    Staged s(x, true);
    host_->all_reduce(s.host, op);
    s.copy_out();
  }
  void reduce_scatter(const core::View& in, const core::View& out) override {
    check_reduce_scatter(*this, in, out);
    Staged i(in, true), o(out, false);
    host_->reduce_scatter(i.host, o.host);
    o.copy_out();
  }
  void all_gather(const core::View& in, const core::View& out) override {
    check_all_gather(*this, in, out);
    Staged i(in, true), o(out, false);
    host_->all_gather(i.host, o.host);
    o.copy_out();
  }
  void all_to_all_v(const core::View& in, const std::vector<int64_t>& send_counts,
                    const core::View& out, const std::vector<int64_t>& recv_counts) override {
    check_all_to_all_v(*this, in, send_counts, out, recv_counts);
    Staged i(in, true), o(out, true);  // elements past the blocks stay as they were
    host_->all_to_all_v(i.host, send_counts, o.host, recv_counts);
    o.copy_out();
  }
  void broadcast(const core::View& x, int root) override {
    check_broadcast(*this, x, root);
    Staged s(x, true);
    host_->broadcast(s.host, root);
    s.copy_out();
  }
  void barrier() override {
    cuda_ok(cudaDeviceSynchronize(), "barrier");
    host_->barrier();
  }
  std::unique_ptr<Comm> split(int color, int key) override {
    return std::make_unique<StagedComm>(host_->split(color, key));
  }

 private:
  std::unique_ptr<Comm> host_;
};

}  // namespace

std::unique_ptr<Comm> make_staged_comm(std::unique_ptr<Comm> host) {
  return std::make_unique<StagedComm>(std::move(host));
}

}  // namespace deltatron::dist::detail

#else

namespace deltatron::dist::detail {

std::unique_ptr<Comm> make_staged_comm(std::unique_ptr<Comm>) {
  core::fail("gloo (staged): CUDA views need a CUDA build of deltatron");
}

}  // namespace deltatron::dist::detail

#endif
