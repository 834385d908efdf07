// Device dispatch for the LayerNorm op family.
#include "ops/layernorm.h"

#include "core/error.h"
#include "cpu/layernorm.h"
#include "ops/check.h"
#ifdef DT_HAVE_CUDA
#include "cuda/layernorm.h"
#endif

namespace deltatron::ops {

void layernorm_fwd(const View& x_ND, const View& w_D, const View& b_D, int64_t N, int64_t D,
                   double eps, const View& y_ND, const View& mean_N, const View& rstd_N) {
  Args a("layernorm_fwd");
  a.nonneg(N, "N"), a.nonneg(D, "D");
  a.need(x_ND, "x_ND", dtypes::act, N * D);
  a.need(w_D, "w_D", dtypes::act, D);
  a.need(b_D, "b_D", dtypes::act, D);
  a.same_dtype(w_D, "w_D", b_D, "b_D");
  a.need(y_ND, "y_ND", dtypes::act, N * D);
  a.same_dtype(w_D, "w_D", y_ND, "y_ND");
  a.need(mean_N, "mean_N", dtypes::f32, N);
  a.need(rstd_N, "rstd_N", dtypes::f32, N);
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::layernorm_fwd<float>(x_ND.f32(), w_D.f32(), b_D.f32(), N, D, eps, y_ND.f32(),
                                       mean_N.f32(), rstd_N.f32());
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::layernorm_fwd(x_ND.dtype, x_ND.data, w_D.dtype, w_D.data, b_D.data, N, D, eps,
                                 y_ND.data, mean_N.f32(), rstd_N.f32());
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void layernorm_bwd(const View& x_ND, const View& w_D, const View& mean_N, const View& rstd_N,
                   const View& dy_ND, int64_t N, int64_t D, const View& dx_ND, bool accumulate_dx,
                   const View& dw_D, const View& db_D) {
  Args a("layernorm_bwd");
  a.nonneg(N, "N"), a.nonneg(D, "D");
  a.need(x_ND, "x_ND", dtypes::act, N * D);
  a.need(w_D, "w_D", dtypes::act, D);
  a.need(mean_N, "mean_N", dtypes::f32, N);
  a.need(rstd_N, "rstd_N", dtypes::f32, N);
  a.need(dy_ND, "dy_ND", dtypes::act, N * D);
  a.same_dtype(w_D, "w_D", dy_ND, "dy_ND");
  const bool has_dx = a.maybe(dx_ND, "dx_ND", dtypes::act, N * D);
  if (has_dx) a.same_dtype(x_ND, "x_ND", dx_ND, "dx_ND");
  const bool has_dw = a.maybe(dw_D, "dw_D", dtypes::f32, D);
  const bool has_db = a.maybe(db_D, "db_D", dtypes::f32, D);
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::layernorm_bwd<float>(x_ND.f32(), w_D.f32(), mean_N.f32(), rstd_N.f32(),
                                       dy_ND.f32(), N, D, has_dx ? dx_ND.f32() : nullptr,
                                       accumulate_dx, has_dw ? dw_D.f32() : nullptr,
                                       has_db ? db_D.f32() : nullptr);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::layernorm_bwd(x_ND.dtype, x_ND.data, w_D.dtype, w_D.data, mean_N.f32(),
                                 rstd_N.f32(), dy_ND.data, N, D, has_dx ? dx_ND.data : nullptr,
                                 accumulate_dx, has_dw ? dw_D.f32() : nullptr,
                                 has_db ? db_D.f32() : nullptr);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

}  // namespace deltatron::ops
