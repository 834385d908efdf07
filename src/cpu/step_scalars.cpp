// CPU step-scalar ops (see step_scalars.h): the trainer's former host arithmetic, written once.
#include "cpu/step_scalars.h"

#include <cmath>

#include "core/constants.h"
#include "core/error.h"

namespace deltatron::cpu {

void step_loss_sum_add(const float* loss, const int32_t* targets, const int32_t* cu, int64_t S,
                       int64_t N, double* sum) {
  DT_CHECK(S == 0 || cu[0] == 0, "step_loss_sum_add: cu[0] = ", cu[0], ", expected 0");
  for (int64_t s = 0; s < S; ++s) {
    DT_CHECK(cu[s] <= cu[s + 1] && cu[s + 1] <= N, "step_loss_sum_add: bounds cu[", s,
             "] = ", cu[s], ", cu[", s + 1, "] = ", cu[s + 1], " of a pack of ", N, " tokens");
    double acc = 0;  // the sample's sum (model::sum_per_sample)
    for (int64_t t = cu[s]; t < cu[s + 1]; ++t)
      if (targets[t] != core::kIgnoreIndex) acc += double(loss[t]);
    *sum += acc;  // the step's (what the trainer added on the host)
  }
}

void step_moe_errors(const int32_t* bad, int32_t none, core::StepScalars* s) {
  if (s->moe_error != 0 || (bad[0] == none && bad[1] == none)) return;
  s->moe_error = 1;
  for (int k = 0; k < 3; ++k) s->moe_bad[k] = bad[k];
}

void step_gate(core::StepScalars* s, double max_norm, double label_tokens) {
  const double norm = std::sqrt(s->grad_squares);
  float scale = 1.0f;  // train::clip_scale
  if (std::isfinite(norm) && max_norm > 0) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) scale = static_cast<float>(coef);
  }
  s->grad_norm = norm;
  s->grad_scale = scale;
  const double loss = s->ce_sum / label_tokens;
  const bool finite = std::isfinite(loss) && std::isfinite(norm) && std::isfinite(s->router_sum);
  s->skip = finite && s->moe_error == 0 ? 0.0 : 1.0;
}

}  // namespace deltatron::cpu
