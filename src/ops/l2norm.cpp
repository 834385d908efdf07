// Device dispatch for the L2 normalisation op family.
#include "ops/l2norm.h"

#include "core/error.h"
#include "cpu/l2norm.h"
#include "ops/check.h"
#ifdef DT_HAVE_CUDA
#include "cuda/norms.h"
#endif

namespace deltatron::ops {

namespace {
// The pitch with ld filled in, checked; and the element count of a view laid out by it.
RowPitch checked(const Args& a, RowPitch p, int64_t N, int64_t D, const char* name) {
  if (p.ld == 0) p.ld = p.heads * D;
  if (!(p.heads >= 1 && N % p.heads == 0 && p.ld >= p.heads * D))
    core::fail("ops::", a.op(), ": ", name, " rows: ", p.heads, " heads of D = ", D,
               " per token at a token pitch of ", p.ld, " elements do not lay out N = ", N,
               " rows (N a multiple of the heads, the pitch at least heads x D)");
  return p;
}
int64_t pitched_numel(const RowPitch& p, int64_t N, int64_t D) {
  return N == 0 ? 0 : (N / p.heads - 1) * p.ld + p.heads * D;
}
}  // namespace

void l2norm_fwd(const View& x_ND, int64_t N, int64_t D, double eps, const View& y_ND,
                const View& rstd_N, RowPitch x_pitch) {
  Args a("l2norm_fwd");
  a.nonneg(N, "N"), a.nonneg(D, "D");
  const RowPitch xp = checked(a, x_pitch, N, D, "x_ND");
  a.need(x_ND, "x_ND", dtypes::act, pitched_numel(xp, N, D));
  a.need(y_ND, "y_ND", dtypes::act, N * D);
  a.same_dtype(x_ND, "x_ND", y_ND, "y_ND");
  a.need(rstd_N, "rstd_N", dtypes::f32, N);
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::l2norm_fwd<float>(x_ND.f32(), N, D, eps, y_ND.f32(), rstd_N.f32(), xp.heads,
                                    xp.ld);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::l2norm_fwd(x_ND.dtype, x_ND.data, N, D, eps, y_ND.data, rstd_N.f32(), xp.heads,
                              xp.ld);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void l2norm_bwd(const View& y_ND, const View& rstd_N, const View& dy_ND, int64_t N, int64_t D,
                const View& dx_ND, RowPitch dx_pitch) {
  Args a("l2norm_bwd");
  a.nonneg(N, "N"), a.nonneg(D, "D");
  const RowPitch dp = checked(a, dx_pitch, N, D, "dx_ND");
  a.need(y_ND, "y_ND", dtypes::act, N * D);
  a.need(rstd_N, "rstd_N", dtypes::f32, N);
  a.need(dy_ND, "dy_ND", dtypes::act, N * D);
  a.same_dtype(y_ND, "y_ND", dy_ND, "dy_ND");
  a.need(dx_ND, "dx_ND", dtypes::act, pitched_numel(dp, N, D));
  a.same_dtype(y_ND, "y_ND", dx_ND, "dx_ND");
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::l2norm_bwd<float>(y_ND.f32(), rstd_N.f32(), dy_ND.f32(), N, D, dx_ND.f32(),
                                    dp.heads, dp.ld);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::l2norm_bwd(y_ND.dtype, y_ND.data, rstd_N.f32(), dy_ND.data, N, D, dx_ND.data,
                              dp.heads, dp.ld);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

}  // namespace deltatron::ops
