// What a model needs in memory before anything is allocated (train/memory_plan.h): its parameter
// count and a plan of the activations one pack keeps for the backward.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "model/config.h"

namespace deltatron::model {

// Elements of every trained tensor (param_specs).
int64_t param_count(const Config& c);
// Of those, the elements of the tensors the run does not train (model.vision = frozen: the
// tower and merger; merger: the tower without the merger), which model::Model holds apart as
// compute-dtype weights alone (model/model.h); 0 otherwise.
int64_t frozen_param_count(const Config& c);

// Bytes the forward of an N-token pack keeps for the backward, in compute dtype dt (an upper
// estimate from the block shapes: residual streams, norms, projections, the GDN or attention
// internals, the MLP or the routed experts' rows, the MTP layer). recompute: each layer keeps
// only its input, and one layer's activations are alive at a time in the backward.
double activation_bytes(const Config& c, int64_t N, core::DType dt, bool recompute);

// Bytes the vision tower needs for P patches (model/vision_tower.cpp, f32 on every device): what
// its forward keeps for the backward under c.vision_mode (full: every block's activations and
// the merger's; merger: the merger's; frozen or off: nothing) plus the pixels and one block's
// temporaries, alive while it runs. 0 when vision_mode is off or P = 0.
double vision_activation_bytes(const Config& c, int64_t P);

}  // namespace deltatron::model
