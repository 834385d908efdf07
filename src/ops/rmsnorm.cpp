// Device dispatch for the RMSNorm op family.
#include "ops/rmsnorm.h"

#include "core/error.h"
#include "cpu/rmsnorm.h"

namespace deltatron::ops {

void rmsnorm_fwd(core::Device dev, const float* x_ND, const float* w_D, int64_t N, int64_t D,
                 double eps, float* y_ND, float* rstd_N) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::rmsnorm_fwd<float>(x_ND, w_D, N, D, eps, y_ND, rstd_N);
    case core::Device::cuda:
      core::fail("rmsnorm_fwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
  core::fail("rmsnorm_fwd: unknown device");
}

void rmsnorm_bwd(core::Device dev, const float* x_ND, const float* w_D, const float* rstd_N,
                 const float* dy_ND, int64_t N, int64_t D, float* dx_ND, float* dw_D) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::rmsnorm_bwd<float>(x_ND, w_D, rstd_N, dy_ND, N, D, dx_ND, dw_D);
    case core::Device::cuda:
      core::fail("rmsnorm_bwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
  core::fail("rmsnorm_bwd: unknown device");
}

void rmsnorm_gated_fwd(core::Device dev, const float* x_ND, const float* z_ND, const float* w_D,
                       int64_t N, int64_t D, double eps, float* y_ND, float* rstd_N) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::rmsnorm_gated_fwd<float>(x_ND, z_ND, w_D, N, D, eps, y_ND, rstd_N);
    case core::Device::cuda:
      core::fail("rmsnorm_gated_fwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
  core::fail("rmsnorm_gated_fwd: unknown device");
}

void rmsnorm_gated_bwd(core::Device dev, const float* x_ND, const float* z_ND, const float* w_D,
                       const float* rstd_N, const float* dy_ND, int64_t N, int64_t D, float* dx_ND,
                       float* dz_ND, float* dw_D) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::rmsnorm_gated_bwd<float>(x_ND, z_ND, w_D, rstd_N, dy_ND, N, D, dx_ND, dz_ND,
                                           dw_D);
    case core::Device::cuda:
      core::fail("rmsnorm_gated_bwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
  core::fail("rmsnorm_gated_bwd: unknown device");
}

}  // namespace deltatron::ops
