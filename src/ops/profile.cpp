// Device dispatch of the stage timer (see profile.h).
#include "ops/profile.h"

#include <memory>

#include "core/error.h"
#ifdef DT_HAVE_CUDA
#include "cuda/profile.h"
#endif

namespace deltatron::ops {

void profile_enable(core::Device dev, bool on) {
  if (dev == core::Device::cpu) return;
#ifdef DT_HAVE_CUDA
  cuda::profile_enable(on);
#else
  (void)on;
#endif
}

std::map<std::string, double> profile_collect(core::Device dev) {
  if (dev == core::Device::cpu) return {};
#ifdef DT_HAVE_CUDA
  return cuda::profile_collect();
#else
  return {};
#endif
}

Stage::Stage(core::Device dev, const char* name) {
#ifdef DT_HAVE_CUDA
  if (dev == core::Device::cuda) impl_ = new cuda::Stage(name);
#else
  (void)dev, (void)name;
#endif
}

Stage::~Stage() {
#ifdef DT_HAVE_CUDA
  delete static_cast<cuda::Stage*>(impl_);
#endif
}

}  // namespace deltatron::ops
