// LoRA on the routed experts (lora.experts, docs/lora.md): for a row r of expert e in the
// expert-major order, y_r += s (x_r A_e^T) B_e^T, through the grouped expert GEMMs (ops/moe.h)
// with rank-r widths: no per-expert delta weight is ever formed. A [E, r, I], B [E, O, r]
// (model/adapters.h), read in x's dtype (their compute copies); s the adapters' scale.
#pragma once

#include <cstdint>
#include <string>

#include "model/context.h"

namespace deltatron::model {

// The grouped GEMMs' row offsets (moe_permute's, device and optional host copy).
struct ExpertRows {
  View offsets;
  const int64_t* host = nullptr;
  int64_t E = 0, P = 0;
};

// Whether the fused expert parameter `param` has an adapter (and its rank, for host-offset
// decisions: 0 when not adapted).
int64_t expert_lora_rank(const Ctx& cx, const std::string& param);

// y [P, O] += s (x A^T) B^T per expert; nothing when `param` is not adapted.
void expert_lora_fwd(const Ctx& cx, const std::string& param, const ExpertRows& rows, const View& x,
                     int64_t I, int64_t O, const View& y);

// Backward of the adapter's share. dy_dx (or empty): the output gradient whose input gradient
// dx [P, I] ACCUMULATES s dy B A per expert. dy_params (or empty): the output gradient of the
// adapter's own gradients, dB_e += s dy_e^T (x_e A_e^T), dA_e += s (dy_e B_e)^T x_e. (The MoE
// down projection passes the unweighted and the slot-weighted gradients; gate/up one gradient.)
void expert_lora_bwd(const Ctx& cx, const std::string& param, const ExpertRows& rows, const View& x,
                     int64_t I, int64_t O, const View& dy_dx, const View& dx,
                     const View& dy_params);

}  // namespace deltatron::model
