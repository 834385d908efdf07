// The Qwen3.5 model on one GPU: parameters resident on the device, forward + explicit backward
// over a pack with the same objective and per-sample results as model::model_fwd_bwd.
#pragma once

#include <memory>

#include "data/pack.h"
#include "gpu/params.h"
#include "model/config.h"
#include "model/model.h"

namespace deltatron::gpu {

class Model {
 public:
  // Uploads `host_params`; dt is the compute / activation storage type (bf16, or f32 for the
  // debug mode). Checks the GPU (Hopper) first.
  Model(const model::Config& c, const model::TensorMap& host_params, DType dt);

  // Same contract as model::model_fwd_bwd: with_grads adds the objective's parameter gradients
  // into params().g(...) (fp32; zero them with params().zero_grads()).
  model::PackLoss fwd_bwd(const data::Pack& pack, bool with_grads,
                          const model::ModelOptions& opt = {});
  // model::model_count_routes on the GPU.
  void count_routes(const data::Pack& pack, model::GlobalRouterCounts& counts);

  // Activation recomputation per layer: the forward keeps only each layer's input, the backward
  // reruns the layer's forward first (about one extra trunk forward; bitwise-equal gradients).
  void set_recompute(bool on) { recompute_ = on; }

  Params& params() { return params_; }
  const model::Config& config() const { return c_; }

 private:
  model::Config c_;
  Params params_;
  bool recompute_ = false;
};

}  // namespace deltatron::gpu
