// Device-side helpers every CUDA kernel shares: fp32 load/store for either storage type, vector
// load/store, sigmoid, the dtype dispatch macro, and launch-error checks. Include only from .cu
// files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "cuda/device.h"
#include "cuda/dtype.h"

namespace deltatron::cuda {

// One value of either storage type to and from fp32 (device code; bf16 rounds to nearest even).
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_f32(float x) {
  if constexpr (std::is_same_v<T, float>)
    return x;
  else
    return __float2bfloat16_rn(x);
}

// Element load/store in fp32 for either storage type (device code).
__device__ __forceinline__ float load_f32(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load_f32(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}
__device__ __forceinline__ void store_f32(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store_f32(__nv_bfloat16* p, int64_t i, float v) {
  p[i] = __float2bfloat16_rn(v);
}

// V elements of T, aligned for one access of up to 16 bytes (two for 8 fp32).
template <typename T, int V>
struct alignas(sizeof(T) * V < 16 ? sizeof(T) * V : 16) VecPack {
  T v[V];
};

template <int V, typename T>
__device__ __forceinline__ void load_vec(const T* p, float (&o)[V]) {
  const VecPack<T, V> pk = *reinterpret_cast<const VecPack<T, V>*>(p);
#pragma unroll
  for (int i = 0; i < V; ++i) o[i] = load_f32(pk.v, i);
}

template <int V, typename T>
__device__ __forceinline__ void store_vec(T* p, const float (&o)[V]) {
  VecPack<T, V> pk;
#pragma unroll
  for (int i = 0; i < V; ++i) store_f32(pk.v, i, o[i]);
  *reinterpret_cast<VecPack<T, V>*>(p) = pk;
}

__device__ __forceinline__ float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }

// Offsets into one scratch allocation, each rounded up to 16 bytes.
struct Layout {
  size_t bytes = 0;
  size_t add(size_t n) {
    const size_t at = bytes;
    bytes += (n + 15) / 16 * 16;
    return at;
  }
};
template <typename T>
T* at(void* base, size_t off) {
  return reinterpret_cast<T*>(static_cast<char*>(base) + off);
}

}  // namespace deltatron::cuda

// DT_DISPATCH_DTYPE(dt, T, body): runs `body` with `T` = float or __nv_bfloat16.
#define DT_DISPATCH_DTYPE(dt, T, ...)             \
  do {                                            \
    if ((dt) == ::deltatron::cuda::DType::bf16) { \
      using T = __nv_bfloat16;                    \
      __VA_ARGS__;                                \
    } else {                                      \
      using T = float;                            \
      __VA_ARGS__;                                \
    }                                             \
  } while (0)

// After a kernel launch: turns a launch failure into core::Error naming the kernel.
#define DT_CUDA_LAUNCH_CHECK(name) DT_CUDA_CHECK(cudaGetLastError())
