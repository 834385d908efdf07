// `deltatron train`: the training loop from a dataset to a fine-tuned HF checkpoint.
#pragma once

#include <cstdint>
#include <vector>

#include "train/train_config.h"

namespace deltatron::train {

struct TrainResult {
  int64_t steps_done = 0;
  double final_loss = 0, final_eval_loss = -1, final_eval_accuracy = -1;
  bool interrupted = false;
  bool root = true;  // rank 0 of a launched job (or the only rank): the one that reports
  bool nothing_to_do =
      false;  // resumed at step >= steps; final_loss is the checkpoint's (NaN if unknown)
  std::vector<int64_t> step_host_reads;  // StepResult::host_reads of each step of this run
};

// Runs (or, with resume, continues from the newest complete checkpoint in out_dir) the
// training described by cfg. Writes checkpoints (HF directory + training state), metrics.jsonl
// and progress to stderr. out_dir is locked for the run (run_dir.h). A fresh run refuses an
// out_dir holding an earlier run's checkpoints unless overwrite, which removes them once the
// new run has saved its first checkpoint. A resume must match the checkpoint's run identity
// (run_identity.h). Non-finite starting weights are an error, and a checkpoint is never written
// with non-finite weights (an error instead).
TrainResult run_train(const TrainConfig& cfg, bool resume, bool overwrite = false);

}  // namespace deltatron::train
