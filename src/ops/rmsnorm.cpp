// Device dispatch for the RMSNorm op family.
#include "ops/rmsnorm.h"

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "cpu/rmsnorm.h"
#include "cpu/tensor.h"
#include "ops/check.h"
#ifdef DT_HAVE_CUDA
#include "cuda/norms.h"
#endif

namespace deltatron::ops {

void rmsnorm_fwd(const View& x_ND, const View& w_D, int64_t N, int64_t D, double eps,
                 const View& y_ND, const View& rstd_N, const View& x_copy) {
  Args a("rmsnorm_fwd");
  a.nonneg(N, "N"), a.nonneg(D, "D");
  a.need(x_ND, "x_ND", dtypes::act, N * D);
  a.need(w_D, "w_D", dtypes::act, D);
  a.need(y_ND, "y_ND", dtypes::act, N * D);
  a.same_dtype(w_D, "w_D", y_ND, "y_ND");
  a.need(rstd_N, "rstd_N", dtypes::f32, N);
  const bool copy = a.maybe(x_copy, "x_copy", dtypes::act, N * D);
  if (copy) {
    a.same_dtype(x_ND, "x_ND", x_copy, "x_copy");
    DT_CHECK(x_copy.data != x_ND.data, "rmsnorm_fwd: x_copy must not alias x_ND");
  }
  switch (a.device()) {
    case core::Device::cpu:
      cpu::rmsnorm_fwd<float>(x_ND.f32(), w_D.f32(), N, D, eps, y_ND.f32(), rstd_N.f32());
      if (copy) std::copy(x_ND.f32(), x_ND.f32() + N * D, x_copy.f32());
      return;
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::rmsnorm_fwd(x_ND.dtype, x_ND.data, w_D.dtype, w_D.data, N, D, eps, y_ND.data,
                               rstd_N.f32(), copy ? x_copy.data : nullptr);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void rmsnorm_bwd(const View& x_ND, const View& w_D, const View& rstd_N, const View& dy_ND,
                 int64_t N, int64_t D, const View& dx_ND, bool accumulate_dx, const View& dw_D,
                 const View& dx_cast) {
  Args a("rmsnorm_bwd");
  a.nonneg(N, "N"), a.nonneg(D, "D");
  a.need(x_ND, "x_ND", dtypes::act, N * D);
  a.need(w_D, "w_D", dtypes::act, D);
  a.need(rstd_N, "rstd_N", dtypes::f32, N);
  a.need(dy_ND, "dy_ND", dtypes::act, N * D);
  a.same_dtype(w_D, "w_D", dy_ND, "dy_ND");
  a.need(dx_ND, "dx_ND", dtypes::act, N * D);
  a.same_dtype(x_ND, "x_ND", dx_ND, "dx_ND");
  const bool has_dw = a.maybe(dw_D, "dw_D", dtypes::f32, D);
  const bool cast = a.maybe(dx_cast, "dx_cast", dtypes::act, N * D);
  if (cast) {
    a.same_dtype(dy_ND, "dy_ND", dx_cast, "dx_cast");
    DT_CHECK(dx_cast.data != dx_ND.data && dx_cast.data != x_ND.data && dx_cast.data != dy_ND.data,
             "rmsnorm_bwd: dx_cast must not alias dx_ND, x_ND or dy_ND");
  }
  switch (a.device()) {
    case core::Device::cpu: {
      // The CPU kernel overwrites dx and always accumulates dw: compose the other cases.
      std::vector<float> dw_skip, dx_tmp;
      float* dw = has_dw ? dw_D.f32() : (dw_skip.assign(size_t(D), 0.f), dw_skip.data());
      float* dx = accumulate_dx ? (dx_tmp.resize(size_t(N * D)), dx_tmp.data()) : dx_ND.f32();
      cpu::rmsnorm_bwd<float>(x_ND.f32(), w_D.f32(), rstd_N.f32(), dy_ND.f32(), N, D, dx, dw);
      if (accumulate_dx) cpu::add_inplace(dx_ND.f32(), dx, N * D);
      if (cast) std::copy(dx_ND.f32(), dx_ND.f32() + N * D, dx_cast.f32());
      return;
    }
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::rmsnorm_bwd(x_ND.dtype, x_ND.data, w_D.dtype, w_D.data, rstd_N.f32(), dy_ND.data,
                               N, D, dx_ND.data, accumulate_dx, has_dw ? dw_D.f32() : nullptr,
                               cast ? dx_cast.data : nullptr);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void rmsnorm_gated_fwd(const View& x_ND, const View& z_ND, const View& w_D, int64_t N, int64_t D,
                       double eps, const View& y_ND, const View& rstd_N) {
  Args a("rmsnorm_gated_fwd");
  a.nonneg(N, "N"), a.nonneg(D, "D");
  a.need(x_ND, "x_ND", dtypes::act, N * D);
  a.need(z_ND, "z_ND", dtypes::act, N * D);
  a.same_dtype(x_ND, "x_ND", z_ND, "z_ND");
  a.need(w_D, "w_D", dtypes::act, D);
  a.same_dtype(x_ND, "x_ND", w_D, "w_D");
  a.need(y_ND, "y_ND", dtypes::act, N * D);
  a.same_dtype(x_ND, "x_ND", y_ND, "y_ND");
  a.need(rstd_N, "rstd_N", dtypes::f32, N);
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::rmsnorm_gated_fwd<float>(x_ND.f32(), z_ND.f32(), w_D.f32(), N, D, eps, y_ND.f32(),
                                           rstd_N.f32());
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::rmsnorm_gated_fwd(x_ND.dtype, x_ND.data, z_ND.data, w_D.data, N, D, eps,
                                     y_ND.data, rstd_N.f32());
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void rmsnorm_gated_bwd(const View& x_ND, const View& z_ND, const View& w_D, const View& rstd_N,
                       const View& dy_ND, int64_t N, int64_t D, const View& dx_ND,
                       const View& dz_ND, const View& dw_D) {
  Args a("rmsnorm_gated_bwd");
  a.nonneg(N, "N"), a.nonneg(D, "D");
  a.need(x_ND, "x_ND", dtypes::act, N * D);
  a.need(z_ND, "z_ND", dtypes::act, N * D);
  a.same_dtype(x_ND, "x_ND", z_ND, "z_ND");
  a.need(w_D, "w_D", dtypes::act, D);
  a.same_dtype(x_ND, "x_ND", w_D, "w_D");
  a.need(rstd_N, "rstd_N", dtypes::f32, N);
  a.need(dy_ND, "dy_ND", dtypes::act, N * D);
  a.same_dtype(x_ND, "x_ND", dy_ND, "dy_ND");
  a.need(dx_ND, "dx_ND", dtypes::act, N * D);
  a.same_dtype(x_ND, "x_ND", dx_ND, "dx_ND");
  a.need(dz_ND, "dz_ND", dtypes::act, N * D);
  a.same_dtype(x_ND, "x_ND", dz_ND, "dz_ND");
  const bool has_dw = a.maybe(dw_D, "dw_D", dtypes::f32, D);
  switch (a.device()) {
    case core::Device::cpu: {
      std::vector<float> dw_skip;
      float* dw = has_dw ? dw_D.f32() : (dw_skip.assign(size_t(D), 0.f), dw_skip.data());
      return cpu::rmsnorm_gated_bwd<float>(x_ND.f32(), z_ND.f32(), w_D.f32(), rstd_N.f32(),
                                           dy_ND.f32(), N, D, dx_ND.f32(), dz_ND.f32(), dw);
    }
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::rmsnorm_gated_bwd(x_ND.dtype, x_ND.data, z_ND.data, w_D.data, rstd_N.f32(),
                                     dy_ND.data, N, D, dx_ND.data, dz_ND.data,
                                     has_dw ? dw_D.f32() : nullptr);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

}  // namespace deltatron::ops
