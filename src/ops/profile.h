// Optional per-stage timing of the model's parts for `deltatron bench`: on CUDA, events recorded
// around named stages on the default stream (cuda/profile.h); on the CPU, nothing is timed.
// Off by default: then a Stage costs a flag test.
#pragma once

#include <map>
#include <string>

#include "core/device.h"

namespace deltatron::ops {

void profile_enable(core::Device dev, bool on);
// Milliseconds per stage name since the last collect (synchronises the device), then resets.
std::map<std::string, double> profile_collect(core::Device dev);

// Times the enclosing scope under `name` (stages must not nest).
class Stage {
 public:
  Stage(core::Device dev, const char* name);
  ~Stage();
  Stage(const Stage&) = delete;
  Stage& operator=(const Stage&) = delete;

 private:
  void* impl_ = nullptr;
};

}  // namespace deltatron::ops
