// AdamW with fp32 moments and name-based weight-decay groups; global gradient-norm clipping.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/weights.h"

namespace deltatron::train {

using model::TensorMap;

// Says whether the parameter `name` of shape `shape` gets weight decay.
using DecayPredicate = std::function<bool(const std::string& name, const core::Shape& shape)>;

// The default grouping. No weight decay for:
//  - tensors with at most one dimension: every norm weight (input_layernorm, post_attention_
//    layernorm, self_attn.q_norm/k_norm, linear_attn.norm, the final norm, the MTP norms), and
//    linear_attn.A_log / linear_attn.dt_bias;
//  - names ending in "A_log" or "dt_bias" whatever their shape;
//  - names ending in "embed_tokens.weight" unless decay_embeddings. With tied embeddings the
//    output projection is that same tensor (there is no "lm_head.weight" parameter), so it
//    follows; an untied "lm_head.weight" is a plain matrix and decays.
// Everything else (projections, conv1d, router, experts, mtp.fc) decays.
bool default_weight_decay(const std::string& name, const core::Shape& shape, bool decay_embeddings);

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;      // applied to the decaying group only
  bool decay_embeddings = false;  // see default_weight_decay
  // Replaces default_weight_decay when set (decay_embeddings is then unused).
  DecayPredicate decay_predicate;
  // training.moments = "bf16": the engine keeps the moments in bf16 (model::StateOptions) and a
  // checkpoint stores them as BF16 (train_state.h). The host tensors below stay f32 (holding bf16
  // values exactly); step() on host tensors keeps fp32 moments and refuses this option.
  bool bf16_moments = false;
};

// AdamW as torch.optim.AdamW (single-tensor path, amsgrad=False, maximize=False), with one step
// counter t shared by every parameter. For each parameter p with gradient g, step t (1-based,
// incremented before the update) and learning rate lr:
//   p   *= 1 - lr * wd                               (wd = weight_decay, or 0 if not decaying)
//   m    = beta1 * m + (1 - beta1) * g                (exp_avg, fp32)
//   v    = beta2 * v + (1 - beta2) * g * g            (exp_avg_sq, fp32)
//   p   -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// which is p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p) with p the value before the step.
// Scalars (bias corrections, step size, decay factor) are computed in double and rounded to
// float once; the element updates run in float32 in the order above, elementwise, so results
// do not depend on the number of OpenMP threads.
class AdamW {
 public:
  // Zero moments shaped like params (allocated when first needed); the decay group of every name
  // is decided here.
  AdamW(const TensorMap& params, AdamWOptions opt);

  // One update of every parameter. params and grads must hold exactly the optimizer's names
  // with the same shapes (a one-line core::Error names the first mismatch). The caller skips
  // the call when the gradient norm is not finite (see clip_grad_norm).
  void step(TensorMap& params, const TensorMap& grads, double lr);

  const AdamWOptions& options() const { return opt_; }
  int64_t step_count() const { return step_; }  // updates done so far (t of the last update)
  bool decays(const std::string& name) const;   // throws for a name the optimizer lacks
  std::vector<std::string> names() const;       // sorted
  const std::map<std::string, core::Shape>& shapes() const { return shapes_; }  // by name
  // The host moments, allocated (zero) on first use: an engine keeps its own on its device, so a
  // run that never reads these (no resume, no checkpoint yet) holds no host copy of them.
  const TensorMap& exp_avg() const;
  const TensorMap& exp_avg_sq() const;

  // Replaces step count and moments (resume). Names and shapes must equal the current ones;
  // on error nothing changes.
  void set_state(int64_t step, TensorMap exp_avg, TensorMap exp_avg_sq);
  // Replaces the step count alone (an engine that keeps the moments: Engine::sync_weights); the
  // host moments, if any, are then stale and must not be read.
  void set_step_count(int64_t step);
  // Frees the host moments (an engine has taken them); reading them afterwards gives zeros.
  void release_host_moments();

 private:
  AdamWOptions opt_;
  int64_t step_ = 0;
  void allocate_moments() const;
  std::map<std::string, core::Shape> shapes_;
  mutable TensorMap m_, v_;
  mutable bool moments_allocated_ = false;
  std::map<std::string, bool> decay_;
};

// Global L2 norm sqrt(sum over tensors and elements of g^2), accumulated in double. The sum is
// taken over fixed blocks of elements in name order and the block sums are added in order, so
// the value is the same for any number of OpenMP threads.
double grad_norm(const TensorMap& grads);

// Returns the pre-clip global norm (grad_norm). When max_norm > 0 and the norm is finite, every
// gradient is multiplied by min(1, max_norm / (norm + 1e-6)) (torch.nn.utils.clip_grad_norm_'s
// coefficient, rounded to float). A NaN or infinite norm is returned as is and the gradients are
// left untouched: the trainer must skip the optimizer step. max_norm <= 0: no clipping.
double clip_grad_norm(TensorMap& grads, double max_norm);

}  // namespace deltatron::train
