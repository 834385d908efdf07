// CPU AdamW update (see cpu/adamw.h): the arithmetic train::AdamW::step runs on every tensor.
#include "cpu/adamw.h"

#include <cmath>

namespace deltatron::cpu {

namespace {
// Elementwise loops parallelise only when the tensor is large enough to pay for the threads.
constexpr int64_t kParallelMin = 1 << 15;
}  // namespace

void adamw_step(float* p, float* m_p, float* v_p, const float* g, int64_t n,
                const AdamWStepArgs& args, double weight_decay, float* compute_copy) {
  const double t = static_cast<double>(args.step);
  const double bias_correction1 = 1.0 - std::pow(args.beta1, t);
  const double bias_correction2 = 1.0 - std::pow(args.beta2, t);
  const float beta1 = static_cast<float>(args.beta1), beta2 = static_cast<float>(args.beta2);
  const float one_minus_beta1 = static_cast<float>(1.0 - args.beta1);
  const float one_minus_beta2 = static_cast<float>(1.0 - args.beta2);
  const float step_size = static_cast<float>(args.lr / bias_correction1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  const float eps = static_cast<float>(args.eps);
  const float decay = static_cast<float>(1.0 - args.lr * weight_decay);
  const float scale = args.grad_scale;
  const bool scaled = scale != 1.0f;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = scaled ? g[i] * scale : g[i];
    p[i] *= decay;
    m_p[i] = beta1 * m_p[i] + one_minus_beta1 * gi;
    v_p[i] = beta2 * v_p[i] + one_minus_beta2 * (gi * gi);
    const float denom = std::sqrt(v_p[i]) / bc2_sqrt + eps;
    p[i] -= step_size * (m_p[i] / denom);
    if (compute_copy) compute_copy[i] = p[i];
  }
}

}  // namespace deltatron::cpu
