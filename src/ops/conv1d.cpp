// Device dispatch for the GDN causal depthwise conv1d + SiLU.
#include "ops/conv1d.h"

#include "core/error.h"
#include "cpu/conv1d.h"
#include "ops/check.h"
#ifdef DT_HAVE_CUDA
#include "cuda/conv1d.h"
#endif

namespace deltatron::ops {

void conv1d_fwd(const View& x_NC, const View& w_CW, const View& cu, core::Segments seg, int64_t N,
                int64_t C, int64_t W, const View& y_NC) {
  Args a("conv1d_fwd");
  a.nonneg(N, "N"), a.nonneg(C, "C"), a.nonneg(W, "W");
  a.need(x_NC, "x_NC", dtypes::act, N * C);
  a.need(w_CW, "w_CW", dtypes::act, C * W);
  a.same_dtype(x_NC, "x_NC", w_CW, "w_CW");
  a.segments(cu, seg, N);
  a.need(y_NC, "y_NC", dtypes::act, N * C);
  a.same_dtype(x_NC, "x_NC", y_NC, "y_NC");
  switch (a.device()) {
    case core::Device::cpu:
      a.cpu_segments(cu, seg);
      return cpu::conv1d_fwd<float>(x_NC.f32(), w_CW.f32(), seg, N, C, W, y_NC.f32());
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::conv1d_fwd(x_NC.dtype, x_NC.data, w_CW.data, cu.i32(), seg.n, N, C, W,
                              y_NC.data);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void conv1d_bwd(const View& x_NC, const View& w_CW, const View& cu, core::Segments seg,
                const View& dy_NC, int64_t N, int64_t C, int64_t W, const View& dx_NC,
                const View& dw_CW) {
  Args a("conv1d_bwd");
  a.nonneg(N, "N"), a.nonneg(C, "C"), a.nonneg(W, "W");
  a.need(x_NC, "x_NC", dtypes::act, N * C);
  a.need(w_CW, "w_CW", dtypes::act, C * W);
  a.same_dtype(x_NC, "x_NC", w_CW, "w_CW");
  a.segments(cu, seg, N);
  a.need(dy_NC, "dy_NC", dtypes::act, N * C);
  a.same_dtype(x_NC, "x_NC", dy_NC, "dy_NC");
  a.need(dx_NC, "dx_NC", dtypes::act, N * C);
  a.same_dtype(x_NC, "x_NC", dx_NC, "dx_NC");
  a.need(dw_CW, "dw_CW", dtypes::f32, C * W);
  switch (a.device()) {
    case core::Device::cpu:
      a.cpu_segments(cu, seg);
      return cpu::conv1d_bwd<float>(x_NC.f32(), w_CW.f32(), seg, dy_NC.f32(), N, C, W, dx_NC.f32(),
                                    dw_CW.f32());
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::conv1d_bwd(x_NC.dtype, x_NC.data, w_CW.data, cu.i32(), seg.n, dy_NC.data, N, C,
                              W, dx_NC.data, dw_CW.f32());
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

}  // namespace deltatron::ops
