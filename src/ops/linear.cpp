// Device dispatch for the bias-free linear layer op family.
#include "ops/linear.h"

#include "core/error.h"
#include "cpu/linear.h"
#include "ops/check.h"
#ifdef DT_HAVE_CUDA
#include "cuda/linear.h"
#include "cuda/pointwise.h"
#endif

namespace deltatron::ops {

void linear_fwd(const View& x_NI, const View& W_OI, int64_t N, int64_t I, int64_t O,
                const View& y_NO, bool accumulate, float alpha) {
  Args a("linear_fwd");
  a.nonneg(N, "N"), a.nonneg(I, "I"), a.nonneg(O, "O");
  a.need(x_NI, "x_NI", dtypes::act, N * I);
  a.need(W_OI, "W_OI", dtypes::act, O * I);
  a.same_dtype(x_NI, "x_NI", W_OI, "W_OI");
  a.need(y_NO, "y_NO", dtypes::act, N * O);
  switch (a.device()) {
    case core::Device::cpu:  // accumulate and alpha inside the one rounding (cpu::gemm)
      return cpu::linear_fwd<float>(x_NI.f32(), W_OI.f32(), N, I, O, y_NO.f32(), accumulate, alpha);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::linear_fwd(x_NI.dtype, x_NI.data, W_OI.data, N, I, O, y_NO.dtype, y_NO.data,
                              accumulate, alpha);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void linear_bwd_dx(const View& dy_NO, const View& W_OI, int64_t N, int64_t I, int64_t O,
                   const View& dx_NI, bool accumulate, float alpha) {
  Args a("linear_bwd_dx");
  a.nonneg(N, "N"), a.nonneg(I, "I"), a.nonneg(O, "O");
  a.need(dy_NO, "dy_NO", dtypes::act, N * O);
  a.need(W_OI, "W_OI", dtypes::act, O * I);
  a.same_dtype(dy_NO, "dy_NO", W_OI, "W_OI");
  a.need(dx_NI, "dx_NI", dtypes::act, N * I);
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::linear_bwd<float>(nullptr, W_OI.f32(), dy_NO.f32(), N, I, O, dx_NI.f32(),
                                    accumulate, nullptr, alpha);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::linear_bwd_dx(dy_NO.dtype, dy_NO.data, W_OI.data, N, I, O, dx_NI.dtype,
                                 dx_NI.data, accumulate, alpha);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void linear_bwd_dw(const View& x_NI, const View& dy_NO, int64_t N, int64_t I, int64_t O,
                   const View& dW_OI, float alpha, bool accumulate) {
  Args a("linear_bwd_dw");
  a.nonneg(N, "N"), a.nonneg(I, "I"), a.nonneg(O, "O");
  a.need(x_NI, "x_NI", dtypes::act, N * I);
  a.need(dy_NO, "dy_NO", dtypes::act, N * O);
  a.same_dtype(x_NI, "x_NI", dy_NO, "dy_NO");
  a.need(dW_OI, "dW_OI", dtypes::f32, O * I);
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::linear_bwd<float>(x_NI.f32(), nullptr, dy_NO.f32(), N, I, O, nullptr, false,
                                    dW_OI.f32(), alpha, accumulate);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::linear_bwd_dw(x_NI.dtype, x_NI.data, dy_NO.data, N, I, O, dW_OI.f32(), alpha,
                                 accumulate);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void bias_add(const View& y_NO, const View& b_O, int64_t N, int64_t O) {
  Args a("bias_add");
  a.nonneg(N, "N"), a.nonneg(O, "O");
  a.need(y_NO, "y_NO", dtypes::act, N * O);
  a.need(b_O, "b_O", dtypes::act, O);
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::bias_add<float>(y_NO.f32(), b_O.f32(), N, O);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::bias_add(y_NO.dtype, y_NO.data, b_O.dtype, b_O.data, N, O);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void bias_bwd(const View& dy_NO, int64_t N, int64_t O, const View& db_O) {
  Args a("bias_bwd");
  a.nonneg(N, "N"), a.nonneg(O, "O");
  a.need(dy_NO, "dy_NO", dtypes::act, N * O);
  a.need(db_O, "db_O", dtypes::f32, O);
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::bias_bwd<float>(dy_NO.f32(), N, O, db_O.f32());
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::bias_bwd(dy_NO.dtype, dy_NO.data, N, O, db_O.f32());
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

int64_t linear_heuristic_queries(core::Device dev) {
  switch (dev) {
    case core::Device::cpu:
      return 0;
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::linear_plan_count();  // one search per plan
#else
      core::fail(
          "ops::linear_heuristic_queries: a cuda device, but this binary was built without "
          "CUDA");
#endif
  }
  core::fail("ops::linear_heuristic_queries: unknown device");
}

LinearPlanMs linear_plan_ms(core::Device dev) {
  switch (dev) {
    case core::Device::cpu:
      return {};
    case core::Device::cuda: {
#ifdef DT_HAVE_CUDA
      const cuda::LinearPlanTime t = cuda::linear_plan_time();
      return {t.search_s * 1e3, t.first_call_s * 1e3};
#else
      core::fail("ops::linear_plan_ms: a cuda device, but this binary was built without CUDA");
#endif
    }
  }
  core::fail("ops::linear_plan_ms: unknown device");
}

}  // namespace deltatron::ops
