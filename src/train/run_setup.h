// A training run's set-up: the model (checkpoint, preset or resume), the tokenizer, optimizer and
// schedule options, the state a run starts from and the stream of training micro-batches.
#pragma once

#include <string>

#include "data/packing.h"
#include "io/checkpoint.h"
#include "model/adapters.h"
#include "model/params.h"
#include "train/memory_plan.h"
#include "train/optimizer.h"
#include "train/run_dir.h"
#include "train/schedule.h"
#include "train/train_config.h"
#include "train/train_data.h"
#include "train/train_state.h"
#include "train/trainer.h"

namespace deltatron::train {

// The checkpoint resume_dir when set (not for LoRA: its checkpoints hold the adapters alone),
// else model.path, else a preset initialised with cfg.init_seed (F32 parameters).
// slice: a parallel layout's slices (train/local_slices.h): a loaded checkpoint is read as this
// rank's share (a preset is initialised whole and then sliced); stats: the loader's buffers.
io::Checkpoint load_or_init_model(const TrainConfig& cfg, const std::string& resume_dir,
                                  const io::SliceFn& slice = {}, io::LoadStats* stats = nullptr);

// The model's config as the run will load it (the checkpoint's config.json or the preset;
// mtp_enabled and vision_mode from cfg), before any weight is read: what the layouts' groups
// need.
model::Config run_model_config(const TrainConfig& cfg, const std::string& resume_dir);

// A LoRA run's options (cfg.lora): [lora]'s keys, or, with lora.adapter, the adapter's own
// (adapter_config.json); a [lora] key that disagrees with the adapter is an error naming both.
model::LoraOptions lora_options(const TrainConfig& cfg);

// A LoRA run's adapters: the resumed checkpoint's PEFT files, else lora.adapter's, else PEFT's
// initialisation seeded with training.seed; checked against the model's modules (an error names
// the adapter file and the module).
model::LoraSetup lora_setup(const TrainConfig& cfg, const model::Config& c,
                            const std::string& resume_dir);

// data.tokenizer, else model.path/tokenizer.json (an error for a preset model without one).
std::string tokenizer_path(const TrainConfig& cfg);

// shapes: the parameters' shapes when the host tensors are not whole (ZeRO 3 pieces,
// local_slices.h's zero3_slices): weight decay is decided by these (default_weight_decay).
AdamWOptions adamw_options(const TrainConfig& cfg,
                           const std::vector<model::ParamSpec>& shapes = {});

// The memory plan of the run (train/memory_plan.h), from the model's config alone (the
// checkpoint's config.json or the preset): stops with one line naming the numbers and the
// options that would fit before any weight is loaded or allocated.
// image_patches_per_token: the data's (TrainData), once it is read: the vision tower's
// activations for that many patches per micro-batch token are planned too. layout: the run's
// parallel layout (run_layout): the device state is one rank's share of it. Returns the plan.
MemoryPlan check_run_memory(const TrainConfig& cfg, const std::string& resume_dir,
                            double image_patches_per_token = 0, const PlanLayout& layout = {});

// The memory plan's layout of a run of cfg ([parallel]) on `ranks` ranks of the job,
// `local_ranks` of them on this host.
PlanLayout run_layout(const TrainConfig& cfg, int64_t ranks, int64_t local_ranks);

// training.master, training.moments and training.offload as the parameter store's options.
model::StateOptions state_options(const TrainConfig& cfg);

// The learning-rate schedule of cfg, validated (validate_schedule).
ScheduleOptions schedule_options(const TrainConfig& cfg);

// The state the run starts from: step 0 and the RNG seeded with cfg.seed, or, when resuming
// (start.resume_dir), the checkpoint's training state, optimizer moments and fp32 master weights
// (into opt and ck.params; a LoRA run's adapters come with lora_setup), after checking its step
// and run identity (run_identity.h). The run
// identity of cfg and d is stored in extra["run"]. Non-finite starting weights are an error.
// ranks: the data-parallel ranks (run_identity).
// slice: as load_or_init_model's (the masters and moments read as this rank's slices).
TrainState start_state(const TrainConfig& cfg, const RunStart& start, const TrainData& d,
                       io::Checkpoint& ck, AdamW& opt, int ranks = 1,
                       const io::SliceFn& slice = {});

// A resumed run already at cfg.steps or past it: says so and returns nothing_to_do with the
// checkpoint's last loss (NaN when it has none).
TrainResult finished_run(const TrainConfig& cfg, const RunStart& start, const TrainState& st);

// The training micro-batches (packing.h) from the state's data position.
data::EpochIterator training_batches(const TrainConfig& cfg, const TrainData& d,
                                     const TrainState& st);

}  // namespace deltatron::train
