// Device dispatch for the fused LM head + cross-entropy op.
#include "ops/lm_head_ce.h"

#include "core/error.h"
#include "cpu/lm_head_ce.h"
#include "ops/check_views.h"
#ifdef DT_HAVE_CUDA
#include "cuda/lm_head_ce.h"
#endif

namespace deltatron::ops {

using core::DType;

void linear_cross_entropy(const core::View& x_ND, const core::View& W_VD,
                          const core::View& targets_N, const core::View& dloss_N, int64_t N,
                          int64_t D, int64_t V, const core::View& loss_N,
                          const core::View& correct_N, const core::View& dx_ND, bool accumulate_dx,
                          const core::View& dW_VD) {
  constexpr const char* op = "linear_cross_entropy";
  const core::Device dev = check::device_of(op, {{"x_ND", x_ND},
                                                 {"W_VD", W_VD},
                                                 {"targets_N", targets_N},
                                                 {"dloss_N", dloss_N},
                                                 {"loss_N", loss_N},
                                                 {"correct_N", correct_N},
                                                 {"dx_ND", dx_ND},
                                                 {"dW_VD", dW_VD}});
  check::dims(op, {N, D, V});
  const check::Types act = check::activation_types(dev);
  check::view(op, "x_ND", x_ND, dev, N * D, act);
  check::view(op, "W_VD", W_VD, dev, V * D, x_ND.dtype);
  check::view(op, "targets_N", targets_N, dev, N, DType::i32);
  check::optional(op, "dloss_N", dloss_N, dev, N, DType::f32);
  check::view(op, "loss_N", loss_N, dev, N, DType::f32);
  check::optional(op, "correct_N", correct_N, dev, N, DType::i32);
  check::optional(op, "dx_ND", dx_ND, dev, N * D, x_ND.dtype);
  check::optional(op, "dW_VD", dW_VD, dev, V * D, DType::f32);
  DT_CHECK(!dloss_N.empty() || (dx_ND.empty() && dW_VD.empty()), "ops::", op,
           ": dx_ND or dW_VD given without dloss_N (forward only takes neither)");
  int32_t* correct = correct_N.empty() ? nullptr : correct_N.i32();
  float* dW = dW_VD.empty() ? nullptr : dW_VD.f32();
  const float* dloss = dloss_N.empty() ? nullptr : dloss_N.f32();
  switch (dev) {
    case core::Device::cpu:
      return cpu::linear_cross_entropy<float>(
          x_ND.f32(), W_VD.f32(), targets_N.i32(), dloss, N, D, V, loss_N.f32(), correct,
          dx_ND.empty() ? nullptr : dx_ND.f32(), accumulate_dx, dW);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::linear_cross_entropy(x_ND.dtype, x_ND.data, W_VD.data, targets_N.i32(), dloss, N,
                                        D, V, loss_N.f32(), correct, dx_ND.data, accumulate_dx, dW);
#else
      core::fail("ops::", op, ": this build has no CUDA backend");
#endif
  }
  core::fail("ops::", op, ": unknown device");
}

}  // namespace deltatron::ops
