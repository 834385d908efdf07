// Device dispatch for the Mixture-of-Experts op family.
#include "ops/moe.h"

#include <vector>

#include "core/error.h"
#include "cpu/grouped_linear.h"
#include "cpu/moe.h"
#include "ops/check.h"
#ifdef DT_HAVE_CUDA
#include "cuda/grouped_linear.h"
#include "cuda/moe.h"
#endif

namespace deltatron::ops {

#ifdef DT_HAVE_CUDA
static_assert(kNoBadToken == cuda::kNoBadToken);
#define DT_CUDA_BRANCH(call) return call
#else
#define DT_CUDA_BRANCH(call) a.no_cuda()
#endif

namespace {

using core::DType;
using core::View;

const float* f32_or_null(const View& v) { return v.empty() ? nullptr : v.f32(); }
float* f32_out_or_null(const View& v) { return v.empty() ? nullptr : v.f32(); }
[[maybe_unused]] const int32_t* i32_or_null(const View& v) { return v.empty() ? nullptr : v.i32(); }

// rows_R (a slice of moe_permute's rows) on the host: each in [0, P).
void check_rows(const char* op, const View& rows_R, int64_t R, int64_t P) {
  const int32_t* rows = rows_R.i32();
  for (int64_t r = 0; r < R; ++r)
    DT_CHECK(rows[r] >= 0 && rows[r] < P, "ops::", op, ": rows_R[", r, "] = ", rows[r],
             " is outside [0, ", P, ")");
}

// The router's error for a token with non-finite logits (as cpu::moe_router_fwd throws it).
[[noreturn]] void fail_bad_token(int32_t n) {
  core::fail("moe_router_fwd: router logits of token ", n, " are not finite");
}

}  // namespace

void moe_router_fwd(const View& logits_NE, int64_t N, int64_t E, int64_t K, const View& probs_NE,
                    const View& lse_N, const View& topk_idx_NK, const View& topk_w_NK,
                    const View& bad_token_1) {
  Args a("moe_router_fwd");
  a.nonneg(N, "N"), a.nonneg(E, "E"), a.nonneg(K, "K");
  a.need(logits_NE, "logits_NE", dtypes::f32, N * E);
  a.need(probs_NE, "probs_NE", dtypes::f32, N * E);
  a.need(lse_N, "lse_N", dtypes::f32, N);
  a.need(topk_idx_NK, "topk_idx_NK", dtypes::i32, N * K);
  a.need(topk_w_NK, "topk_w_NK", dtypes::f32, N * K);
  a.maybe(bad_token_1, "bad_token_1", dtypes::i32, 1);
  switch (a.device()) {
    case core::Device::cpu:
      cpu::moe_router_fwd<float>(logits_NE.f32(), N, E, K, probs_NE.f32(), lse_N.f32(),
                                 topk_idx_NK.i32(), topk_w_NK.f32());  // throws on a bad token
      if (!bad_token_1.empty()) *bad_token_1.i32() = kNoBadToken;
      return;
    case core::Device::cuda:
      DT_CUDA_BRANCH(cuda::moe_router_fwd(logits_NE.f32(), N, E, K, probs_NE.f32(), lse_N.f32(),
                                          topk_idx_NK.i32(), topk_w_NK.f32(),
                                          bad_token_1.empty() ? nullptr : bad_token_1.i32()));
  }
  a.bad_device();
}

void moe_router_bwd(const View& probs_NE, const View& topk_idx_NK, const View& topk_w_NK,
                    const View& dw_NK, const View& dprobs_NE, const View& dlse_N, int64_t N,
                    int64_t E, int64_t K, const View& dlogits_NE) {
  Args a("moe_router_bwd");
  a.nonneg(N, "N"), a.nonneg(E, "E"), a.nonneg(K, "K");
  a.need(probs_NE, "probs_NE", dtypes::f32, N * E);
  a.need(topk_idx_NK, "topk_idx_NK", dtypes::i32, N * K);
  a.need(topk_w_NK, "topk_w_NK", dtypes::f32, N * K);
  a.maybe(dw_NK, "dw_NK", dtypes::f32, N * K);
  a.maybe(dprobs_NE, "dprobs_NE", dtypes::f32, N * E);
  a.maybe(dlse_N, "dlse_N", dtypes::f32, N);
  a.need(dlogits_NE, "dlogits_NE", dtypes::f32, N * E);
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::moe_router_bwd<float>(probs_NE.f32(), topk_idx_NK.i32(), topk_w_NK.f32(),
                                        f32_or_null(dw_NK), f32_or_null(dprobs_NE),
                                        f32_or_null(dlse_N), N, E, K, dlogits_NE.f32());
    case core::Device::cuda:
      DT_CUDA_BRANCH(cuda::moe_router_bwd(probs_NE.f32(), topk_idx_NK.i32(), topk_w_NK.f32(),
                                          f32_or_null(dw_NK), f32_or_null(dprobs_NE),
                                          f32_or_null(dlse_N), N, E, K, dlogits_NE.f32()));
  }
  a.bad_device();
}

void moe_permute(const View& topk_idx_NK, int64_t N, int64_t K, int64_t E, const View& bad_token_1,
                 int64_t* offsets_E1_host, const View& rows_P, const View& pos_NK) {
  Args a("moe_permute");
  a.nonneg(N, "N"), a.nonneg(K, "K"), a.nonneg(E, "E");
  a.need(topk_idx_NK, "topk_idx_NK", dtypes::i32, N * K);
  a.maybe(bad_token_1, "bad_token_1", dtypes::i32, 1);
  a.need(rows_P, "rows_P", dtypes::i32, N * K);
  a.need(pos_NK, "pos_NK", dtypes::i32, N * K);
  DT_CHECK(offsets_E1_host, "ops::", a.op(), ": offsets_E1_host is null");
  switch (a.device()) {
    case core::Device::cpu: {
      if (!bad_token_1.empty() && *bad_token_1.i32() != kNoBadToken)
        fail_bad_token(*bad_token_1.i32());
      int32_t* rows = rows_P.i32();
      int32_t* pos = pos_NK.i32();
      cpu::moe_permute(topk_idx_NK.i32(), N, K, E, offsets_E1_host, rows);
      for (int64_t r = 0; r < N * K; ++r) pos[rows[r]] = int32_t(r);
      return;
    }
    case core::Device::cuda:
      DT_CUDA_BRANCH(cuda::moe_permute(topk_idx_NK.i32(), N, K, E, i32_or_null(bad_token_1),
                                       nullptr, offsets_E1_host, rows_P.i32(), pos_NK.i32()));
  }
  a.bad_device();
}

void moe_gather(const View& x_ND, const View& rows_R, const View& w_NK, int64_t R, int64_t K,
                int64_t D, const View& out_RD) {
  Args a("moe_gather");
  a.nonneg(R, "R"), a.nonneg(D, "D");
  DT_CHECK(K > 0, "ops::", a.op(), ": need K > 0, got ", K);
  DT_CHECK(D > 0 || R == 0, "ops::", a.op(), ": D = 0 with ", R, " rows");
  const int64_t N = D > 0 ? x_ND.numel() / D : 0;
  a.need(x_ND, "x_ND", dtypes::act, N * D);
  a.need(rows_R, "rows_R", dtypes::i32, R);
  a.maybe(w_NK, "w_NK", dtypes::f32, N * K);
  a.need(out_RD, "out_RD", {x_ND.dtype}, R * D);
  switch (a.device()) {
    case core::Device::cpu:
      check_rows(a.op(), rows_R, R, N * K);
      return cpu::moe_gather<float>(x_ND.f32(), rows_R.i32(), f32_or_null(w_NK), R, K, D,
                                    out_RD.f32());
    case core::Device::cuda:
      DT_CUDA_BRANCH(cuda::moe_gather(x_ND.dtype, x_ND.data, rows_R.i32(), f32_or_null(w_NK), R, K,
                                      D, out_RD.data));
  }
  a.bad_device();
}

void moe_scatter_add(const View& src_PD, const View& pos_NK, const View& w_NK, int64_t N, int64_t K,
                     int64_t D, const View& y_ND, bool accumulate) {
  Args a("moe_scatter_add");
  a.nonneg(N, "N"), a.nonneg(D, "D");
  DT_CHECK(K > 0, "ops::", a.op(), ": need K > 0, got ", K);
  a.need(src_PD, "src_PD", dtypes::act, N * K * D);
  a.need(pos_NK, "pos_NK", dtypes::i32, N * K);
  a.maybe(w_NK, "w_NK", dtypes::f32, N * K);
  a.need(y_ND, "y_ND", {DType::f32, src_PD.dtype}, N * D);
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::moe_scatter_add<float>(src_PD.f32(), pos_NK.i32(), f32_or_null(w_NK), N, K, D,
                                         y_ND.f32(), accumulate);
    case core::Device::cuda:
      DT_CUDA_BRANCH(cuda::moe_scatter_add(src_PD.dtype, src_PD.data, pos_NK.i32(),
                                           f32_or_null(w_NK), N, K, D, y_ND.dtype, y_ND.data,
                                           accumulate));
  }
  a.bad_device();
}

void moe_expert_weight_bwd(const View& h_RF, const View& g_RF, const View& rows_R, const View& w_NK,
                           int64_t R, int64_t K, int64_t F, const View& dw_NK, const View& dh_RF) {
  Args a("moe_expert_weight_bwd");
  a.nonneg(R, "R"), a.nonneg(F, "F");
  DT_CHECK(K > 0, "ops::", a.op(), ": need K > 0, got ", K);
  const int64_t P = w_NK.numel();
  a.need(h_RF, "h_RF", dtypes::act, R * F);
  a.need(g_RF, "g_RF", {h_RF.dtype}, R * F);
  a.need(rows_R, "rows_R", dtypes::i32, R);
  a.need(w_NK, "w_NK", dtypes::f32, P - P % K);
  a.need(dw_NK, "dw_NK", dtypes::f32, P);
  a.need(dh_RF, "dh_RF", {h_RF.dtype}, R * F);
  switch (a.device()) {
    case core::Device::cpu:
      check_rows(a.op(), rows_R, R, P);
      return cpu::moe_expert_weight_bwd<float>(h_RF.f32(), g_RF.f32(), rows_R.i32(), w_NK.f32(), R,
                                               K, F, dw_NK.f32(), dh_RF.f32());
    case core::Device::cuda:
      DT_CUDA_BRANCH(cuda::moe_expert_weight_bwd(h_RF.dtype, h_RF.data, g_RF.data, rows_R.i32(),
                                                 w_NK.f32(), R, K, F, dw_NK.f32(), dh_RF.data));
  }
  a.bad_device();
}

void moe_shared_gate_fwd(const View& o_ND, const View& g_N, int64_t N, int64_t D,
                         const View& y_ND) {
  Args a("moe_shared_gate_fwd");
  a.nonneg(N, "N"), a.nonneg(D, "D");
  a.need(o_ND, "o_ND", dtypes::act, N * D);
  a.need(g_N, "g_N", dtypes::f32, N);
  a.need(y_ND, "y_ND", {DType::f32, o_ND.dtype}, N * D);
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::moe_shared_gate_fwd<float>(o_ND.f32(), g_N.f32(), N, D, y_ND.f32());
    case core::Device::cuda:
      DT_CUDA_BRANCH(
          cuda::moe_shared_gate_fwd(o_ND.dtype, o_ND.data, g_N.f32(), N, D, y_ND.dtype, y_ND.data));
  }
  a.bad_device();
}

void moe_shared_gate_bwd(const View& o_ND, const View& g_N, const View& dy_ND, int64_t N, int64_t D,
                         const View& do_ND, const View& dg_N) {
  Args a("moe_shared_gate_bwd");
  a.nonneg(N, "N"), a.nonneg(D, "D");
  a.need(o_ND, "o_ND", dtypes::act, N * D);
  a.need(g_N, "g_N", dtypes::f32, N);
  a.need(dy_ND, "dy_ND", {o_ND.dtype}, N * D);
  a.need(do_ND, "do_ND", {o_ND.dtype}, N * D);
  a.need(dg_N, "dg_N", dtypes::f32, N);
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::moe_shared_gate_bwd<float>(o_ND.f32(), g_N.f32(), dy_ND.f32(), N, D, do_ND.f32(),
                                             dg_N.f32());
    case core::Device::cuda:
      DT_CUDA_BRANCH(cuda::moe_shared_gate_bwd(o_ND.dtype, o_ND.data, g_N.f32(), dy_ND.data, N, D,
                                               do_ND.data, dg_N.f32()));
  }
  a.bad_device();
}

namespace {

// R = offsets[E] after checking offsets[0] = 0 and that they never decrease.
int64_t grouped_rows(const char* op, const int64_t* off, int64_t E) {
  DT_CHECK(off, "ops::", op, ": offsets_E1_host is null");
  DT_CHECK(E >= 0 && off[0] == 0, "ops::", op,
           ": need E >= 0 and offsets_E1_host[0] = 0, got E=", E, " offsets[0]=", off[0]);
  for (int64_t e = 0; e < E; ++e)
    DT_CHECK(off[e + 1] >= off[e], "ops::", op, ": offsets_E1_host decrease at expert ", e, " (",
             off[e], " > ", off[e + 1], ")");
  return off[E];
}

}  // namespace

void grouped_linear_fwd(const View& x_RI, const View& W_EOI, const int64_t* offsets_E1_host,
                        int64_t E, int64_t I, int64_t O, const View& y_RO) {
  Args a("grouped_linear_fwd");
  a.nonneg(E, "E"), a.nonneg(I, "I"), a.nonneg(O, "O");
  const int64_t R = grouped_rows(a.op(), offsets_E1_host, E);
  a.need(x_RI, "x_RI", dtypes::act, R * I);
  a.need(W_EOI, "W_EOI", {x_RI.dtype}, E * O * I);
  a.need(y_RO, "y_RO", {x_RI.dtype}, R * O);
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::grouped_linear_fwd<float>(x_RI.f32(), W_EOI.f32(), offsets_E1_host, E, I, O,
                                            y_RO.f32());
    case core::Device::cuda:
      DT_CUDA_BRANCH(cuda::grouped_linear_fwd(x_RI.dtype, x_RI.data, W_EOI.data, offsets_E1_host, E,
                                              I, O, y_RO.data));
  }
  a.bad_device();
}

void grouped_linear_bwd(const View& x_RI, const View& W_EOI, const View& dy_RO,
                        const int64_t* offsets_E1_host, int64_t E, int64_t I, int64_t O,
                        const View& dx_RI, const View& dW_EOI) {
  Args a("grouped_linear_bwd");
  a.nonneg(E, "E"), a.nonneg(I, "I"), a.nonneg(O, "O");
  const int64_t R = grouped_rows(a.op(), offsets_E1_host, E);
  a.need(x_RI, "x_RI", dtypes::act, R * I);
  a.need(W_EOI, "W_EOI", {x_RI.dtype}, E * O * I);
  a.need(dy_RO, "dy_RO", {x_RI.dtype}, R * O);
  a.maybe(dx_RI, "dx_RI", {x_RI.dtype}, R * I);
  a.maybe(dW_EOI, "dW_EOI", dtypes::f32, E * O * I);
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::grouped_linear_bwd<float>(x_RI.f32(), W_EOI.f32(), dy_RO.f32(), offsets_E1_host,
                                            E, I, O, f32_out_or_null(dx_RI),
                                            f32_out_or_null(dW_EOI));
    case core::Device::cuda:
      DT_CUDA_BRANCH(cuda::grouped_linear_bwd(x_RI.dtype, x_RI.data, W_EOI.data, dy_RO.data,
                                              offsets_E1_host, E, I, O, dx_RI.data,
                                              f32_out_or_null(dW_EOI)));
  }
  a.bad_device();
}

#undef DT_CUDA_BRANCH

}  // namespace deltatron::ops
