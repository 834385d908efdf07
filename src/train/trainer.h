// `deltatron train`: the training loop from a dataset to a fine-tuned HF checkpoint.
#pragma once

#include "train/train_config.h"

namespace deltatron::train {

struct TrainResult {
  int64_t steps_done = 0;
  double final_loss = 0, final_eval_loss = -1, final_eval_accuracy = -1;
  bool interrupted = false;
};

// Runs (or, with resume, continues from the newest complete checkpoint in out_dir) the
// training described by cfg. Writes checkpoints (HF directory + training state), metrics.jsonl
// and progress to stderr.
TrainResult run_train(const TrainConfig& cfg, bool resume);

}  // namespace deltatron::train
