// CPU reference for the router statistics and losses on f64 accumulators (ops/router_loss.h):
// the aux-loss coefficients; the sums and counts are cpu/moe.h's moe_aux_loss_fwd, moe_z_loss_*,
// moe_count_routes.
#pragma once

#include <cstdint>

namespace deltatron::cpu {

// Legend: G router-loss groups. Contract: src/ops/router_loss.h (AuxCoef).

// c_g = 0 if T <= 0, else numer / (k * T2), T2 = step_tokens > 0 ? T * step_tokens : T * T,
// T = tokens_G[g] (model::make_router_terms' formula and operation order). c_G [G] overwritten.
void moe_aux_coefs(const double* tokens_G, int64_t G, double numer, double k, double step_tokens,
                   double* c_G);

}  // namespace deltatron::cpu
