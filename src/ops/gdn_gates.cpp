// Device dispatch for the Gated DeltaNet gate op family.
#include "ops/gdn_gates.h"

#include "core/error.h"
#include "cpu/gdn_gates.h"
#include "ops/check.h"
#ifdef DT_HAVE_CUDA
#include "cuda/pointwise.h"
#endif

namespace deltatron::ops {

void gdn_gates_fwd(const View& b_NG, const View& a_NG, const View& A_log_G, const View& dt_bias_G,
                   int64_t N, int64_t G, const View& beta_NG, const View& g_NG) {
  Args a("gdn_gates_fwd");
  a.nonneg(N, "N"), a.nonneg(G, "G");
  a.need(b_NG, "b_NG", dtypes::act, N * G);
  a.need(a_NG, "a_NG", dtypes::act, N * G);
  a.same_dtype(b_NG, "b_NG", a_NG, "a_NG");
  a.need(A_log_G, "A_log_G", dtypes::act, G);
  a.same_dtype(b_NG, "b_NG", A_log_G, "A_log_G");
  a.need(dt_bias_G, "dt_bias_G", dtypes::act, G);
  a.same_dtype(b_NG, "b_NG", dt_bias_G, "dt_bias_G");
  a.need(beta_NG, "beta_NG", dtypes::f32, N * G);
  a.need(g_NG, "g_NG", dtypes::f32, N * G);
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::gdn_gates_fwd<float>(b_NG.f32(), a_NG.f32(), A_log_G.f32(), dt_bias_G.f32(), N, G,
                                       beta_NG.f32(), g_NG.f32());
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::gdn_gates_fwd(b_NG.dtype, b_NG.data, a_NG.data, A_log_G.data, dt_bias_G.data, N,
                                 G, beta_NG.f32(), g_NG.f32());
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void gdn_gates_bwd(const View& b_NG, const View& a_NG, const View& A_log_G, const View& dt_bias_G,
                   const View& dbeta_NG, const View& dg_NG, int64_t N, int64_t G, const View& db_NG,
                   const View& da_NG, const View& dA_log_G, const View& ddt_bias_G) {
  Args a("gdn_gates_bwd");
  a.nonneg(N, "N"), a.nonneg(G, "G");
  a.need(b_NG, "b_NG", dtypes::act, N * G);
  a.need(a_NG, "a_NG", dtypes::act, N * G);
  a.same_dtype(b_NG, "b_NG", a_NG, "a_NG");
  a.need(A_log_G, "A_log_G", dtypes::act, G);
  a.same_dtype(b_NG, "b_NG", A_log_G, "A_log_G");
  a.need(dt_bias_G, "dt_bias_G", dtypes::act, G);
  a.same_dtype(b_NG, "b_NG", dt_bias_G, "dt_bias_G");
  a.need(dbeta_NG, "dbeta_NG", dtypes::f32, N * G);
  a.need(dg_NG, "dg_NG", dtypes::f32, N * G);
  a.need(db_NG, "db_NG", dtypes::act, N * G);
  a.same_dtype(b_NG, "b_NG", db_NG, "db_NG");
  a.need(da_NG, "da_NG", dtypes::act, N * G);
  a.same_dtype(b_NG, "b_NG", da_NG, "da_NG");
  a.need(dA_log_G, "dA_log_G", dtypes::f32, G);
  a.need(ddt_bias_G, "ddt_bias_G", dtypes::f32, G);
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::gdn_gates_bwd<float>(b_NG.f32(), a_NG.f32(), A_log_G.f32(), dt_bias_G.f32(),
                                       dbeta_NG.f32(), dg_NG.f32(), N, G, db_NG.f32(), da_NG.f32(),
                                       dA_log_G.f32(), ddt_bias_G.f32());
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::gdn_gates_bwd(b_NG.dtype, b_NG.data, a_NG.data, A_log_G.data, dt_bias_G.data,
                                 dbeta_NG.f32(), dg_NG.f32(), N, G, db_NG.data, da_NG.data,
                                 dA_log_G.f32(), ddt_bias_G.f32());
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

}  // namespace deltatron::ops
