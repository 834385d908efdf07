// Device dispatch for the attention core.
#include "ops/attention.h"

#include "core/error.h"
#include "cpu/attention.h"
#include "ops/check.h"
#ifdef DT_HAVE_CUDA
#include "cuda/attention.h"
#endif

namespace deltatron::ops {

void attention_fwd(const View& q_NHK, const View& k_NJK, const View& v_NJK, const View& cu,
                   core::Segments seg, int64_t N, int64_t H, int64_t J, int64_t K, float scale,
                   const View& o_NHK, const View& lse_NH, bool causal) {
  Args a("attention_fwd");
  a.nonneg(N, "N"), a.nonneg(H, "H"), a.nonneg(J, "J"), a.nonneg(K, "K");
  a.need(q_NHK, "q_NHK", dtypes::act, N * H * K);
  a.need(k_NJK, "k_NJK", dtypes::act, N * J * K);
  a.same_dtype(q_NHK, "q_NHK", k_NJK, "k_NJK");
  a.need(v_NJK, "v_NJK", dtypes::act, N * J * K);
  a.same_dtype(q_NHK, "q_NHK", v_NJK, "v_NJK");
  a.segments(cu, seg, N);
  a.need(o_NHK, "o_NHK", dtypes::act, N * H * K);
  a.same_dtype(q_NHK, "q_NHK", o_NHK, "o_NHK");
  a.need(lse_NH, "lse_NH", dtypes::f32, N * H);
  switch (a.device()) {
    case core::Device::cpu:
      a.cpu_segments(cu, seg);
      return cpu::attention_fwd<float>(q_NHK.f32(), k_NJK.f32(), v_NJK.f32(), seg, N, H, J, K,
                                       scale, o_NHK.f32(), lse_NH.f32(), causal);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::attention_fwd(q_NHK.dtype, q_NHK.data, k_NJK.data, v_NJK.data, cu.i32(), seg.cu,
                                 seg.n, N, H, J, K, scale, o_NHK.data, lse_NH.f32(), causal);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void attention_bwd(const View& q_NHK, const View& k_NJK, const View& v_NJK, const View& o_NHK,
                   const View& lse_NH, const View& do_NHK, const View& cu, core::Segments seg,
                   int64_t N, int64_t H, int64_t J, int64_t K, float scale, const View& dq_NHK,
                   const View& dk_NJK, const View& dv_NJK, bool causal) {
  Args a("attention_bwd");
  a.nonneg(N, "N"), a.nonneg(H, "H"), a.nonneg(J, "J"), a.nonneg(K, "K");
  a.need(q_NHK, "q_NHK", dtypes::act, N * H * K);
  struct Arg {
    const View* v;
    const char* name;
    int64_t n;
  };
  const Arg acts[] = {{&k_NJK, "k_NJK", N * J * K},   {&v_NJK, "v_NJK", N * J * K},
                      {&o_NHK, "o_NHK", N * H * K},   {&do_NHK, "do_NHK", N * H * K},
                      {&dq_NHK, "dq_NHK", N * H * K}, {&dk_NJK, "dk_NJK", N * J * K},
                      {&dv_NJK, "dv_NJK", N * J * K}};
  for (const Arg& t : acts) {
    a.need(*t.v, t.name, dtypes::act, t.n);
    a.same_dtype(q_NHK, "q_NHK", *t.v, t.name);
  }
  a.need(lse_NH, "lse_NH", dtypes::f32, N * H);
  a.segments(cu, seg, N);
  switch (a.device()) {
    case core::Device::cpu:
      a.cpu_segments(cu, seg);
      return cpu::attention_bwd<float>(q_NHK.f32(), k_NJK.f32(), v_NJK.f32(), o_NHK.f32(),
                                       lse_NH.f32(), do_NHK.f32(), seg, N, H, J, K, scale,
                                       dq_NHK.f32(), dk_NJK.f32(), dv_NJK.f32(), causal);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::attention_bwd(q_NHK.dtype, q_NHK.data, k_NJK.data, v_NJK.data, o_NHK.data,
                                 lse_NH.f32(), do_NHK.data, cu.i32(), seg.cu, seg.n, N, H, J, K,
                                 scale, dq_NHK.data, dk_NJK.data, dv_NJK.data, causal);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

}  // namespace deltatron::ops
