// Random initialisation of a fresh model, following Hugging Face's Qwen3.5 `_init_weights`.
#pragma once

#include <cstdint>

#include "model/config.h"
#include "model/weights.h"

namespace deltatron::model {

// Every param_specs(c) tensor (spec 6): matrices, conv and embedding ~ N(0, initializer_range),
// zero-centred RMSNorm weights (layer norms, q/k norms, final and MTP norms) = 0, the gated
// norm weight (linear_attn.norm) = 1, dt_bias = 1, A_log = log(U(0.01, 16)); the
// embedding row of pad_token_id (if set) is zero. Deterministic for (c, seed): each tensor
// draws from its own generator seeded by seed and its name.
TensorMap init_params(const Config& c, uint64_t seed, double initializer_range = 0.02);

}  // namespace deltatron::model
