// Device dispatch for the Gated DeltaNet gate op family.
#include "ops/gdn_gates.h"

#include "core/error.h"
#include "cpu/gdn_gates.h"

namespace deltatron::ops {

void gdn_gates_fwd(core::Device dev, const float* b_NG, const float* a_NG, const float* A_log_G,
                   const float* dt_bias_G, int64_t N, int64_t G, float* beta_NG, float* g_NG) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::gdn_gates_fwd<float>(b_NG, a_NG, A_log_G, dt_bias_G, N, G, beta_NG, g_NG);
    case core::Device::cuda:
      core::fail("gdn_gates_fwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
  core::fail("gdn_gates_fwd: unknown device");
}

void gdn_gates_bwd(core::Device dev, const float* b_NG, const float* a_NG, const float* A_log_G,
                   const float* dt_bias_G, const float* dbeta_NG, const float* dg_NG, int64_t N,
                   int64_t G, float* db_NG, float* da_NG, float* dA_log_G, float* ddt_bias_G) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::gdn_gates_bwd<float>(b_NG, a_NG, A_log_G, dt_bias_G, dbeta_NG, dg_NG, N, G, db_NG,
                                       da_NG, dA_log_G, ddt_bias_G);
    case core::Device::cuda:
      core::fail("gdn_gates_bwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
  core::fail("gdn_gates_bwd: unknown device");
}

}  // namespace deltatron::ops
