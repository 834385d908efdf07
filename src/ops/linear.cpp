// Device dispatch for the bias-free linear layer op family.
#include "ops/linear.h"

#include "core/error.h"
#include "cpu/linear.h"
#ifdef DT_HAVE_CUDA
#include "cuda/linear.h"
#endif

namespace deltatron::ops {

void linear_fwd(core::Device dev, const float* x_NI, const float* W_OI, int64_t N, int64_t I,
                int64_t O, float* y_NO) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::linear_fwd<float>(x_NI, W_OI, N, I, O, y_NO);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::linear_fwd(cuda::DType::f32, x_NI, W_OI, N, I, O, y_NO);
#else
      core::fail("linear_fwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
#endif
  }
  core::fail("linear_fwd: unknown device");
}

void linear_bwd(core::Device dev, const float* x_NI, const float* W_OI, const float* dy_NO,
                int64_t N, int64_t I, int64_t O, float* dx_NI, bool accumulate_dx, float* dW_OI) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::linear_bwd<float>(x_NI, W_OI, dy_NO, N, I, O, dx_NI, accumulate_dx, dW_OI);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::linear_bwd(cuda::DType::f32, x_NI, W_OI, dy_NO, N, I, O, dx_NI, accumulate_dx,
                              dW_OI);
#else
      core::fail("linear_bwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
#endif
  }
  core::fail("linear_bwd: unknown device");
}

}  // namespace deltatron::ops
