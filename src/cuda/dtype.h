// Storage types of the CUDA backend (host-safe header; device helpers are in kernel_util.cuh).
//
// Precision policy (issue 5): activations and compute copies of parameters are stored in
// `DType::bf16` (or `DType::f32` in the fp32 debug mode of the same kernels); every kernel
// computes and accumulates in fp32; reductions (norm statistics, softmax, CE, router, the GDN
// state) stay fp32 whatever the storage type. Parameter gradients are always fp32.
#pragma once

#include "core/dtype.h"

namespace deltatron::cuda {

// The engine's one element type (core/dtype.h); CUDA storage uses f32 and bf16.
using core::DType;
using core::dtype_name;
using core::dtype_size;

}  // namespace deltatron::cuda
