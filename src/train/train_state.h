// Resumable trainer state: counters, RNG and AdamW moments, saved into a checkpoint directory.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>

#include "io/checkpoint.h"
#include "train/optimizer.h"

namespace deltatron::train {

inline constexpr const char* kOptimizerFileName = "optimizer.safetensors";
inline constexpr const char* kTrainerStateFileName = "trainer_state.json";

struct TrainState {
  int64_t step = 0;         // optimizer steps completed; the next step has this index
  uint64_t rng_seed = 0;    // the seed the run started from (informational)
  std::mt19937_64 rng;      // the trainer's RNG, saved and restored exactly
  int64_t epoch = 0;        // passes over the data completed
  int64_t data_cursor = 0;  // position of the next sample within the epoch
  nlohmann::json extra = nlohmann::json::object();  // anything else the trainer keeps
};

// Writes into the existing directory dir (each file atomically):
//  - optimizer.safetensors: for every parameter p, "exp_avg/<p>" and "exp_avg_sq/<p>" with p's
//    shape, as F32, or as BF16 with optimizer.options().bf16_moments (the state as trained: the
//    host tensors then hold bf16 values, each converted exactly; any other value is an error);
//    __metadata__ {"format": "deltatron-adamw", "step": optimizer step count, "beta1", "beta2",
//    "eps", "weight_decay", "moments" ("fp32" or "bf16") (informational, as text)}.
//  - trainer_state.json: {"format": "deltatron-trainer-state", "version": 1, "step",
//    "rng_seed", "rng_state" (the std::mt19937_64 in its operator<< text form), "epoch",
//    "data_cursor", "extra"}.
void save_train_state(const std::string& dir, const TrainState& state, const AdamW& optimizer);

// The same files, the moments read one tensor at a time from `moment` (name, second: exp_avg_sq,
// out: the tensor's values in f32) as the file is written, for the parameters of `shapes` (names
// and full shapes): an engine's moments reach the file without a host copy of all of them.
// optimizer gives the options and the step count.
using MomentSource = std::function<void(const std::string& name, bool second, float* out)>;
void save_train_state(const std::string& dir, const TrainState& state, const AdamW& optimizer,
                      const std::map<std::string, core::Shape>& shapes, const MomentSource& moment);
// The names and shapes of a tensor map.
std::map<std::string, core::Shape> shapes_of(const model::TensorMap& t);

// Reads what save_train_state wrote and restores it exactly: the moments bit for bit, the step
// counters, the RNG (its next outputs equal those the saved one would have produced). optimizer
// must have been built over the same parameters. Errors are one-line core::Errors naming the
// file and, where there is one, the parameter or field: a missing file, a parameter without
// moments, moments of a parameter the optimizer lacks, a shape or dtype mismatch (F32 and BF16
// moments are read, into f32 exactly, whatever the run's training.moments), a bad field.
// On error neither state nor optimizer is modified. Hyperparameters are not compared: the run's
// current options apply.
// local: a parallel layout's slices (train/local_slices.h): each moment is read as the slice the
// optimizer's parameter is (only its bytes), so a rank holds its share, not the whole moments.
using LocalSlice =
    std::function<std::optional<io::ParamSlice>(const std::string& name, const core::Shape& full)>;
void load_train_state(const std::string& dir, TrainState& state, AdamW& optimizer,
                      const LocalSlice& local = {});

}  // namespace deltatron::train
