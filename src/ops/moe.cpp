// Device dispatch for the Mixture-of-Experts op family.
#include "ops/moe.h"

#include "core/error.h"
#include "cpu/moe.h"

namespace deltatron::ops {

// Every op below: the CPU runs the cpu:: call spelled out in `cpu_call`; CUDA is not built yet.
#define DT_DISPATCH(name, cpu_call)                                                  \
  switch (dev) {                                                                     \
    case core::Device::cpu:                                                          \
      return cpu_call;                                                               \
    case core::Device::cuda:                                                         \
      core::fail(name ": host-pointer op, no CUDA path (the GPU model is src/gpu)"); \
  }                                                                                  \
  core::fail(name ": unknown device")

void moe_router_fwd(core::Device dev, const float* logits_NE, int64_t N, int64_t E, int64_t K,
                    float* probs_NE, float* lse_N, int32_t* topk_idx_NK, float* topk_w_NK) {
  DT_DISPATCH("moe_router_fwd", cpu::moe_router_fwd<float>(logits_NE, N, E, K, probs_NE, lse_N,
                                                           topk_idx_NK, topk_w_NK));
}

void moe_router_bwd(core::Device dev, const float* probs_NE, const int32_t* topk_idx_NK,
                    const float* topk_w_NK, const float* dw_NK, const float* dprobs_NE,
                    const float* dlse_N, int64_t N, int64_t E, int64_t K, float* dlogits_NE) {
  DT_DISPATCH("moe_router_bwd", cpu::moe_router_bwd<float>(probs_NE, topk_idx_NK, topk_w_NK, dw_NK,
                                                           dprobs_NE, dlse_N, N, E, K, dlogits_NE));
}

double moe_aux_loss_fwd(core::Device dev, const float* probs_NE, const int32_t* group_N, int64_t N,
                        int64_t E, int64_t G, const double* F_GE, const double* c_G) {
  DT_DISPATCH("moe_aux_loss_fwd",
              cpu::moe_aux_loss_fwd<float>(probs_NE, group_N, N, E, G, F_GE, c_G));
}

void moe_aux_loss_bwd(core::Device dev, const int32_t* group_N, int64_t N, int64_t E, int64_t G,
                      const double* F_GE, const double* c_G, double scale, float* dprobs_NE) {
  DT_DISPATCH("moe_aux_loss_bwd",
              cpu::moe_aux_loss_bwd<float>(group_N, N, E, G, F_GE, c_G, scale, dprobs_NE));
}

double moe_z_loss_fwd(core::Device dev, const float* lse_N, const int32_t* group_N, int64_t N,
                      double z_coef) {
  DT_DISPATCH("moe_z_loss_fwd", cpu::moe_z_loss_fwd<float>(lse_N, group_N, N, z_coef));
}

void moe_z_loss_bwd(core::Device dev, const float* lse_N, const int32_t* group_N, int64_t N,
                    double z_coef, double scale, float* dlse_N) {
  DT_DISPATCH("moe_z_loss_bwd",
              cpu::moe_z_loss_bwd<float>(lse_N, group_N, N, z_coef, scale, dlse_N));
}

void moe_count_routes(core::Device dev, const int32_t* topk_idx_NK, const int32_t* group_N,
                      int64_t N, int64_t K, int64_t E, int64_t G, double* counts_GE,
                      double* tokens_G) {
  DT_DISPATCH("moe_count_routes",
              cpu::moe_count_routes(topk_idx_NK, group_N, N, K, E, G, counts_GE, tokens_G));
}

void moe_permute(core::Device dev, const int32_t* topk_idx_NK, int64_t N, int64_t K, int64_t E,
                 int64_t* offsets_E1, int32_t* rows_P) {
  DT_DISPATCH("moe_permute", cpu::moe_permute(topk_idx_NK, N, K, E, offsets_E1, rows_P));
}

void moe_gather(core::Device dev, const float* x_ND, const int32_t* rows_R, const float* w_NK,
                int64_t R, int64_t K, int64_t D, float* out_RD) {
  DT_DISPATCH("moe_gather", cpu::moe_gather<float>(x_ND, rows_R, w_NK, R, K, D, out_RD));
}

void moe_scatter_add(core::Device dev, const float* src_RD, const int32_t* rows_R,
                     const float* w_NK, int64_t R, int64_t K, int64_t D, float* y_ND) {
  DT_DISPATCH("moe_scatter_add", cpu::moe_scatter_add<float>(src_RD, rows_R, w_NK, R, K, D, y_ND));
}

void moe_expert_weight_bwd(core::Device dev, const float* h_RF, const float* g_RF,
                           const int32_t* rows_R, const float* w_NK, int64_t R, int64_t K,
                           int64_t F, float* dw_NK, float* dh_RF) {
  DT_DISPATCH("moe_expert_weight_bwd",
              cpu::moe_expert_weight_bwd<float>(h_RF, g_RF, rows_R, w_NK, R, K, F, dw_NK, dh_RF));
}

void moe_shared_gate_fwd(core::Device dev, const float* o_ND, const float* g_N, int64_t N,
                         int64_t D, float* y_ND) {
  DT_DISPATCH("moe_shared_gate_fwd", cpu::moe_shared_gate_fwd<float>(o_ND, g_N, N, D, y_ND));
}

void moe_shared_gate_bwd(core::Device dev, const float* o_ND, const float* g_N, const float* dy_ND,
                         int64_t N, int64_t D, float* do_ND, float* dg_N) {
  DT_DISPATCH("moe_shared_gate_bwd",
              cpu::moe_shared_gate_bwd<float>(o_ND, g_N, dy_ND, N, D, do_ND, dg_N));
}

#undef DT_DISPATCH

}  // namespace deltatron::ops
