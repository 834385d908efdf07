// CPU AdamW update (see cpu/adamw.h): the arithmetic train::AdamW::step runs on every tensor.
#include "cpu/adamw.h"

#include <cmath>

#include "core/bf16.h"

namespace deltatron::cpu {

namespace {
// Elementwise loops parallelise only when the tensor is large enough to pay for the threads.
constexpr int64_t kParallelMin = 1 << 15;
}  // namespace

void adamw_step(float* p, float* m_p, float* v_p, const float* g, int64_t n,
                const AdamWStepArgs& args, double weight_decay, float* compute_copy) {
  AdamWStorage t;
  t.n = n;
  t.master = p;
  t.m_f32 = m_p;
  t.v_f32 = v_p;
  t.grad = g;
  t.copy_f32 = compute_copy;
  t.weight_decay = weight_decay;
  adamw_step(t, args);
}

void adamw_step(const AdamWStorage& t, const AdamWStepArgs& args) {
  // The gate (host memory here): a skipped step writes nothing; its scale is a float value.
  if (args.gate && args.gate[1] != 0) return;
  const double step = static_cast<double>(args.step);
  const double bias_correction1 = 1.0 - std::pow(args.beta1, step);
  const double bias_correction2 = 1.0 - std::pow(args.beta2, step);
  const float beta1 = static_cast<float>(args.beta1), beta2 = static_cast<float>(args.beta2);
  const float one_minus_beta1 = static_cast<float>(1.0 - args.beta1);
  const float one_minus_beta2 = static_cast<float>(1.0 - args.beta2);
  const float step_size = static_cast<float>(args.lr / bias_correction1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  const float eps = static_cast<float>(args.eps);
  const float decay = static_cast<float>(1.0 - args.lr * t.weight_decay);
  const float scale = args.gate ? static_cast<float>(args.gate[0]) : args.grad_scale;
  const bool scaled = scale != 1.0f;
  const bool pair = t.remainder != nullptr;
  const bool bf16_moments = t.m_bf16 != nullptr;
  const uint64_t key = core::random_key(args.seed, static_cast<uint64_t>(args.step));
  const float* g = t.grad;
  const int64_t n = t.n;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    float p = pair ? core::master_join(t.weight[i], t.remainder[i]) : t.master[i];
    float m = bf16_moments ? core::bf16_to_f32(t.m_bf16[i]) : t.m_f32[i];
    float v = bf16_moments ? core::bf16_to_f32(t.v_bf16[i]) : t.v_f32[i];
    const float gi = scaled ? g[i] * scale : g[i];
    p *= decay;
    m = beta1 * m + one_minus_beta1 * gi;
    v = beta2 * v + one_minus_beta2 * (gi * gi);
    const float denom = std::sqrt(v) / bc2_sqrt + eps;
    p -= step_size * (m / denom);
    if (pair) {
      core::master_split(p, t.weight[i], t.remainder[i]);
      if (t.master) t.master[i] = p;
    } else {
      t.master[i] = p;
      if (t.copy_f32) t.copy_f32[i] = p;
      if (t.copy_bf16) t.copy_bf16[i] = core::bf16_round_ties_away(p);
    }
    if (bf16_moments) {
      const uint64_t bits = core::random_bits(key, static_cast<uint64_t>(t.counter + i));
      t.m_bf16[i] = core::bf16_round_stochastic(m, uint32_t(bits));
      t.v_bf16[i] = core::bf16_round_stochastic(v, uint32_t(bits >> 16));
    } else {
      t.m_f32[i] = m;
      t.v_f32[i] = v;
    }
  }
}

void adamw_compute_copy(const float* master, uint16_t* copy, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) copy[i] = core::bf16_round_ties_away(master[i]);
}

}  // namespace deltatron::cpu
