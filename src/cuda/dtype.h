// Storage types of the CUDA backend (host-safe header; device helpers are in kernel_util.cuh).
//
// Precision policy (issue 5): activations and compute copies of parameters are stored in
// `DType::bf16` (or `DType::f32` in the fp32 debug mode of the same kernels); every kernel
// computes and accumulates in fp32; reductions (norm statistics, softmax, CE, router, the GDN
// state) stay fp32 whatever the storage type. Parameter gradients are always fp32.
#pragma once

#include <cstddef>
#include <cstdint>

namespace deltatron::cuda {

enum class DType { f32, bf16 };

inline size_t dtype_size(DType t) { return t == DType::bf16 ? 2 : 4; }
inline const char* dtype_name(DType t) { return t == DType::bf16 ? "bf16" : "f32"; }

}  // namespace deltatron::cuda
