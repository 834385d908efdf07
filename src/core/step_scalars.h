// The scalars of one optimizer step that live on the model's device: the summed losses, the
// gradient norm, the clip scale and the skip decision, so a training step never waits for the
// device until its end, where the host reads them once (docs/perf.md, "Host synchronisations").
#pragma once

#include <cstddef>
#include <cstdint>

namespace deltatron::core {

// One f64 buffer of kStepScalars elements on the device (core::Buffer(dev, DType::f64,
// {kStepScalars})), laid out as this struct, zeroed at the start of each step; the host copies it
// whole into a StepScalars at the end. Who writes what, in step order:
//   ce_sum, mtp_sum, router_sum   the model, per pack (model::ModelOptions::step_scalars): the CE
//                                 and MTP CE sums over label tokens (each sample's sum, added in
//                                 pack order) and the router losses; summed over the ranks
//   grad_squares                  the engine (train::Engine::grad_squares)
//   moe_error, moe_bad            the model, per pack of a MoE model (ops::step_moe_errors): 1
//                                 and the first pack's MoE error words (ops/moe.h, bad_3) when a
//                                 pack recorded one; the host throws its error at the step's end
//   grad_norm, grad_scale, skip   ops::step_gate: sqrt(grad_squares), the clip factor and 1 when
//                                 the loss, router loss or norm is not finite or a MoE error was
//                                 recorded
// grad_scale and skip are adjacent: the AdamW update reads them as its gate (core::AdamWArgs).
struct StepScalars {
  double ce_sum = 0;
  double mtp_sum = 0;
  double router_sum = 0;
  double grad_squares = 0;
  double grad_norm = 0;
  double grad_scale = 1;  // a float value (the factor the update multiplies gradients by)
  double skip = 0;        // 1: no update
  double moe_error = 0;   // 1: moe_bad holds the first recorded MoE error words
  double moe_bad[3] = {0, 0, 0};
};

inline constexpr int64_t kStepScalars = int64_t(sizeof(StepScalars) / sizeof(double));
// Element offsets of the fields in the f64 buffer.
inline constexpr int64_t kStepCeSum = int64_t(offsetof(StepScalars, ce_sum) / sizeof(double));
inline constexpr int64_t kStepMtpSum = int64_t(offsetof(StepScalars, mtp_sum) / sizeof(double));
inline constexpr int64_t kStepRouterSum =
    int64_t(offsetof(StepScalars, router_sum) / sizeof(double));
inline constexpr int64_t kStepGradSquares =
    int64_t(offsetof(StepScalars, grad_squares) / sizeof(double));
inline constexpr int64_t kStepGate = int64_t(offsetof(StepScalars, grad_scale) / sizeof(double));
static_assert(offsetof(StepScalars, skip) == offsetof(StepScalars, grad_scale) + sizeof(double),
              "the AdamW gate is {grad_scale, skip}");
static_assert(kStepCeSum == 0 && kStepMtpSum == 1 && kStepRouterSum == 2,
              "the three losses are summed over the ranks as one view");

}  // namespace deltatron::core
