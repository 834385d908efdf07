// Contract for the bias-free linear layer op family (every projection and the LM head).
//
// Shape suffixes: N tokens, I input features, O output features. W is stored [O, I] as in HF
// (nn.Linear.weight). Views (docs/ops-views.md), one device per call: x, W (and dy) share one
// storage type, f32 or bf16 on CUDA, f32 on the CPU; outputs y and dx are f32 or bf16 (CUDA), f32
// (CPU); dW is f32. Flat views are fine: each is checked by its element count against N, I, O.
// CPU: one BLAS GEMM per product (cpu::linear_*).
#pragma once

#include <cstdint>

#include "core/view.h"

namespace deltatron::ops {

// Every product may be scaled by alpha (default 1: exactly the unscaled op), applied to the
// accumulated product before it is stored or added (a LoRA adapter's alpha / r): in fp32 on CUDA,
// on the CPU in double inside cpu::gemm's one rounding, together with an accumulate.
//
// Forward: y = x W^T, y[n,o] = sum_i x[n,i] W[o,i].
//   x_NI [N, I] in;  W_OI [O, I] in;
//   y_NO [N, O] out: OVERWRITTEN, or ACCUMULATED (+=) when accumulate (a residual-add epilogue).
// Saved for backward: x_NI (and W_OI).
void linear_fwd(const core::View& x_NI, const core::View& W_OI, int64_t N, int64_t I, int64_t O,
                const core::View& y_NO, bool accumulate, float alpha = 1.0f);

// Backward, input gradient: dx = dy W, dx[n,i] = sum_o dy[n,o] W[o,i].
//   dy_NO [N, O], W_OI [O, I] in;
//   dx_NI [N, I] out: OVERWRITTEN, or ACCUMULATED (+=) when accumulate (use it to sum several
//   projections of one input, e.g. q/k/v or gate/up).
void linear_bwd_dx(const core::View& dy_NO, const core::View& W_OI, int64_t N, int64_t I, int64_t O,
                   const core::View& dx_NI, bool accumulate, float alpha = 1.0f);

// Backward, weight gradient: dW += dy^T x, dW[o,i] += sum_n dy[n,o] x[n,i].
//   x_NI [N, I], dy_NO [N, O] in;  dW_OI [O, I] f32 inout, ACCUMULATED; or OVERWRITTEN when not
//   accumulate (the step's first write of a gradient: model::Params::g_target; dW is not read).
void linear_bwd_dw(const core::View& x_NI, const core::View& dy_NO, int64_t N, int64_t I, int64_t O,
                   const core::View& dW_OI, float alpha = 1.0f, bool accumulate = true);

// Bias (the vision tower's projections, nn.Linear with bias): y[n,o] += b[o].
//   y_NO [N, O] inout;  b_O [O] in: each f32, or bf16 on CUDA (they may differ: an f32 residual
//   stream plus a bf16 bias, rounded once into y's type).
void bias_add(const core::View& y_NO, const core::View& b_O, int64_t N, int64_t O);

// Bias gradient: db[o] += sum_n dy[n,o], summed over rows in order (deterministic).
//   dy_NO [N, O] in (f32, or bf16 on CUDA);  db_O [O] f32 inout, ACCUMULATED.
void bias_bwd(const core::View& dy_NO, int64_t N, int64_t O, const core::View& db_O);

// GEMM algorithm searches the process has made on the device (cuBLASLt heuristic queries: one per
// new shape, cuda/linear.cu); the CPU makes none (0).
int64_t linear_heuristic_queries(core::Device dev);

// Host milliseconds spent so far on new GEMM plans: the searches, and the first call of each new
// plan (cuda/linear.h LinearPlanTime); the CPU spends none ({0, 0}).
struct LinearPlanMs {
  double search = 0, first_call = 0;
};
LinearPlanMs linear_plan_ms(core::Device dev);

}  // namespace deltatron::ops
