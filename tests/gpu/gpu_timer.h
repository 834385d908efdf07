// Mean GPU time of a callable for the GPU tests' timing cases (printed, never asserted).
#pragma once

#include <cuda_runtime_api.h>

#include "core/error.h"

namespace dt_test {

// `warmup` untimed calls (plans, workspaces), then the mean of `reps` calls in ms, measured with
// CUDA events on the default stream.
template <typename F>
double gpu_time_ms(F&& f, int warmup, int reps) {
  for (int i = 0; i < warmup; ++i) f();
  DT_CUDA_CHECK(cudaDeviceSynchronize());
  cudaEvent_t a, b;
  DT_CUDA_CHECK(cudaEventCreate(&a));
  DT_CUDA_CHECK(cudaEventCreate(&b));
  DT_CUDA_CHECK(cudaEventRecord(a, 0));
  for (int i = 0; i < reps; ++i) f();
  DT_CUDA_CHECK(cudaEventRecord(b, 0));
  DT_CUDA_CHECK(cudaEventSynchronize(b));
  float ms = 0;
  DT_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  DT_CUDA_CHECK(cudaEventDestroy(a));
  DT_CUDA_CHECK(cudaEventDestroy(b));
  return double(ms) / reps;
}

}  // namespace dt_test
