// Data parallelism: the job's communicator and host sums over the ranks.
#include "train/parallel.h"

#include "core/buffer.h"
#include "core/constants.h"
#include "core/error.h"
#include "ops/device.h"
#include "ops/tensor.h"

namespace deltatron::train {

namespace {

// Sums a host array of n elements of dt in place over the ranks: directly on a CPU
// communicator, through a device buffer on a CUDA one.
void host_reduce(const Parallel& p, void* data, core::DType dt, int64_t n, dist::ReduceOp op) {
  if (p.size() == 1 || n == 0) return;
  const core::Device dev = p.comm->device();
  if (dev == core::Device::cpu) {
    p.comm->all_reduce(core::View(data, dt, dev, {n}), op);
    return;
  }
  core::Buffer b(dev, dt, {n}, "host values summed over the ranks");
  ops::copy_from_host(b, data);
  p.comm->all_reduce(b, op);
  ops::copy_to_host(b, data);
}

}  // namespace

Parallel setup_parallel(core::Device dev, const char* what) {
  const dist::World w = dist::world_from_env();
  // One rank needs no communicator, unless a backend is asked for (DT_DIST_BACKEND=nccl: NCCL
  // on one GPU, a check of that path).
  if (w.size == 1 && dist::requested_backend() == "auto") return single_rank(dev);
  if (dev == core::Device::cuda) ops::select_device(dev, w.local_rank);
  Parallel p;
  p.comm = dist::connect(w, dev);
  DT_CHECK(p.comm->size() == w.size, what, ": the communicator has ", p.comm->size(),
           " ranks, the launcher started ", w.size);
  return p;
}

std::vector<int64_t> rank_items(const Parallel& p, int64_t n, bool same_count) {
  std::vector<int64_t> out;
  for (int64_t i = p.rank(); i < n; i += p.size()) out.push_back(i);
  if (same_count)
    while (int64_t(out.size()) < (n + p.size() - 1) / p.size()) out.push_back(-1);
  return out;
}

data::Pack idle_pack() {
  data::Pack p;
  p.N = 1;
  p.input_ids = {0};
  p.labels = {core::kIgnoreIndex};
  p.targets = {core::kIgnoreIndex};
  p.position_ids = {0, 0, 0};
  p.is_pad = {1};
  p.cu_seqlens = {0, 0};
  p.cu_seqlens_padded = {0, 1};
  p.sample_index = {-1};
  p.mtp_input_ids = {0};
  p.mtp_targets = {core::kIgnoreIndex};
  return p;
}

Parallel single_rank(core::Device dev) {
  Parallel p;
  p.comm = dist::self_comm(dev);
  return p;
}

void all_reduce_sum(const Parallel& p, std::vector<double>& x) {
  host_reduce(p, x.data(), core::DType::f64, int64_t(x.size()), dist::ReduceOp::sum);
}

void all_reduce_sum(const Parallel& p, std::vector<int64_t>& x) {
  host_reduce(p, x.data(), core::DType::i64, int64_t(x.size()), dist::ReduceOp::sum);
}

double all_reduce_sum(const Parallel& p, double x) {
  host_reduce(p, &x, core::DType::f64, 1, dist::ReduceOp::sum);
  return x;
}

int64_t all_reduce_max(const Parallel& p, int64_t x) {
  host_reduce(p, &x, core::DType::i64, 1, dist::ReduceOp::max);
  return x;
}

void broadcast(const Parallel& p, int64_t& x, int root) {
  if (p.size() == 1) return;
  const core::Device dev = p.comm->device();
  if (dev == core::Device::cpu) {
    p.comm->broadcast(core::View(&x, core::DType::i64, dev, {1}), root);
    return;
  }
  core::Buffer b(dev, core::DType::i64, {1}, "a value broadcast to the ranks");
  ops::copy_from_host(b, &x);
  p.comm->broadcast(b, root);
  ops::copy_to_host(b, &x);
}

void all_reduce_counts(const Parallel& p, model::GlobalRouterCounts& counts,
                       const std::vector<std::string>& moe_prefixes, int64_t num_experts) {
  if (p.size() == 1) return;
  for (const auto& pf : moe_prefixes) {  // map order: the same on every rank
    model::GlobalRouterCounts::Layer& l = counts.at(pf, p.comm->device(), num_experts);
    p.comm->all_reduce(l.counts_E, dist::ReduceOp::sum);
    p.comm->all_reduce(l.tokens_1, dist::ReduceOp::sum);
  }
}

}  // namespace deltatron::train
