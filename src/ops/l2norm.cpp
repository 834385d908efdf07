// Device dispatch for the L2 normalisation op family.
#include "ops/l2norm.h"

#include "core/error.h"
#include "cpu/l2norm.h"
#include "ops/check.h"
#ifdef DT_HAVE_CUDA
#include "cuda/norms.h"
#endif

namespace deltatron::ops {

void l2norm_fwd(const View& x_ND, int64_t N, int64_t D, double eps, const View& y_ND,
                const View& rstd_N) {
  Args a("l2norm_fwd");
  a.nonneg(N, "N"), a.nonneg(D, "D");
  a.need(x_ND, "x_ND", dtypes::act, N * D);
  a.need(y_ND, "y_ND", dtypes::act, N * D);
  a.same_dtype(x_ND, "x_ND", y_ND, "y_ND");
  a.need(rstd_N, "rstd_N", dtypes::f32, N);
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::l2norm_fwd<float>(x_ND.f32(), N, D, eps, y_ND.f32(), rstd_N.f32());
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::l2norm_fwd(x_ND.dtype, x_ND.data, N, D, eps, y_ND.data, rstd_N.f32());
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void l2norm_bwd(const View& y_ND, const View& rstd_N, const View& dy_ND, int64_t N, int64_t D,
                const View& dx_ND) {
  Args a("l2norm_bwd");
  a.nonneg(N, "N"), a.nonneg(D, "D");
  a.need(y_ND, "y_ND", dtypes::act, N * D);
  a.need(rstd_N, "rstd_N", dtypes::f32, N);
  a.need(dy_ND, "dy_ND", dtypes::act, N * D);
  a.same_dtype(y_ND, "y_ND", dy_ND, "dy_ND");
  a.need(dx_ND, "dx_ND", dtypes::act, N * D);
  a.same_dtype(y_ND, "y_ND", dx_ND, "dx_ND");
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::l2norm_bwd<float>(y_ND.f32(), rstd_N.f32(), dy_ND.f32(), N, D, dx_ND.f32());
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::l2norm_bwd(y_ND.dtype, y_ND.data, rstd_N.f32(), dy_ND.data, N, D, dx_ND.data);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

}  // namespace deltatron::ops
