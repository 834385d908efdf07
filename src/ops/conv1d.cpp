// Device dispatch for the GDN causal depthwise conv1d + SiLU.
#include "ops/conv1d.h"

#include "core/error.h"
#include "cpu/conv1d.h"

namespace deltatron::ops {

void conv1d_fwd(core::Device dev, const float* x_NC, const float* w_CW, core::Segments seg,
                int64_t N, int64_t C, int64_t W, float* y_NC) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::conv1d_fwd<float>(x_NC, w_CW, seg, N, C, W, y_NC);
    case core::Device::cuda:
      core::fail("conv1d_fwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
  core::fail("conv1d_fwd: unknown device");
}

void conv1d_bwd(core::Device dev, const float* x_NC, const float* w_CW, core::Segments seg,
                const float* dy_NC, int64_t N, int64_t C, int64_t W, float* dx_NC, float* dw_CW) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::conv1d_bwd<float>(x_NC, w_CW, seg, dy_NC, N, C, W, dx_NC, dw_CW);
    case core::Device::cuda:
      core::fail("conv1d_bwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
  core::fail("conv1d_bwd: unknown device");
}

}  // namespace deltatron::ops
