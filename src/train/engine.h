// Where the model runs for score and train: one engine over model::Model on a device (the CPU
// reference, or one GPU), with its gradients and AdamW state resident on that device.
#pragma once

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "data/pack.h"
#include "dist/comm.h"
#include "model/config.h"
#include "model/model.h"
#include "train/optimizer.h"

namespace deltatron::train {

// The factor the next step scales the gradients by after Engine::clip found `norm`: max_norm /
// (norm + 1e-6) when that is below 1, else 1 (also for a non-finite norm or max_norm <= 0).
// ops::step_gate computes the same on the device (cpu/step_scalars.cpp).
inline float clip_scale(double norm, double max_norm) {
  if (!std::isfinite(norm) || max_norm <= 0) return 1.0f;
  const double coef = max_norm / (norm + 1e-6);
  return coef < 1.0 ? static_cast<float>(coef) : 1.0f;
}

class Engine {
 public:
  virtual ~Engine() = default;
  // model::Model::fwd_bwd on this engine; with_grads accumulates into the engine's gradients.
  virtual model::PackLoss fwd_bwd(const data::Pack& pack, bool with_grads,
                                  const model::ModelOptions& opt) = 0;
  virtual void count_routes(const data::Pack& pack, model::GlobalRouterCounts& counts) = 0;
  // The "...mlp." prefixes of the model's MoE layers (model::Model::moe_prefixes).
  virtual std::vector<std::string> moe_prefixes() const = 0;
  virtual void zero_grads() = 0;
  // Sums the trainable parameters' gradients over the ranks of `comm` (data parallel: every
  // rank then holds the gradient of all the ranks' packs). comm is on the engine's device.
  // With expert parallelism, the routed-expert tensors (this rank's slices) are summed over
  // `experts` instead (the ranks owning the same experts; null or one rank: not summed).
  // ZeRO 2 (the engine's ZeroSetup, whose comm and experts these must be): reduce-scattered, each
  // rank holds the sum of its shards only (the rest of its gradients is undefined until
  // zero_grads). ZeRO 3: already reduced as each layer's backward ended (a no-op).
  virtual void reduce_grads(dist::Comm& comm, dist::Comm* experts = nullptr) = 0;
  // Expert parallelism (model/expert_parallel.h): the engine was made from this rank's expert
  // slices; every MoE layer exchanges rows with ep.comm's group. Before the first pack; with ZeRO
  // the engine must have been made with ZeroSetup::experts.
  virtual void set_expert_parallel(const model::ExpertParallel& ep) = 0;
  // Tensor parallelism (model/tensor_parallel.h): the engine was made from this rank's shards
  // (train/tensor_parallel.h); every pack runs on every rank of tp.comm's group. The gradient
  // norm adds the group's shards. Before the first pack. With ZeRO the engine was made with
  // ZeroSetup::comm = the data-parallel ranks holding the same tp slice.
  virtual void set_tensor_parallel(const model::TensorParallel& tp) = 0;
  // Copies the gradients of the trainable parameters (the adapters in a LoRA run) into `grads`
  // (shaped like them, e.g. model::zeros_like).
  virtual void grads_to_host(model::TensorMap& grads) = 0;
  // Global gradient norm before clipping; the next step scales the gradients to max_norm when
  // the norm is larger (train::clip_grad_norm semantics; max_norm <= 0: no clipping).
  virtual double clip(double max_norm) = 0;
  // One AdamW update with the optimizer's options and decay groups (its step count advances).
  virtual void step(AdamW& opt, double lr) = 0;
  // The device-resident form of clip and step (train_step's; docs/perf.md, "Host
  // synchronisations"). grad_squares: the sum of squares clip takes the root of, into squares_1
  // ([1] f64 on the engine's device): queued, no host read, on one rank without a parallel layout
  // (ZeRO 2 and 3, expert and tensor parallelism sum over ranks on the host and copy it in).
  virtual void grad_squares(const core::View& squares_1) = 0;
  // step_gated: step with the clip and skip read from the device: gate_2 = core::StepScalars'
  // {grad_scale, skip} ([2] f64 on the engine's device, from ops::step_gate); a skipped update
  // writes nothing. The step count advances by end_step(applied), which the caller makes once it
  // has read the skip (before the next update, a state read or a checkpoint).
  virtual void step_gated(AdamW& opt, double lr, const core::View& gate_2) = 0;
  virtual void end_step(bool applied) = 0;
  // Makes the host copies of the trainable parameters (the adapters in a LoRA run) and `opt`'s
  // state current (before saving a checkpoint).
  virtual void sync_to_host(model::TensorMap& params, AdamW& opt) = 0;
  // The host parameters and `opt`'s step count only; the moments stay here, read one tensor at a
  // time by read_moment (what a checkpoint save writes without a host copy of all of them).
  virtual void sync_weights(model::TensorMap& params, AdamW& opt) = 0;
  // One parameter's exp_avg (second: exp_avg_sq) in f32 (bf16 moments widen exactly; zeros
  // before the first step) into out, numel floats. With sharded moments (sharded()) a collective
  // over the ZeroSetup's communicator: every rank calls it with the same name, the owner
  // broadcasts, every rank gets the values.
  virtual void read_moment(const std::string& name, bool second, float* out) = 0;
  // Whether the moments are sharded over ranks (ZeRO on more than one rank; ZeRO 3 always).
  virtual bool sharded() const = 0;
  // Whether the weights are sharded too (ZeRO 3; ZeRO 1/2 with offloaded masters, which each
  // rank keeps for its shards only): sync_weights and sync_to_host (ZeRO 3: grads_to_host too)
  // are then collectives over the ZeroSetup's communicators (every rank calls them alike).
  virtual bool gathers_weights() const { return false; }
  // Selective recomputation (training.recompute_selective; model::Model::set_recompute_selective):
  // on by default; off keeps every intermediate (the same losses and gradients, more memory).
  virtual void set_recompute_selective(bool on) = 0;
};

// Engine::step_gated's and end_step's bookkeeping for an engine counting its applied updates in
// `step` (pending: a gated update queued, its end_step not yet made). begin_gated_step checks the
// gate ([2] f64 on `dev`) and that none is pending, and returns the step number the update uses;
// the engine marks it pending after queueing it. end_gated_step advances the count if it applied.
int64_t begin_gated_step(const core::View& gate_2, core::Device dev, int64_t step, bool pending);
void end_gated_step(int64_t& step, bool& pending, bool applied);

// ZeRO (parallel.zero; train/zero.h, train/zero3.h, docs/parallel.md). stage 0: every rank
// holds the whole AdamW state. 1: the moments are sharded over the ranks of comm (each rank holds
// and steps the moments of its shard; gradients all-reduced; the updated weights broadcast from
// each shard's owner). 2: as 1, with the gradients reduce-scattered (each rank sums its shard only;
// the gradient norm from the shards' sums of squares). The masters (or remainders) and compute
// copies stay replicated. comm: the data-parallel group on the engine's device (with tensor
// parallelism the ranks holding the same tp slice: TensorGroups::dp); with one rank the stage
// changes nothing. 3: every parameter's state (weights, masters, gradients, moments) sharded
// by flat element range per layer, each layer gathered while it runs (train/zero3.h; also for
// scoring, and with one rank: one shard). training.offload: each rank offloads its shards'
// moments and (master+moments) masters alone (stage 3: its pieces'; the gathered weights stay on
// the device); with stages 1 and 2 reading a weight is then a collective (gathers_weights).
// experts: with expert parallelism (the engine is made from this rank's expert slices and gets
// set_expert_parallel), the ranks holding the same experts (ExpertGroups::same_experts): the
// routed-expert slices' state is sharded over them, every other tensor's over comm (Megatron's
// and DeepSpeed's expert-data-parallel group). Null without expert parallelism.
// A LoRA run: stages 1 and 2 shard the adapters' state (the frozen base has none); stage 3 shards
// the frozen base's weights, each unit gathered while it runs (weights alone), and the adapters'
// moments as stage 1 (docs/parallel.md, "LoRA under the layouts").
struct ZeroSetup {
  int stage = 0;
  dist::Comm* comm = nullptr;
  dist::Comm* experts = nullptr;
};

// device: "cpu" or "cuda"; precision (cuda): "bf16" or "fp32" (the CPU computes in fp32). The
// engine copies `params` (and `opt`'s moments, for a resumed run) to the device. A clear error
// when CUDA is unavailable: not built, no GPU, or not a Hopper GPU.
// recompute: activation recomputation per layer (model::Model::set_recompute). state: how the
// masters and moments are stored (training.master, training.moments; model::StateOptions): a
// resumed run's f32 moments are converted to bf16 moments exactly when they are bf16 values
// (as saved by a bf16-moment run), else rounded to nearest even. lora: a LoRA run (params is the
// frozen base; the optimizer, gradients and moments are the adapters', keyed as in lora->adapters).
std::unique_ptr<Engine> make_engine(const std::string& device, const std::string& precision,
                                    const model::Config& c, model::TensorMap& params,
                                    const AdamW* opt = nullptr, bool recompute = false,
                                    const model::StateOptions& state = {},
                                    const model::LoraSetup* lora = nullptr,
                                    const ZeroSetup& zero = {});
// The same with the parameters made one host tensor at a time (model::ParamSource: a model whose
// f32 host copy would not fit in host memory).
std::unique_ptr<Engine> make_engine(const std::string& device, const std::string& precision,
                                    const model::Config& c, const model::ParamSource& params,
                                    const AdamW* opt = nullptr, bool recompute = false,
                                    const model::StateOptions& state = {},
                                    const model::LoraSetup* lora = nullptr,
                                    const ZeroSetup& zero = {});

}  // namespace deltatron::train
