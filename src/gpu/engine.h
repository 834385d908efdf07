// The GPU engine behind train::make_engine("cuda", ...).
#pragma once

#include <memory>

#include "train/engine.h"

namespace deltatron::gpu {

std::unique_ptr<train::Engine> make_gpu_engine(bool fp32, const model::Config& c,
                                               model::TensorMap& params, const train::AdamW* opt,
                                               bool recompute);

}  // namespace deltatron::gpu
