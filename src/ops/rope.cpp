// Device dispatch for the rotary embedding op.
#include "ops/rope.h"

#include "core/error.h"
#include "cpu/rope.h"

namespace deltatron::ops {

void rope_fwd(core::Device dev, float* x_NHK, const int32_t* pos_3N, int64_t N, int64_t H,
              int64_t K, int64_t R, double theta, const int mrope_section[3]) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::rope_fwd<float>(x_NHK, pos_3N, N, H, K, R, theta, mrope_section);
    case core::Device::cuda:
      core::fail("rope_fwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
  core::fail("rope_fwd: unknown device");
}

void rope_bwd(core::Device dev, float* dx_NHK, const int32_t* pos_3N, int64_t N, int64_t H,
              int64_t K, int64_t R, double theta, const int mrope_section[3]) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::rope_bwd<float>(dx_NHK, pos_3N, N, H, K, R, theta, mrope_section);
    case core::Device::cuda:
      core::fail("rope_bwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
  core::fail("rope_bwd: unknown device");
}

}  // namespace deltatron::ops
