// The engine: model::Model on one device, its AdamW moments beside the parameters (one fused
// step over all tensors, a deterministic global gradient norm); host copies only when asked.
// The state's storage (training.master, training.moments) is the parameter store's
// (model::StateOptions); the moments here are f32 or bf16 buffers laid out like the parameters.
#include "train/engine.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "ops/adamw.h"
#include "ops/tensor.h"

namespace deltatron::train {

namespace {

// Calls f(expert, begin, end) for the runs of consecutive tensors of one kind (routed-expert
// slices or not) of the store, [begin, end) in the flat buffers (alignment gaps included).
template <typename F>
void for_each_expert_run(const model::Params& p, F&& f) {
  const std::vector<std::string>& names = p.names();
  for (size_t i = 0; i < names.size();) {
    const bool expert = model::is_routed_expert_tensor(names[i]);
    const int64_t begin = p.entry(names[i]).offset;
    int64_t end = begin;  // the run's tensors lie in order in the store
    for (; i < names.size() && model::is_routed_expert_tensor(names[i]) == expert; ++i) {
      const auto& e = p.entry(names[i]);
      DT_CHECK(e.offset >= end, "gradient store: ", names[i], " is out of order");
      end = e.offset + e.numel;
    }
    f(expert, begin, end);
  }
}

// x summed over the ranks of c (through a device buffer on a CUDA communicator).
double sum_over(dist::Comm& c, double x) {
  if (c.size() == 1) return x;
  if (c.device() == core::Device::cpu) {
    c.all_reduce(core::View(&x, core::DType::f64, core::Device::cpu, {1}), dist::ReduceOp::sum);
    return x;
  }
  core::Buffer b(c.device(), core::DType::f64, {1}, "gradient norm part");
  ops::copy_from_host(b, &x);
  c.all_reduce(b, dist::ReduceOp::sum);
  ops::copy_to_host(b, &x);
  return x;
}

class ModelEngine final : public Engine {
 public:
  template <typename Source>
  ModelEngine(core::Device dev, core::DType dt, const model::Config& c, const Source& params,
              const AdamW* opt, const model::StateOptions& state, const model::LoraSetup* lora)
      : model_(dev, dt, c, params, state, lora) {
    if (!opt) return;  // scoring (or the bench): the moments come with the first step
    alloc_moments();
    if (opt->step_count() > 0) {  // resumed: moments from the checkpoint
      step_ = opt->step_count();
      model_.trainable().to_flat(opt->exp_avg(), m_, "AdamW exp_avg");
      model_.trainable().to_flat(opt->exp_avg_sq(), v_, "AdamW exp_avg_sq");
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
  std::vector<std::string> moe_prefixes() const override { return model_.moe_prefixes(); }
  void zero_grads() override { model_.trainable().zero_grads(); }
  void all_reduce_grads(dist::Comm& comm, dist::Comm* experts) override {
    const model::Params& p = model_.trainable();
    if (!model_.expert_parallel().on()) {
      if (comm.size() > 1) comm.all_reduce(p.grad_flat(), dist::ReduceOp::sum);
      return;
    }
    // Each run of one kind over its communicator; every rank walks the same names.
    for_each_expert_run(p, [&](bool expert, int64_t begin, int64_t end) {
      dist::Comm* c = expert ? experts : &comm;
      if (c && c->size() > 1 && end > begin)
        c->all_reduce(p.grad_flat().slice(begin, end - begin), dist::ReduceOp::sum);
    });
  }
  void set_expert_parallel(const model::ExpertParallel& ep) override {
    model_.set_expert_parallel(ep);
  }
  void grads_to_host(model::TensorMap& grads) override { model_.trainable().download_grads(grads); }

  double clip(double max_norm) override {
    const model::Params& p = model_.trainable();
    double sq = 0;
    if (!model_.expert_parallel().on()) {
      sq = ops::sum_squares(p.grad_flat(), p.total());
    } else {  // this rank's expert slices are a part of the model's: summed over the group
      double dense = 0, experts = 0;
      for_each_expert_run(p, [&](bool expert, int64_t begin, int64_t end) {
        (expert ? experts : dense) +=
            ops::sum_squares(p.grad_flat().slice(begin, end - begin), end - begin);
      });
      sq = dense + sum_over(*model_.expert_parallel().comm, experts);
    }
    const double norm = std::sqrt(sq);
    grad_scale_ = 1.0f;
    if (std::isfinite(norm) && max_norm > 0) {
      const double coef = max_norm / (norm + 1e-6);
      if (coef < 1.0) grad_scale_ = static_cast<float>(coef);
    }
    return norm;
  }

  void step(AdamW& opt, double lr) override {
    model::Params& p = model_.trainable();
    if (m_.numel() == 0) alloc_moments();
    const auto& o = opt.options();
    ops::AdamWArgs args;
    args.lr = lr;
    args.beta1 = o.beta1;
    args.beta2 = o.beta2;
    args.eps = o.eps;
    args.step = ++step_;
    args.grad_scale = grad_scale_;
    std::vector<ops::AdamWTensor> ts;
    for (const auto& name : p.names()) {
      const auto& e = p.entry(name);
      ops::AdamWTensor t = p.adamw_tensor(name);  // master (or the lean pair), grad
      t.m = m_.view().slice(e.offset, e.numel);
      t.v = v_.view().slice(e.offset, e.numel);
      t.weight_decay = opt.decays(name) ? o.weight_decay : 0.0;
      ts.push_back(t);
    }
    const model::StateOptions& so = p.options();
    if (so.offload_moments || so.offload_master) {
      ops::AdamWOffload off;
      off.moments = so.offload_moments;
      off.master = so.offload_master;
      ops::adamw_step_offloaded(ts, args, off);
    } else {
      ops::adamw_step_multi(ts, args);
    }
    grad_scale_ = 1.0f;
  }

  void sync_to_host(model::TensorMap& params, AdamW& opt) override {
    model_.trainable().download(params);
    model::TensorMap m = model::zeros_like(params), v = model::zeros_like(params);
    for (auto& [name, t] : m) read_moment(name, false, t.ptr());
    for (auto& [name, t] : v) read_moment(name, true, t.ptr());
    opt.set_state(step_, std::move(m), std::move(v));
  }

  void sync_weights(model::TensorMap& params, AdamW& opt) override {
    model_.trainable().download(params);
    opt.set_step_count(step_);
  }

  void read_moment(const std::string& name, bool second, float* out) override {
    const model::Params& p = model_.trainable();
    if (m_.numel() == 0) {  // never stepped
      std::fill(out, out + p.entry(name).numel, 0.f);
      return;
    }
    p.flat_to_host(second ? v_ : m_, name, out);
  }

 private:
  void alloc_moments() {
    model::Params& p = model_.trainable();
    const core::Device dev = p.device();
    core::allocator(dev).set_oom_hint(p.state_hint());
    const core::DType dt = p.options().moments;  // f32 or bf16 (training.moments)
    if (p.options().offload_moments) {           // pinned host memory, streamed through the device
      m_ = core::Buffer::pinned_host(dt, {p.total()}, "offloaded AdamW exp_avg");
      v_ = core::Buffer::pinned_host(dt, {p.total()}, "offloaded AdamW exp_avg_sq");
    } else {
      m_ = core::Buffer(dev, dt, {p.total()}, "AdamW exp_avg");
      v_ = core::Buffer(dev, dt, {p.total()}, "AdamW exp_avg_sq");
    }
    ops::zero(m_);
    ops::zero(v_);
  }

  model::Model model_;
  core::Buffer m_, v_;
  int64_t step_ = 0;
  float grad_scale_ = 1.0f;
};

template <typename Source>
std::unique_ptr<Engine> make(const std::string& device, const std::string& precision,
                             const model::Config& c, const Source& params, const AdamW* opt,
                             bool recompute, const model::StateOptions& state,
                             const model::LoraSetup* lora) {
  DT_CHECK(device == "cpu" || device == "cuda", "unknown device '", device, "' (use cpu or cuda)");
  DT_CHECK(precision == "bf16" || precision == "fp32", "unknown precision '", precision,
           "' (use bf16 or fp32)");
  const bool cuda = device == "cuda";
  const core::DType dt = cuda && precision == "bf16" ? core::DType::bf16 : core::DType::f32;
  auto e = std::make_unique<ModelEngine>(cuda ? core::Device::cuda : core::Device::cpu, dt, c,
                                         params, opt, state, lora);
  e->set_recompute(recompute);
  return e;
}
}  // namespace

std::unique_ptr<Engine> make_engine(const std::string& device, const std::string& precision,
                                    const model::Config& c, model::TensorMap& params,
                                    const AdamW* opt, bool recompute,
                                    const model::StateOptions& state,
                                    const model::LoraSetup* lora) {
  return make(device, precision, c, params, opt, recompute, state, lora);
}

std::unique_ptr<Engine> make_engine(const std::string& device, const std::string& precision,
                                    const model::Config& c, const model::ParamSource& params,
                                    const AdamW* opt, bool recompute,
                                    const model::StateOptions& state,
                                    const model::LoraSetup* lora) {
  return make(device, precision, c, params, opt, recompute, state, lora);
}

}  // namespace deltatron::train
