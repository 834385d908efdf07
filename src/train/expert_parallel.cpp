// Expert parallelism: groups, expert slices and their gathering (expert_parallel.h).
#include "train/expert_parallel.h"

#include <cstring>

#include "core/buffer.h"
#include "core/error.h"
#include "ops/tensor.h"

namespace deltatron::train {

ExpertGroups setup_expert_groups(const Parallel& par, int64_t ep, const model::Config& c,
                                 const std::string& where) {
  ExpertGroups g;
  if (ep == 1) return g;
  DT_CHECK(ep > 1, where, ": the expert-parallel size must be >= 1, got ", ep);
  DT_CHECK(c.is_moe(), where, ": expert parallelism (", ep, ") needs a MoE model");
  DT_CHECK(c.num_experts % ep == 0, where, ": expert parallelism over ", ep, " ranks needs ",
           "num_experts (", c.num_experts, ") divisible by ", ep);
  DT_CHECK(par.size() % ep == 0, where, ": expert parallelism over ", ep,
           " ranks needs a multiple of ", ep, " data-parallel ranks (the job's ranks / tp), there ",
           par.size() == 1 ? "is " : "are ", par.size());
  const int r = par.rank();
  g.group = par.comm->split(int(r / ep), r);
  g.same_experts = par.comm->split(int(r % ep), r);
  g.model.comm = g.group.get();
  g.model.num_local = c.num_experts / ep;
  g.model.first = int64_t(g.group->rank()) * g.model.num_local;
  return g;
}

void keep_local_experts(model::TensorMap& params, const ExpertGroups& g) {
  if (!g.on()) return;
  const int64_t El = g.model.num_local, e0 = g.model.first;
  for (auto& [name, t] : params) {
    if (!model::is_routed_expert_tensor(name)) continue;
    const int64_t E = t.shape.at(0), per = t.numel() / E;
    DT_CHECK(E == El * g.group->size(), name, ": ", E, " experts, expected ", El * g.group->size());
    core::Shape s = t.shape;
    s[0] = El;
    core::Tensor local(s);
    std::memcpy(local.ptr(), t.ptr() + e0 * per, size_t(El * per) * sizeof(float));
    t = std::move(local);
  }
}

void keep_local_experts(model::LoraSetup& s, const ExpertGroups& g) {
  if (!g.on()) return;
  keep_local_experts(s.adapters, g);
  s.local_experts = g.model.num_local;
}

void gather_experts(model::TensorMap& tensors, const ExpertGroups& g, core::Device dev) {
  if (!g.on()) return;
  const int64_t Q = g.group->size();
  for (auto& [name, t] : tensors) {
    if (!model::is_routed_expert_tensor(name)) continue;
    const int64_t n = t.numel();
    core::Shape s = t.shape;
    s[0] *= Q;
    core::Tensor full(s);
    if (dev == core::Device::cpu) {
      g.group->all_gather(core::View::of(t), core::View::of(full));
    } else {
      core::Buffer in(dev, core::DType::f32, {n}, "expert slice");
      core::Buffer out(dev, core::DType::f32, {n * Q}, "gathered experts");
      ops::copy_from_host(in, t.ptr());
      g.group->all_gather(in, out);
      ops::copy_to_host(out, full.ptr());
    }
    t = std::move(full);
  }
}

void keep_local_experts(AdamW& opt, const model::TensorMap& local_params, const ExpertGroups& g) {
  if (!g.on()) return;
  AdamW local(local_params, opt.options());
  if (opt.step_count() > 0) {  // resumed: the checkpoint's moments
    model::TensorMap m = opt.exp_avg(), v = opt.exp_avg_sq();
    keep_local_experts(m, g);
    keep_local_experts(v, g);
    local.set_state(opt.step_count(), std::move(m), std::move(v));
  }
  opt = std::move(local);
}

GatheredState gather_state(Engine& engine, const model::TensorMap& local_params, AdamW& opt,
                           const ExpertGroups& g, core::Device dev) {
  GatheredState s;
  s.weights = model::zeros_like(local_params);
  engine.sync_weights(s.weights, opt);
  s.step = opt.step_count();
  s.exp_avg = model::zeros_like(local_params);
  s.exp_avg_sq = model::zeros_like(local_params);
  for (auto& [name, t] : s.exp_avg) engine.read_moment(name, false, t.ptr());
  for (auto& [name, t] : s.exp_avg_sq) engine.read_moment(name, true, t.ptr());
  gather_experts(s.weights, g, dev);
  gather_experts(s.exp_avg, g, dev);
  gather_experts(s.exp_avg_sq, g, dev);
  return s;
}

namespace {

class SavedStateEngine final : public Engine {
 public:
  explicit SavedStateEngine(const GatheredState& s) : s_(s) {}
  model::PackLoss fwd_bwd(const data::Pack&, bool, const model::ModelOptions&) override {
    no("fwd_bwd");
  }
  void count_routes(const data::Pack&, model::GlobalRouterCounts&) override { no("count_routes"); }
  std::vector<std::string> moe_prefixes() const override { no("moe_prefixes"); }
  void zero_grads() override { no("zero_grads"); }
  void reduce_grads(dist::Comm&, dist::Comm*) override { no("reduce_grads"); }
  bool sharded() const override { return false; }
  void set_expert_parallel(const model::ExpertParallel&) override { no("set_expert_parallel"); }
  void set_tensor_parallel(const model::TensorParallel&) override { no("set_tensor_parallel"); }
  void set_recompute_selective(bool) override {}
  void grads_to_host(model::TensorMap&) override { no("grads_to_host"); }
  double clip(double) override { no("clip"); }
  void step(AdamW&, double) override { no("step"); }
  void grad_squares(const core::View&) override { no("grad_squares"); }
  void step_gated(AdamW&, double, const core::View&) override { no("step_gated"); }
  void end_step(bool) override { no("end_step"); }
  void sync_to_host(model::TensorMap& params, AdamW& opt) override {
    sync_weights(params, opt);
    opt.set_state(s_.step, s_.exp_avg, s_.exp_avg_sq);
  }
  void sync_weights(model::TensorMap& params, AdamW& opt) override {
    for (auto& [name, t] : params) {
      const core::Tensor& w = s_.weights.at(name);
      DT_CHECK(w.shape == t.shape, "saved state: ", name, " has another shape");
      std::memcpy(t.ptr(), w.ptr(), size_t(t.numel()) * sizeof(float));
    }
    opt.set_step_count(s_.step);
  }
  void read_moment(const std::string& name, bool second, float* out) override {
    const core::Tensor& m = (second ? s_.exp_avg_sq : s_.exp_avg).at(name);
    std::memcpy(out, m.ptr(), size_t(m.numel()) * sizeof(float));
  }

 private:
  [[noreturn]] static void no(const char* what) {
    core::fail("internal: a saved training state cannot ", what);
  }
  const GatheredState& s_;
};

}  // namespace

std::unique_ptr<Engine> saved_state_engine(const GatheredState& s) {
  return std::make_unique<SavedStateEngine>(s);
}

}  // namespace deltatron::train
