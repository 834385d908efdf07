// The trainer's held-out evaluation: loss per label token and exact-match answer accuracy.
#pragma once

#include <cstdint>

#include "train/engine.h"
#include "train/train_config.h"
#include "train/train_data.h"

namespace deltatron::train {

struct EvalResult {
  double loss = 0;      // sum CE / label tokens over the held-out samples
  double accuracy = 0;  // fraction of samples whose labels are all predicted (teacher-forced
                        // exact match; cfg.answer_accuracy, else 0)
  int64_t samples = 0;  // 0: there is no held-out set (and loss, accuracy are 0)
};

// Forward only (no gradients) over d's held-out samples in order, packed greedily into
// micro-batches of cfg.micro_batch_tokens (eval_batches). A sample with no label token counts
// towards `samples` but never as exact.
EvalResult evaluate(const TrainConfig& cfg, Engine& engine, const TrainData& d);

}  // namespace deltatron::train
