// Device dispatch of the gated delta rule ops (contracts in ops/gdn.h).
#include "ops/gdn.h"

#include "core/error.h"
#include "cpu/gdn.h"
#include "ops/check.h"
#ifdef DT_HAVE_CUDA
#include "cuda/gdn.h"
#endif

namespace deltatron::ops {

void gdn_chunk_fwd(const View& q_NHK, const View& k_NHK, const View& v_NGV, const View& g_NG,
                   const View& beta_NG, const View& cu, core::Segments seg, int64_t N, int64_t H,
                   int64_t G, int64_t K, int64_t V, float scale, const View& o_NGV,
                   const View& state_SGKV) {
  Args a("gdn_chunk_fwd");
  a.nonneg(N, "N"), a.nonneg(H, "H"), a.nonneg(G, "G"), a.nonneg(K, "K"), a.nonneg(V, "V");
  a.need(q_NHK, "q_NHK", dtypes::act, N * H * K);
  a.need(k_NHK, "k_NHK", dtypes::act, N * H * K);
  a.same_dtype(q_NHK, "q_NHK", k_NHK, "k_NHK");
  a.need(v_NGV, "v_NGV", dtypes::act, N * G * V);
  a.same_dtype(q_NHK, "q_NHK", v_NGV, "v_NGV");
  a.need(g_NG, "g_NG", dtypes::f32, N * G);
  a.need(beta_NG, "beta_NG", dtypes::f32, N * G);
  a.segments(cu, seg, N);
  a.need(o_NGV, "o_NGV", dtypes::act, N * G * V);
  a.same_dtype(q_NHK, "q_NHK", o_NGV, "o_NGV");
  const bool has_state = a.maybe(state_SGKV, "state_SGKV", dtypes::f32, seg.n * G * K * V);
  float* state = has_state ? state_SGKV.f32() : nullptr;
  switch (a.device()) {
    case core::Device::cpu:
      a.cpu_segments(cu, seg);
      return cpu::gdn_chunk_fwd<float>(q_NHK.f32(), k_NHK.f32(), v_NGV.f32(), g_NG.f32(),
                                       beta_NG.f32(), seg, N, H, G, K, V, scale, o_NGV.f32(),
                                       state);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::gdn_chunk_fwd(q_NHK.dtype, q_NHK.data, k_NHK.data, v_NGV.data, g_NG.f32(),
                                 beta_NG.f32(), cu.i32(), seg.cu, seg.n, N, H, G, K, V, scale,
                                 o_NGV.data, state);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void gdn_chunk_bwd(const View& q_NHK, const View& k_NHK, const View& v_NGV, const View& g_NG,
                   const View& beta_NG, const View& cu, core::Segments seg, int64_t N, int64_t H,
                   int64_t G, int64_t K, int64_t V, float scale, const View& do_NGV,
                   const View& dq_NHK, const View& dk_NHK, const View& dv_NGV, const View& dg_NG,
                   const View& dbeta_NG) {
  Args a("gdn_chunk_bwd");
  a.nonneg(N, "N"), a.nonneg(H, "H"), a.nonneg(G, "G"), a.nonneg(K, "K"), a.nonneg(V, "V");
  a.need(q_NHK, "q_NHK", dtypes::act, N * H * K);
  struct Arg {
    const View* v;
    const char* name;
    int64_t n;
  };
  const Arg acts[] = {{&k_NHK, "k_NHK", N * H * K},   {&v_NGV, "v_NGV", N * G * V},
                      {&do_NGV, "do_NGV", N * G * V}, {&dq_NHK, "dq_NHK", N * H * K},
                      {&dk_NHK, "dk_NHK", N * H * K}, {&dv_NGV, "dv_NGV", N * G * V}};
  for (const Arg& t : acts) {
    a.need(*t.v, t.name, dtypes::act, t.n);
    a.same_dtype(q_NHK, "q_NHK", *t.v, t.name);
  }
  a.need(g_NG, "g_NG", dtypes::f32, N * G);
  a.need(beta_NG, "beta_NG", dtypes::f32, N * G);
  a.need(dg_NG, "dg_NG", dtypes::f32, N * G);
  a.need(dbeta_NG, "dbeta_NG", dtypes::f32, N * G);
  a.segments(cu, seg, N);
  switch (a.device()) {
    case core::Device::cpu:
      a.cpu_segments(cu, seg);
      return cpu::gdn_chunk_bwd<float>(q_NHK.f32(), k_NHK.f32(), v_NGV.f32(), g_NG.f32(),
                                       beta_NG.f32(), seg, N, H, G, K, V, scale, do_NGV.f32(),
                                       dq_NHK.f32(), dk_NHK.f32(), dv_NGV.f32(), dg_NG.f32(),
                                       dbeta_NG.f32());
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::gdn_chunk_bwd(q_NHK.dtype, q_NHK.data, k_NHK.data, v_NGV.data, g_NG.f32(),
                                 beta_NG.f32(), cu.i32(), seg.cu, seg.n, N, H, G, K, V, scale,
                                 do_NGV.data, dq_NHK.data, dk_NHK.data, dv_NGV.data, dg_NG.f32(),
                                 dbeta_NG.f32());
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

}  // namespace deltatron::ops
