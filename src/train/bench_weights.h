// The random weights of `deltatron bench` (speed does not depend on the values), whole or as one
// rank's share under a parallel layout: counter-based per element, so a rank's slice holds the
// values the whole tensor has there and every layout starts from the same model.
#pragma once

#include <cstdint>

#include "model/config.h"
#include "model/params.h"
#include "model/weights.h"
#include "train/expert_parallel.h"
#include "train/tensor_parallel.h"

namespace deltatron::train {

// HF-like scales: N(0, 0.02) matrices, zero 1-D tensors except the ones (linear_attn.norm,
// dt_bias, the vision tower's LayerNorms: 1) and A_log (log(1 + 15 u)). This rank's share:
// the routed experts' slices of eg and the shards of tg (both off: the whole model), as one host
// map.
model::TensorMap bench_params(const model::Config& c, uint64_t seed, const ExpertGroups& eg,
                              const TensorGroups& tg);

// The same made one tensor at a time (no host copy of the model: LoRA's frozen base, ZeRO 3);
// with eg on, the specs are this rank's expert slices and only those values are made. Not with
// tensor parallelism.
model::ParamSource bench_source(const model::Config& c, uint64_t seed, const ExpertGroups& eg);

// Shapes without values (empty data) of the source's specs: what AdamW's decay groups need,
// without a host copy of the weights.
model::TensorMap shapes_only(const model::ParamSource& src);

}  // namespace deltatron::train
