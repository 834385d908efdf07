// Output projection + cross-entropy over label-carrying rows, chunked so the full logits matrix
// [N, vocab] is never materialised.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/device.h"
#include "model/config.h"
#include "model/weights.h"

namespace deltatron::model {

// Name of the output-projection matrix: embed_tokens when tied, else lm_head.weight.
std::string lm_head_name(const Config& c);

// loss_N[t] = CE(h_t lm_head^T, targets_N[t]) for targets != -100, else 0 (returned, double).
// If grads != nullptr: dh_ND (overwritten, [N, D]) = d(grad_scale * sum_t loss_t)/dh and the
// lm_head gradient accumulates. Rows are processed in chunks of about 4M logits. If correct_N
// is given, correct_N[t] = 1 where argmax of the logits equals the target (label rows only).
std::vector<double> lm_head_loss(core::Device dev, const Config& c, const TensorMap& params,
                                 TensorMap* grads, int64_t N, const int32_t* targets_N,
                                 const float* h_ND, float* dh_ND, float grad_scale,
                                 uint8_t* correct_N = nullptr);

}  // namespace deltatron::model
