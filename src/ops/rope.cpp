// Device dispatch for the rotary embedding op.
#include "ops/rope.h"

#include "core/error.h"
#include "cpu/rope.h"
#include "ops/check.h"
#ifdef DT_HAVE_CUDA
#include "cuda/pointwise.h"
#endif

namespace deltatron::ops {

namespace {

void rope_view(const char* op, bool backward, const View& x_NHK, const View& pos_3N, int64_t N,
               int64_t H, int64_t K, int64_t R, double theta, const int mrope_section[3]) {
  Args a(op);
  a.nonneg(N, "N"), a.nonneg(H, "H"), a.nonneg(K, "K"), a.nonneg(R, "R");
  a.need(x_NHK, backward ? "dx_NHK" : "x_NHK", dtypes::act, N * H * K);
  a.need(pos_3N, "pos_3N", dtypes::i32, 3 * N);
  DT_CHECK(mrope_section != nullptr, "ops::", op, ": mrope_section is null");
  switch (a.device()) {
    case core::Device::cpu:
      if (backward)
        return cpu::rope_bwd<float>(x_NHK.f32(), pos_3N.i32(), N, H, K, R, theta, mrope_section);
      return cpu::rope_fwd<float>(x_NHK.f32(), pos_3N.i32(), N, H, K, R, theta, mrope_section);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      if (backward)
        return cuda::rope_bwd(x_NHK.dtype, x_NHK.data, pos_3N.i32(), N, H, K, R, theta,
                              mrope_section);
      return cuda::rope_fwd(x_NHK.dtype, x_NHK.data, pos_3N.i32(), N, H, K, R, theta,
                            mrope_section);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

}  // namespace

void rope_fwd(const View& x_NHK, const View& pos_3N, int64_t N, int64_t H, int64_t K, int64_t R,
              double theta, const int mrope_section[3]) {
  rope_view("rope_fwd", false, x_NHK, pos_3N, N, H, K, R, theta, mrope_section);
}

void rope_bwd(const View& dx_NHK, const View& pos_3N, int64_t N, int64_t H, int64_t K, int64_t R,
              double theta, const int mrope_section[3]) {
  rope_view("rope_bwd", true, dx_NHK, pos_3N, N, H, K, R, theta, mrope_section);
}

namespace {
void rope_vision_view(const char* op, int sign, const View& x_NHK, const View& pos_2N, int64_t N,
                      int64_t H, int64_t K, double theta) {
  Args a(op);
  a.nonneg(N, "N"), a.nonneg(H, "H"), a.nonneg(K, "K");
  DT_CHECK(K % 4 == 0, "ops::", op, ": head dim K = ", K, " is not a multiple of 4");
  a.need(x_NHK, sign > 0 ? "x_NHK" : "dx_NHK", dtypes::act, N * H * K);
  a.need(pos_2N, "pos_2N", dtypes::i32, 2 * N);
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::rope_vision<float>(x_NHK.f32(), pos_2N.i32(), N, H, K, theta, sign);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::rope_vision(x_NHK.dtype, x_NHK.data, pos_2N.i32(), N, H, K, theta, sign);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}
}  // namespace

void rope_vision_fwd(const View& x_NHK, const View& pos_2N, int64_t N, int64_t H, int64_t K,
                     double theta) {
  rope_vision_view("rope_vision_fwd", +1, x_NHK, pos_2N, N, H, K, theta);
}

void rope_vision_bwd(const View& dx_NHK, const View& pos_2N, int64_t N, int64_t H, int64_t K,
                     double theta) {
  rope_vision_view("rope_vision_bwd", -1, dx_NHK, pos_2N, N, H, K, theta);
}

}  // namespace deltatron::ops
