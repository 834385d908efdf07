// The Qwen3.5 text model over a pack, on one device: forward, losses (LM, MTP, router) and the
// explicit backward; one implementation for every device (the ops dispatch).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/device.h"
#include "data/pack.h"
#include "model/adapters.h"
#include "model/config.h"
#include "model/expert_parallel.h"
#include "model/param_gather.h"
#include "model/params.h"
#include "model/router_loss.h"
#include "model/tensor_parallel.h"
#include "model/weights.h"

namespace deltatron::model {

// What the backward pass differentiates:
//   objective = ce_scale * sum_t CE_t  +  mtp_ce_scale * sum_t CE^mtp_t  +  router_scale * R
// over the pack's label tokens (and MTP label tokens), where R is the sum over MoE layers
// (trunk and MTP) of the router losses configured in `router`.
struct ModelOptions {
  float ce_scale = 1.f;
  float mtp_ce_scale = 0.1f;
  RouterLossOptions router;
  double router_scale = 1.0;
  // Global aux loss: either final counts of the whole step or dataset (global_counts), or
  // running counts (running_counts): this pack's counts are added to them layer by layer before
  // its terms are built (Megatron's accumulation over the micro-batches of a step).
  const GlobalRouterCounts* global_counts = nullptr;
  GlobalRouterCounts* running_counts = nullptr;
  bool want_correct = false;  // fill PackLoss::exact (teacher-forced exact match per sample)
  // LoRA dropout (lora.dropout > 0): the key of this pack's masks (model/proj.h); 0: no dropout
  // (scoring, evaluation). Applied only with gradients.
  uint64_t dropout_key = 0;
  // Training (train::train_step): a core::StepScalars on the model's device ([kStepScalars] f64).
  // When given, the pack's CE and MTP CE sums (per sample, added in pack order) and its router
  // loss are added to its ce_sum, mtp_sum and router_sum on the device, and the host reads
  // nothing: PackLoss's loss_sum and mtp_loss_sum stay empty and router_loss 0 (the token counts
  // are filled). Not with want_correct.
  core::View step_scalars;
};

// Per-sample results of one pack, in pack order (pack.sample_index maps to the dataset).
struct PackLoss {
  std::vector<double> loss_sum;      // summed CE over the sample's label tokens
  std::vector<int64_t> n_tokens;     // number of those tokens
  std::vector<double> mtp_loss_sum;  // summed MTP CE (empty when the model has no MTP)
  std::vector<int64_t> mtp_n_tokens;
  double router_loss = 0.0;  // R for this pack (unscaled)
  // With want_correct: 1 if the argmax prediction is right at every label token of the sample
  // (equivalently, greedy decoding from the sample's prompt reproduces its labels exactly).
  std::vector<uint8_t> exact;
};

// Appends, per sample of the pack in pack order, the sum of loss_N over its label tokens
// (targets_N != -100) and their count: PackLoss's loss_sum / n_tokens (and the MTP pair).
// An empty loss_N appends the counts alone (the sums were added on the device).
void sum_per_sample(const data::Pack& pack, const std::vector<double>& loss_N,
                    const std::vector<int32_t>& targets_N, std::vector<double>& sum,
                    std::vector<int64_t>& count);

// Per sample of the pack in pack order: 1 if correct_N (argmax == target flags, [N]) is nonzero
// at every label token of the sample (targets_N != -100; other rows are not looked at).
std::vector<uint8_t> exact_per_sample(const data::Pack& pack, const std::vector<int32_t>& targets_N,
                                      const std::vector<uint8_t>& correct_N);

class Model {
 public:
  // Copies `host_params` to `dev`; dt is the compute / activation storage type (bf16 on CUDA,
  // f32 for its debug mode; the CPU computes in f32); state: how the parameter store keeps the
  // masters (model/params.h).
  // lora: a LoRA run (model/adapters.h): the base is frozen (its weights alone, no gradients)
  // and the adapters are the trainable parameters (their moments as state.moments); with
  // state.gathered (ZeRO 3) the frozen base is a gathered store (set_param_gather).
  // A vision tower that is not trained (config.vision_mode frozen: the tower and merger; merger:
  // the tower without the merger) is held apart (state.frozen_apart, the default): its tensors
  // are in a frozen store of their own (frozen_params(): their compute weights alone, as a LoRA
  // run's base), and params() holds the others; their backward never runs.
  Model(core::Device dev, core::DType dt, const Config& c, const TensorMap& host_params,
        const StateOptions& state = {}, const LoraSetup* lora = nullptr);
  // The same with the parameters made one host tensor at a time (model/params.h).
  Model(core::Device dev, core::DType dt, const Config& c, const ParamSource& host_params,
        const StateOptions& state = {}, const LoraSetup* lora = nullptr);

  // Forward and, with_grads, backward (spec 2-5): the objective's parameter gradients are
  // ADDED into params().g(...) (zero them with params().zero_grads()). The backward is the
  // forward loop reversed, written out by hand. Logits are never materialised for the pack.
  PackLoss fwd_bwd(const data::Pack& pack, bool with_grads, const ModelOptions& opt = {});
  // Forward only, adding every MoE layer's top-k counts over the pack's real tokens to
  // `counts` (the first pass of an exact global aux loss).
  void count_routes(const data::Pack& pack, GlobalRouterCounts& counts);
  // The "...mlp." prefixes of every MoE layer, the MTP layer's last (count_routes' keys);
  // empty for a dense model.
  std::vector<std::string> moe_prefixes() const;

  // Activation recomputation per layer: the forward keeps only each layer's input, the backward
  // reruns the layer's forward first (about one extra trunk forward; bitwise-equal gradients).
  void set_recompute(bool on) { recompute_ = on; }
  // Selective recomputation (on by default; Ctx::selective, docs/perf.md "Activation memory"):
  // the cheap intermediates are recomputed in the backward instead of kept (bitwise-equal
  // gradients).
  void set_recompute_selective(bool on) { selective_ = on; }

  // Expert parallelism (model/expert_parallel.h): the parameter store then holds this rank's
  // slices of the routed-expert tensors ([El, ...]), and every MoE layer exchanges rows with
  // the group. Set before the first pack.
  // Routed-expert LoRA adapters must hold this rank's experts (LoraSetup::local_experts).
  void set_expert_parallel(const ExpertParallel& ep);
  const ExpertParallel& expert_parallel() const { return ep_; }
  // Tensor (and sequence) parallelism (model/tensor_parallel.h): the parameter store holds this
  // rank's slices (tp_slice) and every pack runs on every rank of tp.comm's group, each with its
  // share of the heads; the replicated parameters' gradients are whole on every rank after each
  // pack. Set before the first pack.
  void set_tensor_parallel(const TensorParallel& tp) { tp_ = tp; }
  const TensorParallel& tensor_parallel() const { return tp_; }

  // ZeRO 3 (model/param_gather.h): a store made with StateOptions::gathered holds no weights;
  // `g` binds each unit's gathered parameters before it runs and releases them after. Null: the
  // store holds every parameter (the default). Set before the first pack; g outlives the model's
  // use of it.
  void set_param_gather(ParamGather* g) { gather_ = g; }

  // The base model's; without the tensors held apart (params().held_apart names them).
  Params& params() { return params_; }
  // The frozen store of the tensors held apart (see the constructor), or null.
  const Params* frozen_params() const { return frozen_.get(); }
  // What the optimizer trains: the adapters' store in a LoRA run, else params().
  Params& trainable() { return adapters_ ? adapters_->params() : params_; }
  const Adapters* adapters() const { return adapters_.get(); }
  const Config& config() const { return c_; }

 private:
  void init(const StateOptions& state, const LoraSetup* lora);
  Config c_;
  std::unique_ptr<Params> frozen_;  // made first: params_'s out-of-memory hint is the one left
  Params params_;
  std::unique_ptr<Adapters> adapters_;
  ExpertParallel ep_;
  const ExpertParallel* ep() const { return ep_.on() ? &ep_ : nullptr; }
  TensorParallel tp_;
  const TensorParallel* tp() const { return tp_.on() ? &tp_ : nullptr; }
  bool recompute_ = false;
  bool selective_ = true;
  ParamGather* gather_ = nullptr;
};

// Host-tensor conveniences (tests and tools): the model on `dev` in f32 with `params` copied
// in. Gradients ACCUMULATE into *grads, which must hold a buffer for every parameter
// (zeros_like); grads == nullptr: forward only.
PackLoss model_fwd_bwd(core::Device dev, const Config& c, const TensorMap& params,
                       const data::Pack& pack, TensorMap* grads, const ModelOptions& opt = {});
void model_count_routes(core::Device dev, const Config& c, const TensorMap& params,
                        const data::Pack& pack, GlobalRouterCounts& counts);

}  // namespace deltatron::model
