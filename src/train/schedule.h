// Learning-rate schedule: linear warmup, then cosine decay to min_lr or a constant rate.
#pragma once

#include <cstdint>
#include <string>

namespace deltatron::train {

enum class LrDecay { cosine, constant };

// "cosine" or "constant"; anything else is a core::Error listing the accepted names.
LrDecay parse_lr_decay(const std::string& s);
const char* lr_decay_name(LrDecay d);

struct ScheduleOptions {
  double lr = 1e-4;          // peak rate, reached at the end of warmup
  double min_lr = 0.0;       // cosine floor (unused by constant)
  int64_t warmup_steps = 0;  // W
  int64_t total_steps = 0;   // T: length of the run in optimizer steps (cosine only)
  LrDecay decay = LrDecay::cosine;
};

// Throws core::Error (one line naming the field) unless 0 <= min_lr <= lr, warmup_steps >= 0 and,
// for cosine, total_steps >= 1 and warmup_steps <= total_steps.
void validate_schedule(const ScheduleOptions& o);

// Learning rate of optimizer step s, counted from 0 (s = number of updates done before it; the
// first update uses s = 0):
//   s < W:            lr * (s + 1) / W          (linear warmup; the first step is not wasted at 0,
//                                               step W-1 reaches lr)
//   constant, s >= W: lr
//   cosine,   s >= W: min_lr + (lr - min_lr) * (1 + cos(pi * r)) / 2,
//                     r = min(1, (s - W) / max(1, T - W))
// so cosine gives lr at s = W, (lr + min_lr) / 2 halfway, and min_lr at s = T and after (the
// last step of a T-step run, s = T - 1, is one step above the floor). Negative s: an error.
double learning_rate(const ScheduleOptions& o, int64_t step);

}  // namespace deltatron::train
