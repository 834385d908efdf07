// Device dispatch for the step-scalar ops (contracts in ops/step_scalars.h).
#include "ops/step_scalars.h"

#include "core/step_scalars.h"
#include "cpu/step_scalars.h"
#include "ops/check.h"
#include "ops/moe.h"
#ifdef DT_HAVE_CUDA
#include "cuda/step_scalars.h"
#endif

namespace deltatron::ops {

void step_loss_sum_add(const View& loss_N, const View& targets_N, const View& cu_S1, int64_t S,
                       int64_t N, const View& sum_1) {
  Args a("step_loss_sum_add");
  a.nonneg(S, "S");
  a.nonneg(N, "N");
  a.need(sum_1, "sum_1", dtypes::f64, 1);
  a.need(loss_N, "loss_N", dtypes::f32, N);
  a.need(targets_N, "targets_N", dtypes::i32, N);
  a.need(cu_S1, "cu_S1", dtypes::i32, S + 1);
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::step_loss_sum_add(loss_N.f32(), targets_N.i32(), cu_S1.i32(), S, N, sum_1.f64());
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::step_loss_sum_add(loss_N.f32(), targets_N.i32(), cu_S1.i32(), S, N, sum_1.f64());
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void step_scalar_add(const View& x_1, const View& y_1) {
  Args a("step_scalar_add");
  a.need(y_1, "y_1", dtypes::f64, 1);
  a.need(x_1, "x_1", dtypes::f64, 1);
  switch (a.device()) {
    case core::Device::cpu:
      y_1.f64()[0] += x_1.f64()[0];
      return;
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::step_scalar_add(x_1.f64(), y_1.f64());
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void step_moe_errors(const View& bad_3, const View& scalars) {
  Args a("step_moe_errors");
  a.need(scalars, "scalars", dtypes::f64, core::kStepScalars);
  a.need(bad_3, "bad_3", dtypes::i32, kMoeBadWords);
  auto* s = reinterpret_cast<core::StepScalars*>(scalars.f64());
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::step_moe_errors(bad_3.i32(), kNoBadToken, s);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::step_moe_errors(bad_3.i32(), kNoBadToken, s);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void step_gate(const View& scalars, double max_norm, double label_tokens) {
  Args a("step_gate");
  a.need(scalars, "scalars", dtypes::f64, core::kStepScalars);
  DT_CHECK(label_tokens >= 1, "ops::step_gate: label_tokens = ", label_tokens, " (at least 1)");
  auto* s = reinterpret_cast<core::StepScalars*>(scalars.f64());
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::step_gate(s, max_norm, label_tokens);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::step_gate(s, max_norm, label_tokens);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

}  // namespace deltatron::ops
