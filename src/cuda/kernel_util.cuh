// Device-side helpers every CUDA kernel shares: fp32 load/store for either storage type, the
// dtype dispatch macro, and launch-error checks. Include only from .cu files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "cuda/device.h"
#include "cuda/dtype.h"

namespace deltatron::cuda {

// Element load/store in fp32 for either storage type (device code).
__device__ __forceinline__ float load_f32(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load_f32(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}
__device__ __forceinline__ void store_f32(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store_f32(__nv_bfloat16* p, int64_t i, float v) {
  p[i] = __float2bfloat16_rn(v);
}

}  // namespace deltatron::cuda

// DT_DISPATCH_DTYPE(dt, T, body): runs `body` with `T` = float or __nv_bfloat16.
#define DT_DISPATCH_DTYPE(dt, T, ...)                   \
  do {                                                  \
    if ((dt) == ::deltatron::cuda::DType::bf16) {       \
      using T = __nv_bfloat16;                          \
      __VA_ARGS__;                                      \
    } else {                                            \
      using T = float;                                  \
      __VA_ARGS__;                                      \
    }                                                   \
  } while (0)

// After a kernel launch: turns a launch failure into core::Error naming the kernel.
#define DT_CUDA_LAUNCH_CHECK(name) DT_CUDA_CHECK(cudaGetLastError())
