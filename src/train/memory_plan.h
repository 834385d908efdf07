// The memory plan of a run, made before anything is allocated: the training state's bytes per
// parameter for the chosen options (model::state_bytes), the activations of one micro-batch
// (model::activation_bytes), the workspaces, on the device and in host memory. When the plan does
// not fit what the machine has free, the run stops at once with one line giving the numbers and
// the options that would make it fit.
#pragma once

#include <cstdint>
#include <string>

#include "model/config.h"
#include "model/params.h"

namespace deltatron::train {

// The parallel layout of a run ([parallel], docs/parallel.md) as one rank sees it: the plan's
// device state is one rank's (train/rank_state.h).
struct PlanLayout {
  int64_t dp = 1;           // data-parallel ranks (the job's ranks / tp)
  int zero = 0;             // parallel.zero: 0, 1, 2, 3
  int64_t ep = 1, tp = 1;   // expert- and tensor-parallel group sizes
  bool sp = false;          // sequence parallel (inside each tensor-parallel group)
  int64_t local_ranks = 1;  // the job's ranks on this host: they share its host memory
  bool on() const { return dp > 1 || zero > 0 || ep > 1 || tp > 1; }
};

struct PlanInput {
  core::Device device = core::Device::cpu;
  core::DType compute = core::DType::f32;  // bf16 or f32 (the CPU: f32)
  model::StateOptions state;
  int64_t micro_batch_tokens = 0;
  bool recompute = false;
  bool recompute_selective = true;  // training.recompute_selective (model/activations.h)
  // A training run: the AdamW moments exist (the bench's, scoring's engine has none until its
  // first step); a checkpoint save streams them one tensor at a time; a resume reads all of them
  // into host memory (f32) before the engine takes them.
  bool training = true, saves_checkpoints = true, resuming = false;
  // A LoRA run: the adapters' parameter count (>= 0); the base is frozen (its weights alone) and
  // the adapters hold the training state (fp32 masters, their compute copies, gradients, moments).
  int64_t lora_params = -1;
  // Of lora_params, the routed-expert adapters' (lora.experts; sliced over the ep ranks like their
  // experts), and the largest adapter tensor's elements (a ZeRO 1/2 shard's bound).
  int64_t lora_expert_params = 0, lora_largest = 0;
  // Of lora_params, the elements of the adapter tensors tensor parallelism splits
  // (model::is_tp_sharded: a column-parallel base's lora_B, a row-parallel base's lora_A), and of
  // those the routed-expert adapters' (split over tp and ep together).
  int64_t lora_tp_split_params = 0, lora_expert_tp_split_params = 0;
  // The weights are made one host tensor at a time (model::ParamSource): host memory holds the
  // largest tensor, not an f32 copy of the model.
  bool streamed_weights = false;
  // Images (a vision tower that is on): the most vision patches per token of a micro-batch, so
  // one micro-batch holds at most micro_batch_tokens * this many patches (the data's densest
  // sample; train/train_data.h). 0: no images (or not known yet).
  double image_patches_per_token = 0;
  PlanLayout layout;
};

struct MemoryPlan {
  int64_t params = 0;
  model::StateBytes per_param;  // of the trained parameters
  // Of params, those the run does not train (model::frozen_param_count: a frozen vision tower),
  // held as compute-dtype weights alone: frozen_per_param bytes each (2 in bf16, 4 in f32).
  int64_t frozen = 0;
  double frozen_per_param = 0;
  int64_t local_params = 0;  // the parameters one rank computes with (its expert slices, shards)
  PlanLayout layout;
  double gathered = 0;  // ZeRO 3: the gathered units' buffers (part of state)
  // Bytes on the device (for the CPU engine: host memory, added into host_total).
  double state = 0, staging = 0, activations = 0, workspace = 0;
  // Bytes in host memory, per rank: the f32 host copy of the weights (loaded or initialised, and
  // the checkpoint's; under ep or tp this rank's share, read as its slices, plus the loader's
  // staging of at most two of the largest tensor; ZeRO 3 alone keeps every tensor whole),
  // offloaded state, and the host buffers of a save (streamed to rank 0 one tensor at a time:
  // 8 B x the largest tensor, 12 B under a layout, whose slices are gathered to rank 0) or of a
  // resume (the moments of this rank's share, f32, until the engine has taken them), whichever is
  // larger. The fit check multiplies it by layout.local_ranks.
  double host_weights = 0, host_state = 0, host_save = 0;
  // The activation account's lines (model::describe_activations): per layer type what is kept
  // and recomputed, and the peak's phase.
  std::string activation_detail;
  double device_total() const { return state + staging + activations + workspace; }
  double host_total() const;
  core::Device device = core::Device::cpu;
};

MemoryPlan plan_memory(const model::Config& c, const PlanInput& in);

// One line: "state 12 B/param x 4.38B = 48.9 GiB, activations 6.1 GiB, ... on cuda; host ...";
// with frozen parameters the state says both parts ("16 B/param x 1.9B trained + 2 B/param x
// 0.33B frozen (weights alone)").
std::string describe(const MemoryPlan& p);

// Free memory the plan is checked against (bytes): the device's now (ops::memory_info; the CPU:
// host memory available), and the host's (MemAvailable).
struct Available {
  double device = 0, host = 0;
};
Available available_memory(core::Device dev);

// Throws core::Error, one line, when the plan does not fit `avail`: what is needed and free, and
// which of these would fit: training.master = remainder, training.moments = bf16,
// training.offload = moments / master+moments, training.recompute = true, a smaller
// training.micro_batch_tokens. `what` starts the message (the config file, "bench").
void check_memory_plan(const model::Config& c, const PlanInput& in, const Available& avail,
                       const std::string& what);

}  // namespace deltatron::train
