// The engine: model::Model on one device, its AdamW moments beside the parameters (one fused
// step over all tensors, a deterministic global gradient norm); host copies only when asked.
// The state's storage (training.master, training.moments) is the parameter store's
// (model::StateOptions); the moments here are f32 or bf16 buffers laid out like the parameters.
#include "train/engine.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "ops/adamw.h"
#include "ops/tensor.h"
#include "train/zero.h"
#include "train/zero3.h"

namespace deltatron::train {

int64_t begin_gated_step(const core::View& gate, core::Device dev, int64_t step, bool pending) {
  DT_CHECK(!pending, "internal: step_gated before the previous step's end_step");
  DT_CHECK(gate.data && gate.dtype == core::DType::f64 && gate.numel() == 2 && gate.device == dev,
           "the AdamW gate is ", gate.data ? gate.describe() : "a null view",
           ", expected f64 with 2 elements on ", core::device_name(dev),
           " (core::StepScalars' grad_scale and skip)");
  return step + 1;
}

void end_gated_step(int64_t& step, bool& pending, bool applied) {
  DT_CHECK(pending, "internal: end_step without step_gated");
  pending = false;
  if (applied) ++step;
}

namespace {

// Calls f(kind, begin, end) for the runs of consecutive tensors of one kind (kind(name): e.g.
// routed-expert slices or not; any comparable value) of the store, [begin, end) in the flat buffers
// (alignment gaps included).
template <typename Kind, typename F>
void for_each_run(const model::Params& p, Kind&& kind, F&& f) {
  const std::vector<std::string>& names = p.names();
  for (size_t i = 0; i < names.size();) {
    const auto k = kind(names[i]);
    const int64_t begin = p.entry(names[i]).offset;
    int64_t end = begin;  // the run's tensors lie in order in the store
    for (; i < names.size() && kind(names[i]) == k; ++i) {
      const auto& e = p.entry(names[i]);
      DT_CHECK(e.offset >= end, "gradient store: ", names[i], " is out of order");
      end = e.offset + e.numel;
    }
    f(k, begin, end);
  }
}
template <typename F>
void for_each_expert_run(const model::Params& p, F&& f) {
  for_each_run(p, model::is_routed_expert_tensor, f);
}

// ZeRO 1 and 2 on several ranks with offloaded masters (training.offload = master+moments): the
// store keeps the offloaded masters of this rank's shards only (zero_shards' owners, over the
// data-parallel ranks; with expert parallelism the routed-expert slices' over the ranks holding
// the same experts), so the host holds this rank's share of them.
model::StateOptions owned_offload(model::StateOptions s, const ZeroSetup& zero) {
  if (zero.stage < 1 || zero.stage > 2 || !zero.comm || zero.comm->size() <= 1 || !s.offload_master)
    return s;
  const int ranks = zero.comm->size(), rank = zero.comm->rank();
  const int eranks = zero.experts ? zero.experts->size() : 0;
  const int erank = zero.experts ? zero.experts->rank() : 0;
  s.offload_owned = [=](const std::vector<model::ParamSpec>& ts) {
    std::vector<bool> out(ts.size(), false);
    if (eranks == 0) {
      const std::vector<int> o = zero_owners(ts, ranks);
      for (size_t i = 0; i < ts.size(); ++i) out[i] = o[i] == rank;
      return out;
    }
    const std::vector<int> dense = zero_owners(
        ts, ranks, [](const std::string& n) { return !model::is_routed_expert_tensor(n); });
    const std::vector<int> experts = zero_owners(ts, eranks, model::is_routed_expert_tensor);
    for (size_t i = 0; i < ts.size(); ++i) out[i] = dense[i] == rank || experts[i] == erank;
    return out;
  };
  return s;
}

// n host floats broadcast from root over comm (staged through the device for CUDA).
void broadcast_host(dist::Comm& comm, float* x, int64_t n, int root) {
  if (n == 0) return;
  if (comm.device() == core::Device::cpu)
    return comm.broadcast(core::View(x, core::DType::f32, core::Device::cpu, {n}), root);
  core::Buffer b(comm.device(), core::DType::f32, {n}, "ZeRO weight being read");
  if (comm.rank() == root) ops::copy_from_host(b, x);
  comm.broadcast(b, root);
  ops::copy_to_host(b, x);
}

class ModelEngine final : public Engine {
 public:
  template <typename Source>
  ModelEngine(core::Device dev, core::DType dt, const model::Config& c, const Source& params,
              const AdamW* opt, const model::StateOptions& state, const model::LoraSetup* lora,
              const ZeroSetup& zero)
      : model_(dev, dt, c, params, lora ? state : owned_offload(state, zero), lora), zero_(zero) {
    const model::Params& p = model_.trainable();
    if (zero.stage > 0 && zero.comm != nullptr && zero.comm->size() > 1) {
      for (dist::Comm* comm : {zero.comm, zero.experts})
        DT_CHECK(comm == nullptr || comm->device() == dev, "ZeRO: the communicator is on ",
                 core::device_name(comm->device()), ", the engine on ", core::device_name(dev));
      if (zero.experts == nullptr) {
        groups_.push_back({zero.comm, zero_shards(p, zero.comm->size()), {}});
      } else {  // the routed-expert slices over the ranks holding the same experts
        const TensorFilter dense = [](const std::string& n) {
          return !model::is_routed_expert_tensor(n);
        };
        const TensorFilter experts = model::is_routed_expert_tensor;
        groups_.push_back({zero.comm, zero_shards(p, zero.comm->size(), dense), dense});
        groups_.push_back({zero.experts, zero_shards(p, zero.experts->size(), experts), experts});
      }
      // This rank's moments: its runs of each group, one after the other.
      for (const ZeroGroup& g : groups_)
        for (const ZeroShards::Run& run : g.shards.runs[size_t(g.comm->rank())]) {
          for (const auto& name : p.names()) {
            const int64_t o = p.entry(name).offset;
            if (o >= run.begin && o < run.end && (!g.covers || g.covers(name)))
              held_[name] = held_total_ + (o - run.begin);
          }
          held_total_ += run.size();
        }
      sharded_ = true;
      masters_apart_ = p.options().offload_master;  // this rank's shards' offloaded masters
    }
    if (!opt) return;  // scoring (or the bench): the moments come with the first step
    alloc_moments();
    if (opt->step_count() > 0) {  // resumed: moments from the checkpoint (this rank's shard)
      step_ = opt->step_count();
      if (!sharded_) {
        model_.trainable().to_flat(opt->exp_avg(), m_, "AdamW exp_avg");
        model_.trainable().to_flat(opt->exp_avg_sq(), v_, "AdamW exp_avg_sq");
      } else {
        load_shard(opt->exp_avg(), m_, "AdamW exp_avg");
        load_shard(opt->exp_avg_sq(), v_, "AdamW exp_avg_sq");
      }
    }
  }

  model::PackLoss fwd_bwd(const data::Pack& pack, bool with_grads,
                          const model::ModelOptions& opt) override {
    return model_.fwd_bwd(pack, with_grads, opt);
  }
  void count_routes(const data::Pack& pack, model::GlobalRouterCounts& counts) override {
    model_.count_routes(pack, counts);
  }
  void set_recompute(bool on) { model_.set_recompute(on); }
  void set_recompute_selective(bool on) override { model_.set_recompute_selective(on); }
  // A LoRA run under ZeRO 3: the frozen base (a gathered store) sharded over zero's ranks and each
  // unit gathered while it runs (train/zero3.h, weights alone); the adapters stay this engine's.
  template <typename Source>
  void shard_frozen_base(const model::Config& c, const Source& params, const ZeroSetup& zero) {
    base_ = std::make_unique<Zero3Store>(model_.params(), c, *zero.comm, zero.experts);
    if constexpr (std::is_same_v<Source, model::ParamSource>) {
      for (const model::ParamSpec& s : params.specs) {
        const core::Tensor t = params.make(s);
        base_->load_weight(s.name, t.ptr(), t.numel());  // the whole tensor or the piece
      }
    } else {
      for (const auto& [name, t] : params) base_->load_weight(name, t.ptr());
    }
    base_->finish_load();
    model_.set_param_gather(base_.get());
  }
  std::vector<std::string> moe_prefixes() const override { return model_.moe_prefixes(); }
  void zero_grads() override { model_.trainable().zero_grads(); }
  void reduce_grads(dist::Comm& comm, dist::Comm* experts) override {
    const model::Params& p = model_.trainable();
    if (zero_stage() >= 2) {  // each group's shards reduce-scattered over its ranks
      DT_CHECK(&comm == zero_.comm && experts == zero_.experts,
               "ZeRO 2: gradients reduced over another communicator");
      for (const ZeroGroup& g : groups_)
        if (g.comm->size() > 1) reduce_scatter_shards(*g.comm, g.shards, p.grad_flat());
      return;
    }
    if (model_.expert_parallel().on()) {  // each run of one kind over its communicator
      for_each_expert_run(p, [&](bool expert, int64_t begin, int64_t end) {
        dist::Comm* c = expert ? experts : &comm;
        if (c && c->size() > 1 && end > begin)
          c->all_reduce(p.grad_flat().slice(begin, end - begin), dist::ReduceOp::sum);
      });
      return;
    }
    if (comm.size() > 1) comm.all_reduce(p.grad_flat(), dist::ReduceOp::sum);
  }
  void set_expert_parallel(const model::ExpertParallel& ep) override {
    DT_CHECK(zero_stage() == 0 || zero_.experts != nullptr,
             "internal: expert parallelism with ZeRO needs the engine made with the same-experts "
             "communicator (ZeroSetup::experts)");
    model_.set_expert_parallel(ep);
  }
  void set_tensor_parallel(const model::TensorParallel& tp) override {
    // With ZeRO the engine was made with the data-parallel ranks holding the same tp slice
    // (ZeroSetup::comm): its shards cover this rank's tp-local tensors.
    model_.set_tensor_parallel(tp);
  }
  void grads_to_host(model::TensorMap& grads) override { model_.trainable().download_grads(grads); }

  double clip(double max_norm) override {
    const double norm = std::sqrt(grad_squares_host());
    grad_scale_ = clip_scale(norm, max_norm);
    return norm;
  }
  void grad_squares(const core::View& out) override {
    const model::Params& p = model_.trainable();
    if (zero_stage() < 2 && !model_.expert_parallel().on() && !model_.tensor_parallel().on())
      return ops::sum_squares_to(p.grad_flat(), p.total(), out);  // queued: no host read
    const double squares = grad_squares_host();  // the layouts' sums over ranks (host values)
    ops::copy_from_host(out, &squares);
  }
  // The gradients' sum of squares over the ranks, on the host.
  double grad_squares_host() {
    const model::Params& p = model_.trainable();
    double squares = 0;
    if (zero_stage() >= 2 && model_.tensor_parallel().on()) {
      // The data-parallel ranks partition this rank's tp-local tensors: the replicated ones'
      // squares (the same on every rank of the tp group) summed over them, the shards' squares
      // over them and then over the tp group.
      double whole = 0, shards = 0;
      for (const auto& [name, at] : held_) {
        const auto& e = p.entry(name);
        (model::is_tp_sharded(model_.config(), name) ? shards : whole) +=
            ops::sum_squares(p.grad_flat().slice(e.offset, e.numel), e.numel);
      }
      squares = sum_over_ranks(*zero_.comm, whole) +
                sum_over_ranks(*model_.tensor_parallel().comm, sum_over_ranks(*zero_.comm, shards));
    } else if (zero_stage() >= 2) {  // the shards' sums, added in rank order on every rank
      // Every element is in one shard of one rank: the data-parallel ranks partition the
      // replicated tensors, and each expert slice is partitioned among the ranks holding it.
      double mine = 0;
      for (const ZeroGroup& g : groups_)
        mine += shard_sum_squares(g.shards, g.comm->rank(), p.grad_flat());
      squares = sum_over_ranks(*zero_.comm, mine);
    } else if (model_.expert_parallel().on()) {  // this rank's expert slices: summed over the group
      // With tp the expert slices are also this rank's tp slice (summed over the ep group, then
      // with the other shards over the tp group); the replicated tensors are whole everywhere.
      const model::Config& c = model_.config();
      const bool tp = model_.tensor_parallel().on();
      double whole = 0, shards = 0, experts = 0;
      for_each_run(
          p,
          [&](const std::string& name) {
            return model::is_routed_expert_tensor(name) ? 2 : tp && model::is_tp_sharded(c, name);
          },
          [&](int kind, int64_t begin, int64_t end) {
            (kind == 2   ? experts
             : kind == 1 ? shards
                         : whole) +=
                ops::sum_squares(p.grad_flat().slice(begin, end - begin), end - begin);
          });
      shards += sum_over_ranks(*model_.expert_parallel().comm, experts);
      squares = whole + (tp ? sum_over_ranks(*model_.tensor_parallel().comm, shards) : shards);
    } else if (model_.tensor_parallel().on()) {  // this rank's shards: summed over the group
      double whole = 0, shards = 0;
      const model::Config& c = model_.config();
      for_each_run(
          p, [&](const std::string& name) { return model::is_tp_sharded(c, name); },
          [&](bool sharded, int64_t begin, int64_t end) {
            (sharded ? shards : whole) +=
                ops::sum_squares(p.grad_flat().slice(begin, end - begin), end - begin);
          });
      squares = whole + sum_over_ranks(*model_.tensor_parallel().comm, shards);
    } else {
      squares = ops::sum_squares(p.grad_flat(), p.total());
    }
    return squares;
  }

  void step(AdamW& opt, double lr) override {
    update(opt, lr, ++step_, grad_scale_, nullptr);
    grad_scale_ = 1.0f;
  }
  void step_gated(AdamW& opt, double lr, const core::View& gate) override {
    update(opt, lr, begin_gated_step(gate, model_.trainable().device(), step_, pending_), 1.0f,
           gate.f64());
    pending_ = true;
  }
  void end_step(bool applied) override { end_gated_step(step_, pending_, applied); }

  // The AdamW update with step count `step`, the gradients scaled by `scale`, or by gate[0] and
  // skipped when gate[1] != 0 (gate: device memory, or nullptr).
  void update(AdamW& opt, double lr, int64_t step, float scale, const double* gate) {
    model::Params& p = model_.trainable();
    if (!have_moments_) alloc_moments();
    const auto& o = opt.options();
    ops::AdamWArgs args;
    args.lr = lr;
    args.beta1 = o.beta1;
    args.beta2 = o.beta2;
    args.eps = o.eps;
    args.step = step;
    args.grad_scale = scale;
    args.gate = gate;
    std::vector<ops::AdamWTensor> ts;
    for (const auto& name : p.names()) {
      const auto& e = p.entry(name);
      const int64_t at = moment_at(name);
      if (at < 0) continue;                                        // another rank's shard (ZeRO)
      if (!model::vision_trains(model_.config(), name)) continue;  // a frozen vision tensor
      ops::AdamWTensor t = p.adamw_tensor(name);  // master (or the lean pair), grad
      t.m = m_.view().slice(at, e.numel);
      t.v = v_.view().slice(at, e.numel);
      t.weight_decay = opt.decays(name) ? o.weight_decay : 0.0;
      ts.push_back(t);
    }
    const model::StateOptions& so = p.options();
    if (so.offload_moments || so.offload_master) {
      ops::adamw_step_offloaded(ts, args, model::adamw_offload(so));
    } else {
      ops::adamw_step_multi(ts, args);
    }
    for (const ZeroGroup& g : groups_)  // every shard's new weights (ZeRO)
      if (g.comm->size() > 1) broadcast_shard_weights(*g.comm, g.shards, p, g.covers);
  }

  void sync_to_host(model::TensorMap& params, AdamW& opt) override {
    sync_weights(params, opt);
    model::TensorMap m = model::zeros_like(params), v = model::zeros_like(params);
    for (auto& [name, t] : m) read_moment(name, false, t.ptr());
    for (auto& [name, t] : v) read_moment(name, true, t.ptr());
    opt.set_state(step_, std::move(m), std::move(v));
  }

  void sync_weights(model::TensorMap& params, AdamW& opt) override {
    if (!masters_apart_) {
      model_.trainable().download(params);
    } else {  // ZeRO with offloaded masters: each tensor from its owner (collective)
      const model::Params& p = model_.trainable();
      for (auto& [name, t] : params) {
        if (p.held_apart(name)) continue;  // another store's (frozen: as loaded)
        const auto& e = p.entry(name);
        DT_CHECK(t.numel() == e.numel, "parameter ", name, " has ", t.numel(),
                 " elements, expected ", e.numel);
        const ZeroGroup& g = group_of(name);
        const int owner = g.shards.owner(e.offset);
        if (owner == g.comm->rank()) p.download_tensor(name, t.ptr());
        broadcast_host(*g.comm, t.ptr(), e.numel, owner);
      }
    }
    opt.set_step_count(step_);
  }
  // ZeRO with offloaded masters: a rank keeps its shards' masters only, so reading a weight is a
  // collective (its owner sends it).
  bool gathers_weights() const override { return masters_apart_; }

  void read_moment(const std::string& name, bool second, float* out) override {
    const model::Params& p = model_.trainable();
    if (p.held_apart(name)) {  // frozen (held apart): no moments, zeros in the checkpoint
      const int64_t n = model_.frozen_params()->entry(name).numel;
      std::fill(out, out + n, 0.f);
      return;
    }
    const auto& e = p.entry(name);
    if (!have_moments_) {  // never stepped (the same on every rank)
      std::fill(out, out + e.numel, 0.f);
      return;
    }
    if (!sharded_) return p.flat_to_host(second ? v_ : m_, name, out);
    // ZeRO: the owner's shard, broadcast to every rank of the tensor's group.
    const ZeroGroup& g = group_of(name);
    const int owner = g.shards.owner(e.offset);
    core::Buffer recv;
    core::View x;
    // Offloaded moments on a GPU travel through a device buffer (the communicator's memory).
    const bool staged = m_.view().device != p.device();
    if (owner == g.comm->rank() && !staged) {
      x = (second ? v_ : m_).view().slice(moment_at(name), e.numel);
    } else {
      recv = core::Buffer(p.device(), m_.view().dtype, {e.numel}, "ZeRO moment being read");
      x = recv.view();
      if (owner == g.comm->rank())
        ops::copy_from_host(x, (second ? v_ : m_).view().slice(moment_at(name), e.numel).data);
    }
    g.comm->broadcast(x, owner);
    moment_to_host(x, out);
  }
  bool sharded() const override { return sharded_; }

 private:
  int zero_stage() const { return sharded_ ? zero_.stage : 0; }

  // Where a tensor's moments are in m_ and v_: its flat offset (not sharded), its place among
  // this rank's runs (ZeRO), or -1 (another rank's shard).
  int64_t moment_at(const std::string& name) {
    if (!sharded_) return model_.trainable().entry(name).offset;
    const auto it = held_.find(name);
    return it == held_.end() ? -1 : it->second;
  }
  // ZeRO's sharding: the data-parallel ranks (every tensor; with expert parallelism every tensor
  // but the routed-expert slices) and, with expert parallelism, the ranks holding the same
  // experts (the slices; Megatron's and DeepSpeed's expert-data-parallel group).
  struct ZeroGroup {
    dist::Comm* comm = nullptr;
    ZeroShards shards;
    TensorFilter covers;  // empty: every tensor
  };
  const ZeroGroup& group_of(const std::string& name) const {
    for (const ZeroGroup& g : groups_)
      if (!g.covers || g.covers(name)) return g;
    core::fail("internal: ZeRO: no group holds ", name);
  }

  // The moments of every parameter, laid out as the parameters, or of this rank's shards (ZeRO;
  // at least one element, so a rank owning nothing still has buffers).
  void alloc_moments() {
    model::Params& p = model_.trainable();
    const core::Device dev = p.device();
    core::allocator(dev).set_oom_hint(p.state_hint());
    const core::DType dt = p.options().moments;  // f32 or bf16 (training.moments)
    const int64_t n = std::max<int64_t>(1, sharded_ ? held_total_ : p.total());
    if (p.options().offload_moments) {  // pinned host memory, streamed through the device
      m_ = core::Buffer::pinned_host(dt, {n}, "offloaded AdamW exp_avg");
      v_ = core::Buffer::pinned_host(dt, {n}, "offloaded AdamW exp_avg_sq");
    } else {
      m_ = core::Buffer(dev, dt, {n}, sharded_ ? "AdamW exp_avg (ZeRO shard)" : "AdamW exp_avg");
      v_ = core::Buffer(dev, dt, {n},
                        sharded_ ? "AdamW exp_avg_sq (ZeRO shard)" : "AdamW exp_avg_sq");
    }
    ops::zero(m_);
    ops::zero(v_);
    have_moments_ = true;
  }

  // A resumed run's full host moments: this rank's shard into flat (ZeRO).
  void load_shard(const model::TensorMap& host, const core::Buffer& flat, const char* what) {
    const model::Params& p = model_.trainable();
    for (const auto& name : p.names()) {
      const auto& e = p.entry(name);
      const int64_t at = moment_at(name);
      if (at < 0) continue;
      const auto it = host.find(name);
      DT_CHECK(it != host.end(), what, ": no ", name);
      DT_CHECK(it->second.numel() == e.numel, what, " ", name, " has ", it->second.numel(),
               " elements, expected ", e.numel);
      moment_from_host(it->second.ptr(), flat.view().slice(at, e.numel));
    }
  }

  model::Model model_;
  std::unique_ptr<Zero3Store> base_;  // LoRA under ZeRO 3: the frozen base's shards
  ZeroSetup zero_;
  bool sharded_ = false, have_moments_ = false;
  bool masters_apart_ = false;           // ZeRO with offloaded masters: this rank's shards' only
  std::vector<ZeroGroup> groups_;        // ZeRO on several ranks
  std::map<std::string, int64_t> held_;  // ZeRO: the tensors whose moments this rank holds
  int64_t held_total_ = 0;               // and the elements of its runs
  core::Buffer m_, v_;
  int64_t step_ = 0;
  float grad_scale_ = 1.0f;
  bool pending_ = false;  // step_gated ran, end_step not yet
};

template <typename Source>
std::unique_ptr<Engine> make(const std::string& device, const std::string& precision,
                             const model::Config& c, const Source& params, const AdamW* opt,
                             bool recompute, const model::StateOptions& state,
                             const model::LoraSetup* lora, const ZeroSetup& zero) {
  DT_CHECK(device == "cpu" || device == "cuda", "unknown device '", device, "' (use cpu or cuda)");
  DT_CHECK(precision == "bf16" || precision == "fp32", "unknown precision '", precision,
           "' (use bf16 or fp32)");
  const bool cuda = device == "cuda";
  const core::DType dt = cuda && precision == "bf16" ? core::DType::bf16 : core::DType::f32;
  const core::Device dev = cuda ? core::Device::cuda : core::Device::cpu;
  if (zero.stage == 3 && lora) {
    // The frozen base sharded and gathered per unit; the adapters' moments sharded as stage 1
    // does (their gradients all-reduced: small, and whole for score --grad-out).
    model::StateOptions base = state;
    base.gathered = true;
    ZeroSetup adapters = zero;
    adapters.stage = 1;
    auto e = std::make_unique<ModelEngine>(dev, dt, c, params, opt, base, lora, adapters);
    e->shard_frozen_base(c, params, zero);
    e->set_recompute(recompute);
    return e;
  }
  if (zero.stage == 3) {
    if constexpr (std::is_same_v<Source, model::ParamSource>)
      return make_zero3_engine(dev, dt, c, nullptr, &params, opt, recompute, state, zero);
    else
      return make_zero3_engine(dev, dt, c, &params, nullptr, opt, recompute, state, zero);
  }
  auto e = std::make_unique<ModelEngine>(dev, dt, c, params, opt, state, lora, zero);
  e->set_recompute(recompute);
  return e;
}
}  // namespace

std::unique_ptr<Engine> make_engine(const std::string& device, const std::string& precision,
                                    const model::Config& c, model::TensorMap& params,
                                    const AdamW* opt, bool recompute,
                                    const model::StateOptions& state, const model::LoraSetup* lora,
                                    const ZeroSetup& zero) {
  return make(device, precision, c, params, opt, recompute, state, lora, zero);
}

std::unique_ptr<Engine> make_engine(const std::string& device, const std::string& precision,
                                    const model::Config& c, const model::ParamSource& params,
                                    const AdamW* opt, bool recompute,
                                    const model::StateOptions& state, const model::LoraSetup* lora,
                                    const ZeroSetup& zero) {
  return make(device, precision, c, params, opt, recompute, state, lora, zero);
}

}  // namespace deltatron::train
