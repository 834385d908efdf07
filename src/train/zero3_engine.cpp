// The engine of ZeRO 3 (zero3.h): model::Model over a gathered parameter store whose units a
// Zero3Store gathers while they run; the optimizer steps this rank's pieces, the gradient norm
// is the sum of the shards' squares, and every read of a whole tensor is a collective.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "model/tensor_parallel.h"
#include "ops/adamw.h"
#include "ops/tensor.h"
#include "train/zero.h"
#include "train/zero3.h"

namespace deltatron::train {

namespace {

// The model's store: gathered (its views bound by the shard store), no offloaded state (the shard
// store keeps this rank's share of it).
model::StateOptions gathered(model::StateOptions s) {
  s.gathered = true;
  s.offload_moments = s.offload_master = false;
  return s;
}

class Zero3Engine final : public Engine {
 public:
  Zero3Engine(core::Device dev, core::DType dt, const model::Config& c,
              const model::TensorMap* params, const model::ParamSource* source, const AdamW* opt,
              const model::StateOptions& state, dist::Comm& comm, dist::Comm* experts)
      : model_(params ? model::Model(dev, dt, c, *params, gathered(state))
                      : model::Model(dev, dt, c, *source, gathered(state))),
        store_(model_.params(), c, comm, experts, model::adamw_offload(state)),
        moments_(state.moments) {
    model_.set_param_gather(&store_);
    // The tensors the model holds apart (a frozen vision tower) are its own, replicated.
    const model::Params& p = model_.params();
    if (params) {
      for (const auto& [name, t] : *params)
        if (!p.held_apart(name)) store_.load_weight(name, t.ptr(), t.numel());
    } else {
      for (const model::ParamSpec& s : source->specs) {
        if (p.held_apart(s.name)) continue;
        const core::Tensor t = source->make(s);
        store_.load_weight(s.name, t.ptr(), t.numel());  // the whole tensor or the piece
      }
    }
    store_.finish_load();
    if (!opt) return;  // scoring: no moments
    store_.alloc_moments(moments_);
    step_ = opt->step_count();
    if (step_ == 0) return;
    for (const auto& [what, host] :
         {std::pair{false, &opt->exp_avg()}, std::pair{true, &opt->exp_avg_sq()}}) {
      for (const auto& t : store_.layout().tensors) {  // resumed: this rank's pieces
        const auto it = host->find(t.name);
        DT_CHECK(it != host->end(), "AdamW ", what ? "exp_avg_sq" : "exp_avg", ": no ", t.name);
        // The whole tensor, or this rank's piece alone (read so: local_slices.h, zero3_slices).
        store_.load_moment(t.name, what, it->second.ptr(), it->second.numel());
      }
    }
  }

  model::PackLoss fwd_bwd(const data::Pack& pack, bool with_grads,
                          const model::ModelOptions& opt) override {
    return model_.fwd_bwd(pack, with_grads, opt);  // each unit's gradient reduced as it ends
  }
  void count_routes(const data::Pack& pack, model::GlobalRouterCounts& counts) override {
    model_.count_routes(pack, counts);
  }
  void set_recompute(bool on) { model_.set_recompute(on); }
  void set_recompute_selective(bool on) override { model_.set_recompute_selective(on); }
  std::vector<std::string> moe_prefixes() const override { return model_.moe_prefixes(); }
  void zero_grads() override { store_.zero_grads(); }
  void reduce_grads(dist::Comm& comm, dist::Comm* experts) override {
    // Already summed: every unit's gradient is reduce-scattered when the model releases it
    // (an expert unit's over the ranks holding the same experts).
    DT_CHECK(&comm == &store_.comm() &&
                 (experts == store_.experts() ||
                  (store_.experts() == nullptr && (experts == nullptr || experts->size() == 1))),
             "ZeRO 3: gradients reduced over another communicator");
  }
  void set_expert_parallel(const model::ExpertParallel& ep) override {
    DT_CHECK(store_.experts() != nullptr,
             "internal: expert parallelism with ZeRO 3 needs the engine made with the "
             "same-experts communicator (ZeroSetup::experts)");
    model_.set_expert_parallel(ep);
  }
  void set_tensor_parallel(const model::TensorParallel& tp) override {
    // The store was made over the data-parallel ranks holding the same tp slice
    // (ZeroSetup::comm): its units are this rank's tp-local tensors; with expert parallelism
    // its expert units over those of them holding the same experts (ZeroSetup::experts).
    model_.set_tensor_parallel(tp);
    tp_ = tp;
  }
  void grads_to_host(model::TensorMap& grads) override {  // collective
    for (auto& [name, t] : grads) {
      if (apart(name))
        t.zero();  // frozen: no gradient
      else
        store_.read(name, Zero3Store::Part::grad, t.ptr());
    }
  }

  double clip(double max_norm) override {
    const double norm = std::sqrt(grad_squares_host());
    grad_scale_ = clip_scale(norm, max_norm);
    return norm;
  }
  void grad_squares(const core::View& out) override {
    const core::Buffer& g = store_.grad();
    if (store_.comm().size() == 1 && !tp_.on())
      return ops::sum_squares_to(g, g.numel(), out);  // no host read
    const double squares = grad_squares_host();       // the layouts' sums over ranks (host values)
    ops::copy_from_host(out, &squares);
  }
  // The gradient's squares over the whole model (collective). Every element is in one rank's
  // shard: the data-parallel ranks partition the replicated units, and each expert slice's units
  // are partitioned among the ranks holding it.
  double grad_squares_host() {
    const core::Buffer& g = store_.grad();  // padding and gaps hold zeros
    if (!tp_.on()) return sum_over_ranks(store_.comm(), ops::sum_squares(g, g.numel()));
    // This rank's tp-local tensors: the replicated ones' squares (the same on every rank of the
    // tp group) over the data-parallel ranks, the shards' over them and the tp group.
    double whole = 0, shards = 0;
    for (const Zero3Store::Piece& pc : store_.pieces()) {
      const int64_t n = pc.t.grad.numel();
      (model::is_tp_sharded(model_.config(), store_.layout().tensors[pc.tensor].name) ? shards
                                                                                      : whole) +=
          ops::sum_squares(pc.t.grad, n);
    }
    return sum_over_ranks(store_.comm(), whole) +
           sum_over_ranks(*tp_.comm, sum_over_ranks(store_.comm(), shards));
  }

  void step(AdamW& opt, double lr) override {
    update(opt, lr, ++step_, grad_scale_, nullptr);
    grad_scale_ = 1.0f;
  }
  void step_gated(AdamW& opt, double lr, const core::View& gate) override {
    update(opt, lr, begin_gated_step(gate, store_.grad().view().device, step_, pending_), 1.0f,
           gate.f64());
    pending_ = true;
  }
  void end_step(bool applied) override { end_gated_step(step_, pending_, applied); }
  // The AdamW update of this rank's pieces (gate: Engine::step_gated's, or nullptr).
  void update(AdamW& opt, double lr, int64_t step, float scale, const double* gate) {
    if (!store_.has_moments()) store_.alloc_moments(moments_);
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
    for (Zero3Store::Piece& pc : store_.pieces()) {
      pc.t.weight_decay = opt.decays(store_.layout().tensors[pc.tensor].name) ? o.weight_decay : 0;
      ts.push_back(pc.t);
    }
    // This rank's pieces; they stay here (nothing broadcast). Offloaded: the host state staged
    // through the device in chunks, bitwise the same update.
    if (store_.offloaded())
      ops::adamw_step_offloaded(ts, args, store_.offload());
    else
      ops::adamw_step_multi(ts, args);
  }

  void sync_to_host(model::TensorMap& params, AdamW& opt) override {
    sync_weights(params, opt);
    model::TensorMap m = model::zeros_like(params), v = model::zeros_like(params);
    for (auto& [name, t] : m) read_moment(name, false, t.ptr());
    for (auto& [name, t] : v) read_moment(name, true, t.ptr());
    opt.set_state(step_, std::move(m), std::move(v));
  }
  void sync_weights(model::TensorMap& params, AdamW& opt) override {  // collective
    for (auto& [name, t] : params)  // a frozen tensor held apart: the host's, as loaded
      if (!apart(name)) store_.read(name, Zero3Store::Part::weight, t.ptr());
    opt.set_step_count(step_);
  }
  void read_moment(const std::string& name, bool second, float* out) override {
    if (apart(name)) {  // frozen: no moments (zeros in the checkpoint)
      const int64_t n = model_.frozen_params()->entry(name).numel;
      std::fill(out, out + n, 0.f);
      return;
    }
    if (!store_.has_moments()) {  // never stepped (the same on every rank)
      std::fill(out, out + store_.layout().tensor(name).numel, 0.f);
      return;
    }
    store_.read(name, second ? Zero3Store::Part::exp_avg_sq : Zero3Store::Part::exp_avg, out);
  }
  bool sharded() const override { return true; }
  bool gathers_weights() const override { return true; }

 private:
  bool apart(const std::string& name) { return model_.params().held_apart(name); }
  model::Model model_;
  Zero3Store store_;
  model::TensorParallel tp_;  // off unless set_tensor_parallel
  core::DType moments_;
  int64_t step_ = 0;
  float grad_scale_ = 1.0f;
  bool pending_ = false;  // step_gated ran, end_step not yet
};

}  // namespace

std::unique_ptr<Engine> make_zero3_engine(core::Device dev, core::DType dt, const model::Config& c,
                                          const model::TensorMap* params,
                                          const model::ParamSource* source, const AdamW* opt,
                                          bool recompute, const model::StateOptions& state,
                                          const ZeroSetup& zero) {
  DT_CHECK(zero.stage == 3 && zero.comm != nullptr, "ZeRO 3: no communicator");
  DT_CHECK(state.frozen_apart || c.vision_mode == model::VisionMode::off ||
               c.vision_mode == model::VisionMode::full,
           "parallel.zero = 3 steps every tensor of its store: a vision tower that is not trained "
           "must be held apart (model::StateOptions::frozen_apart)");
  auto e = std::make_unique<Zero3Engine>(dev, dt, c, params, source, opt, state, *zero.comm,
                                         zero.experts);
  e->set_recompute(recompute);
  return e;
}

}  // namespace deltatron::train
