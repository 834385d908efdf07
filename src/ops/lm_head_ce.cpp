// Device dispatch for the fused LM head + cross-entropy op.
#include "ops/lm_head_ce.h"

#include <algorithm>

#include "core/error.h"
#include "cpu/lm_head_ce.h"
#include "ops/check.h"
#ifdef DT_HAVE_CUDA
#include "cuda/lm_head_ce.h"
#endif

namespace deltatron::ops {

void linear_cross_entropy(const core::View& x_ND, const core::View& W_VD,
                          const core::View& targets_N, const core::View& dloss_N, int64_t N,
                          int64_t D, int64_t V, const core::View& loss_N,
                          const core::View& correct_N, const core::View& dx_ND, bool accumulate_dx,
                          const core::View& dW_VD, bool accumulate_dw) {
  Args a("linear_cross_entropy");
  a.nonneg(N, "N"), a.nonneg(D, "D"), a.nonneg(V, "V");
  a.need(x_ND, "x_ND", dtypes::act, N * D);
  a.need(W_VD, "W_VD", {x_ND.dtype}, V * D);
  a.need(targets_N, "targets_N", dtypes::i32, N);
  a.maybe(dloss_N, "dloss_N", dtypes::f32, N);
  a.need(loss_N, "loss_N", dtypes::f32, N);
  a.maybe(correct_N, "correct_N", dtypes::i32, N);
  a.maybe(dx_ND, "dx_ND", {x_ND.dtype}, N * D);
  a.maybe(dW_VD, "dW_VD", dtypes::f32, V * D);
  DT_CHECK(!dloss_N.empty() || (dx_ND.empty() && dW_VD.empty()), "ops::", a.op(),
           ": dx_ND or dW_VD given without dloss_N (forward only takes neither)");
  int32_t* correct = correct_N.empty() ? nullptr : correct_N.i32();
  float* dW = dW_VD.empty() ? nullptr : dW_VD.f32();
  const float* dloss = dloss_N.empty() ? nullptr : dloss_N.f32();
  switch (a.device()) {
    case core::Device::cpu:
      if (dW && !accumulate_dw) std::fill(dW, dW + V * D, 0.f);  // overwrite = add to zeros
      return cpu::linear_cross_entropy<float>(
          x_ND.f32(), W_VD.f32(), targets_N.i32(), dloss, N, D, V, loss_N.f32(), correct,
          dx_ND.empty() ? nullptr : dx_ND.f32(), accumulate_dx, dW);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::linear_cross_entropy(x_ND.dtype, x_ND.data, W_VD.data, targets_N.i32(), dloss, N,
                                        D, V, loss_N.f32(), correct, dx_ND.data, accumulate_dx, dW,
                                        0, 0, accumulate_dw);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

}  // namespace deltatron::ops
