// Device dispatch for the elementwise activation op family.
#include "ops/activation.h"

#include "core/error.h"
#include "cpu/activation.h"

namespace deltatron::ops {

void swiglu_fwd(core::Device dev, const float* gate_NF, const float* up_NF, int64_t n, float* h) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::swiglu_fwd<float>(gate_NF, up_NF, n, h);
    case core::Device::cuda:
      core::fail("swiglu_fwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
  core::fail("swiglu_fwd: unknown device");
}

void swiglu_bwd(core::Device dev, const float* gate, const float* up, const float* dh, int64_t n,
                float* dgate, float* dup) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::swiglu_bwd<float>(gate, up, dh, n, dgate, dup);
    case core::Device::cuda:
      core::fail("swiglu_bwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
  core::fail("swiglu_bwd: unknown device");
}

void sigmoid_mul_fwd(core::Device dev, const float* a, const float* g, int64_t n, float* out) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::sigmoid_mul_fwd<float>(a, g, n, out);
    case core::Device::cuda:
      core::fail("sigmoid_mul_fwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
  core::fail("sigmoid_mul_fwd: unknown device");
}

void sigmoid_mul_bwd(core::Device dev, const float* a, const float* g, const float* dout, int64_t n,
                     float* da, float* dg) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::sigmoid_mul_bwd<float>(a, g, dout, n, da, dg);
    case core::Device::cuda:
      core::fail("sigmoid_mul_bwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
  core::fail("sigmoid_mul_bwd: unknown device");
}

}  // namespace deltatron::ops
