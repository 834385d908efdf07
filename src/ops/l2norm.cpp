// Device dispatch for the L2 normalisation op family.
#include "ops/l2norm.h"

#include "core/error.h"
#include "cpu/l2norm.h"

namespace deltatron::ops {

void l2norm_fwd(core::Device dev, const float* x_ND, int64_t N, int64_t D, double eps, float* y_ND,
                float* rstd_N) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::l2norm_fwd<float>(x_ND, N, D, eps, y_ND, rstd_N);
    case core::Device::cuda:
      core::fail("l2norm_fwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
  core::fail("l2norm_fwd: unknown device");
}

void l2norm_bwd(core::Device dev, const float* y_ND, const float* rstd_N, const float* dy_ND,
                int64_t N, int64_t D, float* dx_ND) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::l2norm_bwd<float>(y_ND, rstd_N, dy_ND, N, D, dx_ND);
    case core::Device::cuda:
      core::fail("l2norm_bwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
  core::fail("l2norm_bwd: unknown device");
}

}  // namespace deltatron::ops
