// What a model needs in memory before anything is allocated (train/memory_plan.h): its parameter
// count and a plan of the activations one pack keeps for the backward.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "model/activations.h"
#include "model/config.h"

namespace deltatron::model {

// Elements of every trained tensor (param_specs).
int64_t param_count(const Config& c);
// Of those, the elements of the tensors the run does not train (model.vision = frozen: the
// tower and merger; merger: the tower without the merger), which model::Model holds apart as
// compute-dtype weights alone (model/model.h); 0 otherwise.
int64_t frozen_param_count(const Config& c);

// Bytes of activation buffers an N-token pack needs at most at once in its forward and backward,
// compute dtype dt: the peak of the activation account (model/activations.h: every layer's kept
// tensors plus the largest phase's temporaries; o.recompute: each layer keeps only its input,
// o.selective: the cheap intermediates are recomputed in the backward).
double activation_bytes(const Config& c, int64_t N, core::DType dt, const ActivationOptions& o);

// Bytes the vision tower needs for P patches (model/vision_tower.cpp, f32 on every device): what
// its forward keeps for the backward under c.vision_mode (full: every block's activations and
// the merger's; merger: the merger's; frozen or off: nothing) plus the pixels and one block's
// temporaries, alive while it runs. 0 when vision_mode is off or P = 0.
double vision_activation_bytes(const Config& c, int64_t P);

}  // namespace deltatron::model
