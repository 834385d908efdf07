// Element types of tensors on any device (views, buffers, CUDA storage types).
//
// Precision policy of the CUDA backend (docs/gpu-model.md): activations and compute copies of
// parameters are stored in bf16 (or f32 in the fp32 debug mode of the same kernels); every kernel
// computes and accumulates in fp32; parameter gradients are fp32. The CPU backend is float32 only
// (a bf16 view on the CPU is an error). Integer tensors (ids, targets, positions, segment bounds)
// are i32. f64 holds statistics that must stay exact (router counts and loss sums on a device).
// i64 holds row offsets that index more than 2^31 elements (the MoE experts' row offsets).
// u16 holds raw 16-bit halves: the remainders of the lean fp32 masters (core/bf16.h).
#pragma once

#include <cstddef>
#include <cstdint>

namespace deltatron::core {

enum class DType { f32, bf16, i32, f64, i64, u16 };

inline size_t dtype_size(DType t) {
  return t == DType::bf16 || t == DType::u16 ? 2 : t == DType::f64 || t == DType::i64 ? 8 : 4;
}
inline const char* dtype_name(DType t) {
  return t == DType::bf16  ? "bf16"
         : t == DType::i32 ? "i32"
         : t == DType::f64 ? "f64"
         : t == DType::i64 ? "i64"
         : t == DType::u16 ? "u16"
                           : "f32";
}

}  // namespace deltatron::core
