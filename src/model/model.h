// The Qwen3.5 text model over a pack: forward, per-sample language-model loss, explicit backward.
#pragma once

#include <cstdint>
#include <vector>

#include "core/device.h"
#include "data/pack.h"
#include "model/config.h"
#include "model/weights.h"

namespace deltatron::model {

// Per-sample results of one pack, in pack order (pack.sample_index maps to the dataset).
struct PackLoss {
  std::vector<double> loss_sum;   // sum of token cross-entropies over the sample's label tokens
  std::vector<int64_t> n_tokens;  // number of those tokens
};

// Forward (spec 2.1-2.11) and, when grads != nullptr, backward of
//   objective = grad_scale * sum over all label tokens of the pack of CE(logits_t, targets_t).
// Parameter gradients ACCUMULATE into grads (which must hold a zero-initialised buffer for every
// parameter, see zeros_like). The backward is the forward loop reversed, written out by hand.
// Logits are never materialised for the whole pack: the head and the loss run over chunks of
// label-carrying rows only.
PackLoss model_fwd_bwd(core::Device dev, const Config& c, const TensorMap& params,
                       const data::Pack& pack, TensorMap* grads, float grad_scale = 1.f);

// Name of the output-projection matrix: embed_tokens when tied, else lm_head.weight.
std::string lm_head_name(const Config& c);

}  // namespace deltatron::model
