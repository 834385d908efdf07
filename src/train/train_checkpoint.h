// A training run's checkpoints: what a save writes (the HF checkpoint, the tokenizer files, the
// training state, fp32 master weights) and the master weights a resume reads back.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "model/adapters.h"
#include "train/engine.h"
#include "train/expert_parallel.h"
#include "train/optimizer.h"
#include "train/parallel.h"
#include "train/run_dir.h"
#include "train/tensor_parallel.h"
#include "train/train_config.h"
#include "train/train_state.h"

namespace deltatron::train {

// Tokenizer files that travel with every saved checkpoint: tok_json and whichever of
// tokenizer_config.json, special_tokens_map.json, chat_template.jinja, vocab.json, merges.txt,
// generation_config.json exist beside it.
std::vector<std::filesystem::path> tokenizer_files(const std::string& tok_json);

// Saves out_dir/checkpoint-<st.step> (checkpoint_dir.h: atomic, COMPLETE marker) of one rank:
// the HF files of ck (config, expert layouts and pass-through tensors from ck; every parameter in
// cfg.save_dtype when set), tok_files, and training_state/ (save_train_state and
// master_weights.safetensors, the fp32 weights, so a resume is bitwise even when the HF files
// are bf16). The tensors come from the engine one at a time as the files are written (the masters
// first, the HF files from them; a tensor the engine holds apart from ck.params); opt gets the
// engine's step count. Non-finite weights are an error and nothing is written. After the first
// save of a fresh --overwrite run the earlier run's checkpoints go (run_dir.h); then all but
// cfg.keep_last checkpoints are pruned. Prints the checkpoint's path.
// A LoRA run (lora != nullptr) saves its adapters instead of the HF checkpoint: PEFT's
// adapter_config.json and adapter_model.safetensors (F32: the fp32 masters exactly, so a resume is
// bitwise), the tokenizer files and training_state/ over the adapters' names; the base model is
// the user's model.path, untouched.
void save_checkpoint(const TrainConfig& cfg, Engine& engine, io::Checkpoint& ck,
                     const TrainState& st, AdamW& opt,
                     const std::vector<std::filesystem::path>& tok_files, RunStart& start,
                     model::LoraSetup* lora = nullptr, const MomentSource* moments = nullptr);
// moments: where the moments come from (default: engine.read_moment).

// The save of a job; every rank calls it. Rank 0 writes the files of one rank (as
// save_checkpoint) while the state stays in its shares: before each tensor (a weight, a moment)
// rank 0 broadcasts a request (3 x the tensor's index in name order + train::StatePart; -1: done,
// also when rank 0's save fails) and every rank takes part in reading it (train/state_stream.h:
// the engine's collective reads under ZeRO; under ep (eg) and tp (tg) the slices of the group
// holding rank 0 gathered to rank 0 alone). So no rank holds more than its share plus one tensor:
// rank 0 one whole tensor and the writer's buffer of it, the others one slice. Without ZeRO, ep or
// tp (or on one rank) rank 0 saves alone. stats: this rank's counted buffers. A LoRA run (lora)
// saves its adapters (whole on every rank; with ZeRO the moments served as requests).
void save_checkpoint_ranks(const Parallel& par, const TrainConfig& cfg, Engine& engine,
                           io::Checkpoint& ck, const TrainState& st, AdamW& opt,
                           const std::vector<std::filesystem::path>& tok_files, RunStart& start,
                           model::LoraSetup* lora = nullptr, const ExpertGroups* eg = nullptr,
                           const TensorGroups* tg = nullptr, io::SaveStats* stats = nullptr);

// Replaces ck.params with the fp32 master weights of the checkpoint ckpt_dir; every parameter
// must be there with its shape (else a one-line core::Error naming the file and the parameter).
// local: a parallel layout's slices (ck.params holds this rank's; each master is read as its
// slice alone).
void restore_master_weights(const std::string& ckpt_dir, io::Checkpoint& ck,
                            const LocalSlice& local = {});

}  // namespace deltatron::train
