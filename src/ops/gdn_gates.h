// Contract for the Gated DeltaNet gate op family: beta (write strength), g (log-decay); spec 2.6.
//
// Shape suffixes: N tokens, G value heads (linear_num_value_heads). Views (docs/ops-views.md),
// one device per call: b, a, A_log, dt_bias, db, da one storage type dt (f32 or bf16 on CUDA, f32
// on the CPU); beta, g, dbeta, dg, dA_log, ddt_bias f32. The gates are computed in fp32, as in HF
// (spec 2.0).
#pragma once

#include <cstdint>

#include "core/view.h"

namespace deltatron::ops {

// Forward:
//   beta[n,h] = sigmoid(b[n,h])
//   g[n,h]    = -exp(A_log[h]) * softplus(a[n,h] + dt_bias[h])        (<= 0)
//   softplus(x) = x for x > 20 (PyTorch's threshold), else log1p(exp(x))
//   b_NG [N, G] in (in_proj_b output);  a_NG [N, G] in (in_proj_a output)
//   A_log_G [G] in (linear_attn.A_log);  dt_bias_G [G] in (linear_attn.dt_bias)
//   beta_NG, g_NG [N, G] out, overwritten
// Saved for backward: the inputs b_NG, a_NG (gates are recomputed).
void gdn_gates_fwd(const core::View& b_NG, const core::View& a_NG, const core::View& A_log_G,
                   const core::View& dt_bias_G, int64_t N, int64_t G, const core::View& beta_NG,
                   const core::View& g_NG);

// Backward, with u = a + dt_bias and s = sigmoid:
//   db[n,h]      = dbeta * s(b) (1 - s(b))                     [N, G] out OVERWRITTEN
//   da[n,h]      = -dg * exp(A_log) * softplus'(u)              [N, G] out OVERWRITTEN
//                  softplus'(u) = s(u), or 1 for u > 20
//   dA_log[h]   += sum_n dg * g                                 [G] inout ACCUMULATED
//   ddt_bias[h] += sum_n da[n,h]                                [G] inout ACCUMULATED
//   dbeta_NG, dg_NG [N, G] in. Head sums run in a fixed token order (deterministic).
void gdn_gates_bwd(const core::View& b_NG, const core::View& a_NG, const core::View& A_log_G,
                   const core::View& dt_bias_G, const core::View& dbeta_NG, const core::View& dg_NG,
                   int64_t N, int64_t G, const core::View& db_NG, const core::View& da_NG,
                   const core::View& dA_log_G, const core::View& ddt_bias_G);

}  // namespace deltatron::ops
