// The device the model-level tests run on. CI (no GPU) runs them on the CPU; on the GPU machine
// the same test files run on CUDA: tests/gpu/<name>_cuda.cpp compiles tests/<name>.cpp with
// DT_TEST_ON_CUDA (label gpu), so one test body holds both devices to the same references.
#pragma once

#include <algorithm>

#include "core/device.h"

namespace dt_test {

#ifdef DT_TEST_ON_CUDA
inline constexpr bool kOnCuda = true;
#else
inline constexpr bool kOnCuda = false;
#endif

inline deltatron::core::Device test_device() {
  return kOnCuda ? deltatron::core::Device::cuda : deltatron::core::Device::cpu;
}

// A bound on a float32 gradient comparison: the CPU's own, or on CUDA (fp32 mode: tensor-core
// GDN with split operands, SIMT attention, other summation orders) at least the GPU fp32 bound
// of docs/tolerances.md, 1e-4 relative RMS per tensor.
inline double grad_tol(double cpu_bound) { return kOnCuda ? std::max(cpu_bound, 1e-4) : cpu_bound; }

}  // namespace dt_test
