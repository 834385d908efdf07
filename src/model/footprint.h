// What a model needs in memory before anything is allocated (train/memory_plan.h): its parameter
// count and a plan of the activations one pack keeps for the backward.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "model/config.h"

namespace deltatron::model {

// Elements of every trained tensor (param_specs).
int64_t param_count(const Config& c);

// Bytes the forward of an N-token pack keeps for the backward, in compute dtype dt (an upper
// estimate from the block shapes: residual streams, norms, projections, the GDN or attention
// internals, the MLP or the routed experts' rows, the MTP layer). recompute: each layer keeps
// only its input, and one layer's activations are alive at a time in the backward.
double activation_bytes(const Config& c, int64_t N, core::DType dt, bool recompute);

}  // namespace deltatron::model
