// Learning-rate schedule values (schedule.h).
#include "train/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"

namespace deltatron::train {

LrDecay parse_lr_decay(const std::string& s) {
  if (s == "cosine") return LrDecay::cosine;
  if (s == "constant") return LrDecay::constant;
  core::fail("unknown learning-rate schedule '", s, "' (expected cosine or constant)");
}

const char* lr_decay_name(LrDecay d) { return d == LrDecay::cosine ? "cosine" : "constant"; }

void validate_schedule(const ScheduleOptions& o) {
  DT_CHECK(std::isfinite(o.lr) && o.lr >= 0, "schedule: lr must be finite and >= 0, got ", o.lr);
  DT_CHECK(o.min_lr >= 0 && o.min_lr <= o.lr, "schedule: min_lr must be in [0, lr=", o.lr,
           "], got ", o.min_lr);
  DT_CHECK(o.warmup_steps >= 0, "schedule: warmup_steps must be >= 0, got ", o.warmup_steps);
  if (o.decay == LrDecay::cosine) {
    DT_CHECK(o.total_steps >= 1, "schedule: cosine needs total_steps >= 1, got ", o.total_steps);
    DT_CHECK(o.warmup_steps <= o.total_steps, "schedule: warmup_steps (", o.warmup_steps,
             ") exceeds total_steps (", o.total_steps, ")");
  }
}

double learning_rate(const ScheduleOptions& o, int64_t step) {
  DT_CHECK(step >= 0, "schedule: step must be >= 0, got ", step);
  const int64_t W = o.warmup_steps;
  if (step < W) return o.lr * static_cast<double>(step + 1) / static_cast<double>(W);
  if (o.decay == LrDecay::constant) return o.lr;
  const double span = static_cast<double>(std::max<int64_t>(1, o.total_steps - W));
  const double r = std::min(1.0, static_cast<double>(step - W) / span);
  return o.min_lr + (o.lr - o.min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * r));
}

}  // namespace deltatron::train
