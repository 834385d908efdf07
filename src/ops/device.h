// Which devices this build and this machine can run the model on.
#pragma once

#include <cstddef>
#include <string>

#include "core/device.h"

namespace deltatron::ops {

// True when the build has the backend for `dev` (the CPU always; CUDA when built with it).
bool has_backend(core::Device dev);

// Makes `dev` ready to hold and run the model, or throws a clear core::Error: for CUDA, a
// usable Hopper GPU must be present ("no CUDA device found; use --device cpu", or the GPU's
// name and compute capability), and its pool allocator is registered with core.
void check_device(core::Device dev);

// Makes GPU `index` the current device of this process (a rank's LOCAL_RANK) before anything
// is allocated on it; an error naming the index and the GPU count when there is no such GPU.
// The CPU: nothing.
void select_device(core::Device dev, int index);

// Free and total memory of the device now (the host: 0, 0), and its name ("cpu" on the host).
struct MemoryInfo {
  size_t free = 0, total = 0;
};
MemoryInfo memory_info(core::Device dev);
std::string device_name(core::Device dev);

}  // namespace deltatron::ops
