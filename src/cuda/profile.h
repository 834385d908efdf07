// Optional per-stage GPU timing for `deltatron bench` (through ops/profile.h): CUDA events around
// named stages, summed per name. Off by default (then a Stage costs nothing but a flag test).
#pragma once

#include <map>
#include <string>

namespace deltatron::cuda {

void profile_enable(bool on);
// Milliseconds per stage name since the last collect (synchronises the device), then resets.
std::map<std::string, double> profile_collect();

// Times the enclosing scope on the default stream under `name` (stages must not nest).
class Stage {
 public:
  explicit Stage(const char* name);
  ~Stage();
  Stage(const Stage&) = delete;
  Stage& operator=(const Stage&) = delete;

 private:
  const char* name_;
  int slot_ = -1;
};

}  // namespace deltatron::cuda
