// Contract for the bias-free linear layer op family (every projection and the LM head).
//
// Shape suffixes: N tokens, I input features, O output features. W is stored [O, I] as in HF
// (nn.Linear.weight). Contiguous row-major float32. CPU: one BLAS GEMM per product.
#pragma once

#include <cstdint>

#include "core/device.h"
#include "core/view.h"

namespace deltatron::ops {

// Forward: y = x W^T, y[n,o] = sum_i x[n,i] W[o,i].
//   x_NI [N, I] in;  W_OI [O, I] in;  y_NO [N, O] out, overwritten.
// Saved for backward: x_NI (and W_OI).
void linear_fwd(core::Device dev, const float* x_NI, const float* W_OI, int64_t N, int64_t I,
                int64_t O, float* y_NO);

// Backward:
//   dx = dy W        dx_NI [N, I] out: OVERWRITTEN, or ACCUMULATED (+=) when accumulate_dx
//                    (use it to sum several projections of one input, e.g. q/k/v or gate/up);
//                    nullptr skips the product (e.g. the first layer's input needs no gradient)
//   dW += dy^T x     dW_OI [O, I] inout: ACCUMULATED; nullptr skips (frozen weight)
//   x_NI [N, I], W_OI [O, I], dy_NO [N, O] in.
void linear_bwd(core::Device dev, const float* x_NI, const float* W_OI, const float* dy_NO,
                int64_t N, int64_t I, int64_t O, float* dx_NI, bool accumulate_dx, float* dW_OI);

// ---- view forms (docs/ops-views.md): one device switch, the CUDA contract on both devices ----
// x, W (and dy) share one storage type: f32 or bf16 on CUDA, f32 on the CPU; outputs y and dx
// are f32 or bf16 (CUDA), f32 (CPU); dW is f32. Flat views are fine: each is checked by its
// element count against N, I, O.

// y_NO (= or += when accumulate) x_NI W_OI^T.
void linear_fwd(const core::View& x_NI, const core::View& W_OI, int64_t N, int64_t I, int64_t O,
                const core::View& y_NO, bool accumulate);
// dx_NI (= or += when accumulate) dy_NO W_OI.
void linear_bwd_dx(const core::View& dy_NO, const core::View& W_OI, int64_t N, int64_t I, int64_t O,
                   const core::View& dx_NI, bool accumulate);
// dW_OI (f32) += dy_NO^T x_NI.
void linear_bwd_dw(const core::View& x_NI, const core::View& dy_NO, int64_t N, int64_t I, int64_t O,
                   const core::View& dW_OI);

}  // namespace deltatron::ops
