// Device dispatch of the gated delta rule ops (contracts in ops/gdn.h).
#include "ops/gdn.h"

#include "core/error.h"
#include "cpu/gdn.h"

namespace deltatron::ops {

void gdn_recurrent_fwd(core::Device dev, const float* q_NHK, const float* k_NHK, const float* v_NGV,
                       const float* g_NG, const float* beta_NG, core::Segments seg, int64_t N,
                       int64_t H, int64_t G, int64_t K, int64_t V, float scale, float* o_NGV,
                       float* state_SGKV) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::gdn_recurrent_fwd<float>(q_NHK, k_NHK, v_NGV, g_NG, beta_NG, seg, N, H, G, K, V,
                                           scale, o_NGV, state_SGKV);
    case core::Device::cuda:
      core::fail("gdn_recurrent_fwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
}

void gdn_chunk_fwd(core::Device dev, const float* q_NHK, const float* k_NHK, const float* v_NGV,
                   const float* g_NG, const float* beta_NG, core::Segments seg, int64_t N,
                   int64_t H, int64_t G, int64_t K, int64_t V, float scale, float* o_NGV,
                   float* state_SGKV) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::gdn_chunk_fwd<float>(q_NHK, k_NHK, v_NGV, g_NG, beta_NG, seg, N, H, G, K, V,
                                       scale, o_NGV, state_SGKV);
    case core::Device::cuda:
      core::fail("gdn_chunk_fwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
}

void gdn_recurrent_bwd(core::Device dev, const float* q_NHK, const float* k_NHK, const float* v_NGV,
                       const float* g_NG, const float* beta_NG, core::Segments seg, int64_t N,
                       int64_t H, int64_t G, int64_t K, int64_t V, float scale, const float* do_NGV,
                       float* dq_NHK, float* dk_NHK, float* dv_NGV, float* dg_NG, float* dbeta_NG) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::gdn_recurrent_bwd<float>(q_NHK, k_NHK, v_NGV, g_NG, beta_NG, seg, N, H, G, K, V,
                                           scale, do_NGV, dq_NHK, dk_NHK, dv_NGV, dg_NG, dbeta_NG);
    case core::Device::cuda:
      core::fail("gdn_recurrent_bwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
}

void gdn_chunk_bwd(core::Device dev, const float* q_NHK, const float* k_NHK, const float* v_NGV,
                   const float* g_NG, const float* beta_NG, core::Segments seg, int64_t N,
                   int64_t H, int64_t G, int64_t K, int64_t V, float scale, const float* do_NGV,
                   float* dq_NHK, float* dk_NHK, float* dv_NGV, float* dg_NG, float* dbeta_NG) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::gdn_chunk_bwd<float>(q_NHK, k_NHK, v_NGV, g_NG, beta_NG, seg, N, H, G, K, V,
                                       scale, do_NGV, dq_NHK, dk_NHK, dv_NGV, dg_NG, dbeta_NG);
    case core::Device::cuda:
      core::fail("gdn_chunk_bwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
}

}  // namespace deltatron::ops
