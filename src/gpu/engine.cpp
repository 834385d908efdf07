// GPU engine: the model, its gradients and AdamW state resident on one GPU (fused AdamW over
// all tensors, deterministic global gradient norm); host copies only when asked for.
#include "gpu/engine.h"

#include <cmath>
#include <vector>

#include "cuda/adamw.h"
#include "cuda/device.h"
#include "gpu/model.h"

namespace deltatron::gpu {

namespace {

class GpuEngine final : public train::Engine {
 public:
  GpuEngine(bool fp32, const model::Config& c, const model::TensorMap& params,
            const train::AdamW* opt)
      : model_(c, params, fp32 ? DType::f32 : DType::bf16) {
    if (!opt) return;  // scoring (or the bench): the moments come with the first step
    alloc_moments();
    if (opt->step_count() > 0) {  // resumed: moments from the checkpoint
      step_ = opt->step_count();
      model_.params().to_flat(opt->exp_avg(), m_.f32(), "AdamW exp_avg");
      model_.params().to_flat(opt->exp_avg_sq(), v_.f32(), "AdamW exp_avg_sq");
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
  void zero_grads() override { model_.params().zero_grads(); }
  void grads_to_host(model::TensorMap& grads) override { model_.params().download_grads(grads); }

  double clip(double max_norm) override {
    Params& p = model_.params();
    const double norm = std::sqrt(cuda::sum_squares(p.grad_flat(), p.total()));
    grad_scale_ = 1.0f;
    if (std::isfinite(norm) && max_norm > 0) {
      const double coef = max_norm / (norm + 1e-6);
      if (coef < 1.0) grad_scale_ = static_cast<float>(coef);
    }
    return norm;
  }

  void step(train::AdamW& opt, double lr) override {
    Params& p = model_.params();
    if (!m_.get()) alloc_moments();
    const auto& o = opt.options();
    cuda::AdamWStepArgs args;
    args.lr = lr;
    args.beta1 = o.beta1;
    args.beta2 = o.beta2;
    args.eps = o.eps;
    args.step = ++step_;
    args.grad_scale = grad_scale_;
    std::vector<cuda::AdamWTensor> ts;
    for (const auto& name : p.names()) {
      const auto& e = p.entry(name);
      cuda::AdamWTensor t;
      t.master = p.master_flat() + e.offset;
      t.m = m_.f32() + e.offset;
      t.v = v_.f32() + e.offset;
      t.grad = p.grad_flat() + e.offset;
      t.compute_copy =
          p.dt() == DType::f32 ? nullptr : static_cast<char*>(p.compute_flat()) + e.offset * 2;
      t.n = e.numel;
      t.weight_decay = opt.decays(name) ? o.weight_decay : 0.0;
      ts.push_back(t);
    }
    cuda::adamw_step_multi(ts, args, p.dt());
    grad_scale_ = 1.0f;
  }

  void sync_to_host(model::TensorMap& params, train::AdamW& opt) override {
    Params& p = model_.params();
    p.download(params);
    model::TensorMap m = model::zeros_like(params), v = model::zeros_like(params);
    if (m_.get()) {  // else never stepped: the moments stay zero
      p.from_flat(m_.f32(), m, "AdamW exp_avg");
      p.from_flat(v_.f32(), v, "AdamW exp_avg_sq");
    }
    opt.set_state(step_, std::move(m), std::move(v));
  }

 private:
  void alloc_moments() {
    const int64_t n = model_.params().total();
    set_oom_hint(model_.params().state_hint());
    m_ = Buf(n, DType::f32, "AdamW exp_avg");
    v_ = Buf(n, DType::f32, "AdamW exp_avg_sq");
    m_.zero();
    v_.zero();
  }

  Model model_;
  Buf m_, v_;
  int64_t step_ = 0;
  float grad_scale_ = 1.0f;
};

}  // namespace

std::unique_ptr<train::Engine> make_gpu_engine(bool fp32, const model::Config& c,
                                               model::TensorMap& params, const train::AdamW* opt,
                                               bool recompute) {
  auto e = std::make_unique<GpuEngine>(fp32, c, params, opt);
  e->set_recompute(recompute);
  return e;
}

}  // namespace deltatron::gpu
