// What identifies a training run: kept in every checkpoint's trainer state and compared on
// --resume, so a resume never silently continues with another model, data set or batch layout.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "train/train_config.h"
#include "train/train_data.h"

namespace deltatron::train {

// {"model.preset" | "model.path", "data.train", "data.train content", ["data.eval",
// "data.eval content"], and the settings that fix the data order and batch shapes:
// data.format, data.loss_on, data.truncate, data.eval_fraction, model.ignore_mtp,
// training.micro_batch_tokens, grad_accum, divisible_by, shuffle_window, seed}; grad_accum is
// recorded as the micro-batches of a step over all ranks (grad_accum x ranks, the data-parallel
// ranks: the one-rank run's grad_accum), so a resume may change the rank count keeping the
// product. Content is the
// tokenised data set's key (data::Dataset::content_key): a hash of the file's bytes, the
// tokenizer and the format options. Learning-rate, schedule, step count, device and logging
// settings are not part of it: a resume may change those.
nlohmann::json run_identity(const TrainConfig& cfg, const TrainData& d, int ranks = 1);

// Compares the identity saved in a checkpoint with this run's. The first setting that differs is
// a one-line core::Error naming state_file, the setting and both values. A file moved elsewhere
// with the same content is accepted (the paths are only shown). A checkpoint saved before run
// identities existed (saved is null) is accepted with a warning.
void check_run_identity(const nlohmann::json& saved, const nlohmann::json& now,
                        const std::string& state_file);

}  // namespace deltatron::train
