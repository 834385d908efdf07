// Device dispatch for the attention core.
#include "ops/attention.h"

#include "core/error.h"
#include "cpu/attention.h"

namespace deltatron::ops {

void attention_fwd(core::Device dev, const float* q_NHK, const float* k_NJK, const float* v_NJK,
                   core::Segments seg, int64_t N, int64_t H, int64_t J, int64_t K, float scale,
                   float* o_NHK, float* lse_NH) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::attention_fwd<float>(q_NHK, k_NJK, v_NJK, seg, N, H, J, K, scale, o_NHK, lse_NH);
    case core::Device::cuda:
      core::fail("attention_fwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
  core::fail("attention_fwd: unknown device");
}

void attention_bwd(core::Device dev, const float* q_NHK, const float* k_NJK, const float* v_NJK,
                   const float* o_NHK, const float* lse_NH, const float* do_NHK, core::Segments seg,
                   int64_t N, int64_t H, int64_t J, int64_t K, float scale, float* dq_NHK,
                   float* dk_NJK, float* dv_NJK) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::attention_bwd<float>(q_NHK, k_NJK, v_NJK, o_NHK, lse_NH, do_NHK, seg, N, H, J, K,
                                       scale, dq_NHK, dk_NJK, dv_NJK);
    case core::Device::cuda:
      core::fail("attention_bwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
  core::fail("attention_bwd: unknown device");
}

}  // namespace deltatron::ops
