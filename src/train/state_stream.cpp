// Whole tensors of a sharded training state onto rank 0, one at a time (state_stream.h).
#include "train/state_stream.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <vector>

#include "core/buffer.h"
#include "core/error.h"
#include "model/expert_parallel.h"
#include "model/tensor_parallel.h"
#include "ops/tensor.h"
#include "train/local_slices.h"

namespace deltatron::train {

namespace {

// Rank 0 of g receives every rank's n floats of `in`, in rank order, into out (g.size() x n);
// the other ranks receive nothing (out unused). An all_to_all_v whose only receiver is rank 0:
// a gather. dev: the communicator's device (host buffers are staged through it for CUDA).
void gather_to_root(dist::Comm& g, const float* in, int64_t n, float* out, core::Device dev,
                    io::SaveStats* stats) {
  const int P = g.size();
  const bool root = g.rank() == 0;
  std::vector<int64_t> send(size_t(P), 0), recv(size_t(P), 0);
  send[0] = n;
  if (root) recv.assign(size_t(P), n);
  const int64_t total = root ? n * P : 0;
  if (dev == core::Device::cpu) {
    g.all_to_all_v(core::View(const_cast<float*>(in), core::DType::f32, dev, {n}), send,
                   core::View(root ? out : nullptr, core::DType::f32, dev, {total}), recv);
    return;
  }
  core::Buffer bin(dev, core::DType::f32, {std::max<int64_t>(n, 1)}, "a slice being saved");
  core::Buffer bout(dev, core::DType::f32, {std::max<int64_t>(total, 1)},
                    "a tensor gathered for a save");
  if (stats) stats->add(4 * (n + total));  // device staging (CUDA); counted with the host's
  ops::copy_from_host(bin.view().slice(0, n), in);
  g.all_to_all_v(bin.view().slice(0, n), send, bout.view().slice(0, total), recv);
  if (root) ops::copy_to_host(bout.view().slice(0, total), out);
  g.barrier();  // the sends are done (queued on the stream) before the buffers go
  if (stats) stats->sub(4 * (n + total));
}

}  // namespace

StateReader::StateReader(const Parallel& par, Engine& engine, const model::TensorMap& host,
                         const model::Config& c, AdamW& opt, const ExpertGroups* eg,
                         const TensorGroups* tg, io::SaveStats* stats)
    : par_(par),
      engine_(engine),
      host_(host),
      c_(c),
      opt_(opt),
      eg_(eg && eg->on() ? eg : nullptr),
      tg_(tg && tg->on() ? tg : nullptr),
      stats_(stats) {
  static const ExpertGroups no_experts;
  static const TensorGroups no_tp;
  slices_ = local_slices(eg_ ? *eg_ : no_experts, tg_ ? *tg_ : no_tp);
  for (const model::ParamSpec& s : model::param_specs(c)) {
    shapes_.emplace(s.name, s.shape);
    largest_ = std::max(largest_, core::numel(s.shape));
  }
  for (const auto& [name, t] : host)
    DT_CHECK(shapes_.count(name), "checkpoint save: ", name, " is not a parameter of the config");
  collective_ = par.size() > 1 && (engine.sharded() || eg_ || tg_);
}

StateReader::Split StateReader::split_of(const std::string& name) const {
  const bool tp = tg_ && model::is_tp_sharded(c_, name);
  if (eg_ && model::is_routed_expert_tensor(name)) return tp ? Split::experts_tp : Split::experts;
  if (tp) return Split::tp;
  return Split::none;
}

bool StateReader::gathers(Split split) const {
  // Consecutive groups: the tp group holding rank 0 is ranks [0, tp); the data-parallel rank is
  // rank / tp, and ep group 0 holds data-parallel ranks [0, ep) (of every tp slice).
  const int tp = tg_ ? tg_->group->size() : 1;
  const int ep = eg_ ? eg_->group->size() : 1;
  switch (split) {
    case Split::none:
      return false;
    case Split::tp:
      return par_.rank() < tp;
    case Split::experts:
      return par_.rank() % tp == 0 && par_.rank() / tp < ep;
    case Split::experts_tp:
      return par_.rank() < tp * ep;
  }
  return false;
}

void StateReader::sync_step() {
  model::TensorMap none;
  engine_.sync_weights(none, opt_);
}

void StateReader::read(StatePart part, const std::string& name, float* out) {
  const auto sh = shapes_.find(name);
  DT_CHECK(sh != shapes_.end(), "checkpoint save: no parameter ", name);
  const core::Shape& full = sh->second;
  const Split split = split_of(name);
  dist::Comm* group = split == Split::experts                            ? eg_->group.get()
                      : split == Split::tp || split == Split::experts_tp ? tg_->group.get()
                                                                         : nullptr;
  if (group && group->size() == 1) group = nullptr;
  const bool gathers = group && this->gathers(split);
  const bool weight = part == StatePart::weight;
  const bool engine_collective =
      par_.size() > 1 && (weight ? engine_.gathers_weights() : engine_.sharded());
  if (!par_.root() && !gathers && !engine_collective) return;  // nothing of this rank's needed

  // This rank's tensor as the engine holds it (its slice under ep / tp).
  const std::optional<io::ParamSlice> sl = slices_ ? slices_(c_, name, full) : std::nullopt;
  const core::Shape local_shape = sl ? sl->shape : full;
  const bool whole_here = par_.root() && !group;
  core::Tensor local;
  float* dst = nullptr;  // where the engine writes: out itself when rank 0 keeps it whole
  if (whole_here) {
    dst = out;
  } else {
    local = core::Tensor(local_shape);
    if (stats_) stats_->add(4 * local.numel());
    dst = local.ptr();
  }
  const int64_t n = core::numel(local_shape);
  if (weight) {
    // A tensor the engine holds apart keeps the host's values (as loaded): start from them.
    const auto h = host_.find(name);
    const bool from_host = h != host_.end() && h->second.shape == local_shape;
    model::TensorMap one;
    core::Tensor t = whole_here ? core::Tensor(local_shape) : std::move(local);
    if (whole_here && stats_) stats_->add(4 * n);
    if (from_host) std::memcpy(t.ptr(), h->second.ptr(), size_t(n) * 4);
    one.emplace(name, std::move(t));
    engine_.sync_weights(one, opt_);
    if (whole_here) {
      std::memcpy(out, one.at(name).ptr(), size_t(n) * 4);
      if (stats_) stats_->sub(4 * n);
      return;
    }
    local = std::move(one.at(name));
    dst = local.ptr();
  } else {
    engine_.read_moment(name, part == StatePart::exp_avg_sq, dst);
    if (whole_here) return;
  }
  const auto done = [&] {
    if (stats_) stats_->sub(4 * n);
  };
  if (!group) {  // whole on every rank: rank 0's own (the others took part in the engine's read)
    if (par_.root()) std::memcpy(out, local.ptr(), size_t(n) * 4);
    return done();
  }
  if (!gathers) return done();
  const int64_t P = group->size();
  const core::Device dev = par_.comm->device();
  if (split == Split::experts) {  // [E, ...]: the group's slices one after the other
    gather_to_root(*group, local.ptr(), n, out, dev, stats_);
    return done();
  }
  // tp: each rank's slice is runs of the full tensor (model::tp_runs), placed by the group's
  // rank 0. With ep too, the tp group's tensor is its experts' block [El, ...], which the tp
  // ranks 0 of ep group 0 then gather to rank 0 (the experts' blocks one after the other).
  const bool two_stage = split == Split::experts_tp && eg_->group->size() > 1;
  const bool tp_root = group->rank() == 0;
  core::Shape block = full;  // what the tp group's slices make
  if (two_stage) block[0] = local_shape[0];
  std::vector<float> all(size_t(tp_root ? P * n : 0));
  std::vector<float> joined(size_t(two_stage && tp_root ? P * n : 0));
  float* dst_block = two_stage ? joined.data() : out;
  if (stats_) stats_->add(4 * int64_t(all.size() + joined.size()));
  gather_to_root(*group, local.ptr(), n, all.data(), dev, stats_);
  if (tp_root) {
    for (int64_t p = 0; p < P; ++p) {
      const float* src = all.data() + p * n;
      int64_t k = 0;
      for (const auto& [off, cnt] : model::tp_runs(c_, name, block, p, P)) {
        std::memcpy(dst_block + off, src + k, size_t(cnt) * 4);
        k += cnt;
      }
      DT_CHECK(k == n, "checkpoint save: ", name, ": tp rank ", p, "'s runs hold ", k,
               " elements, its slice ", n);
    }
    if (two_stage) gather_to_root(*eg_->group, joined.data(), P * n, out, dev, stats_);
  }
  if (stats_) stats_->sub(4 * int64_t(all.size() + joined.size()));
  done();
}

void print_save_stats(const char* what, const Parallel& par, int64_t step, const io::SaveStats& s,
                      const model::Config& c) {
  int64_t largest = 0, all = 0;
  for (const model::ParamSpec& p : model::param_specs(c)) {
    largest = std::max(largest, core::numel(p.shape));
    all += core::numel(p.shape);
  }
  std::fprintf(stderr,
               "%s: rank %d of %d: saved step %lld: save buffers peak %lld bytes (largest tensor "
               "%lld bytes, whole model %lld bytes in f32)\n",
               what, par.rank(), par.size(), static_cast<long long>(step),
               static_cast<long long>(s.peak_bytes), static_cast<long long>(4 * largest),
               static_cast<long long>(4 * all));
}

}  // namespace deltatron::train
