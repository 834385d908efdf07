// The CPU engine, and the switch to the registered CUDA one (src/gpu/engine.cpp).
#include "train/engine.h"

#include "core/error.h"

namespace deltatron::train {

namespace {

class CpuEngine final : public Engine {
 public:
  CpuEngine(const model::Config& c, model::TensorMap& params) : c_(c), params_(params) {}
  model::PackLoss fwd_bwd(const data::Pack& pack, bool with_grads,
                          const model::ModelOptions& opt) override {
    if (with_grads && grads_.empty()) grads_ = model::zeros_like(params_);
    return model::model_fwd_bwd(core::Device::cpu, c_, params_, pack,
                                with_grads ? &grads_ : nullptr, opt);
  }
  void count_routes(const data::Pack& pack, model::GlobalRouterCounts& counts) override {
    model::model_count_routes(core::Device::cpu, c_, params_, pack, counts);
  }
  void zero_grads() override { grads_ = model::zeros_like(params_); }
  void grads_to_host(model::TensorMap& grads) override {
    if (grads_.empty()) grads_ = model::zeros_like(params_);
    for (auto& [name, t] : grads) t = model::weight(grads_, name);
  }
  double clip(double max_norm) override { return clip_grad_norm(grads_, max_norm); }
  void step(AdamW& opt, double lr) override { opt.step(params_, grads_, lr); }
  void sync_to_host(model::TensorMap&, AdamW&) override {}

 private:
  const model::Config& c_;
  model::TensorMap& params_;
  model::TensorMap grads_;
};

CudaEngineFactory g_cuda_engine = nullptr;

}  // namespace

void register_cuda_engine(CudaEngineFactory make) { g_cuda_engine = make; }

std::unique_ptr<Engine> make_engine(const std::string& device, const std::string& precision,
                                    const model::Config& c, model::TensorMap& params,
                                    const AdamW* opt, bool recompute) {
  if (device == "cpu") return std::make_unique<CpuEngine>(c, params);
  DT_CHECK(device == "cuda", "unknown device '", device, "' (use cpu or cuda)");
  DT_CHECK(precision == "bf16" || precision == "fp32", "unknown precision '", precision,
           "' (use bf16 or fp32)");
  DT_CHECK(g_cuda_engine != nullptr,
           "--device cuda: this build has no CUDA backend (configure with nvcc available and "
           "-DDT_CUDA=ON); use --device cpu");
  return g_cuda_engine(precision == "fp32", c, params, opt, recompute);
}

}  // namespace deltatron::train
