// Device dispatch for the per-token cross-entropy op family.
#include "ops/cross_entropy.h"

#include "core/error.h"
#include "cpu/cross_entropy.h"

namespace deltatron::ops {

void cross_entropy_fwd(core::Device dev, const float* logits_NV, const int32_t* targets_N,
                       int64_t N, int64_t V, float* loss_N, float* lse_N) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::cross_entropy_fwd<float>(logits_NV, targets_N, N, V, loss_N, lse_N);
    case core::Device::cuda:
      core::fail("cross_entropy_fwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
  core::fail("cross_entropy_fwd: unknown device");
}

void cross_entropy_bwd(core::Device dev, const float* logits_NV, const int32_t* targets_N,
                       const float* lse_N, const float* dloss_N, int64_t N, int64_t V,
                       float* dlogits_NV) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::cross_entropy_bwd<float>(logits_NV, targets_N, lse_N, dloss_N, N, V, dlogits_NV);
    case core::Device::cuda:
      core::fail("cross_entropy_bwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
  core::fail("cross_entropy_bwd: unknown device");
}

}  // namespace deltatron::ops
