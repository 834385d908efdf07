// The GPU engine behind train::make_engine("cuda", ...).
#pragma once

#include <memory>

#include "train/engine.h"

namespace deltatron::gpu {

std::unique_ptr<train::Engine> make_gpu_engine(bool fp32, const model::Config& c,
                                               model::TensorMap& params, const train::AdamW* opt,
                                               bool recompute);

// Registers make_gpu_engine as train::make_engine's "cuda" engine (train/ does not include gpu/).
inline void install_engine() { train::register_cuda_engine(&make_gpu_engine); }

}  // namespace deltatron::gpu
