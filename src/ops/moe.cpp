// Device dispatch for the Mixture-of-Experts op family.
#include "ops/moe.h"

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "cpu/grouped_linear.h"
#include "cpu/moe.h"
#include "ops/check.h"
#include "ops/tensor.h"
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
[[maybe_unused]] int32_t* i32_out_or_null(const View& v) { return v.empty() ? nullptr : v.i32(); }

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

// moe_permute's error for an expert id outside [0, E) (as cpu::moe_permute throws it).
[[noreturn]] void fail_bad_expert(int32_t e, int32_t n, int64_t E) {
  core::fail("moe_permute: expert id ", e, " of token ", n, " is outside [0, ", E, ")");
}

}  // namespace

void moe_router_fwd(const View& logits_NE, int64_t N, int64_t E, int64_t K, const View& probs_NE,
                    const View& lse_N, const View& topk_idx_NK, const View& topk_w_NK,
                    const View& bad_3) {
  Args a("moe_router_fwd");
  a.nonneg(N, "N"), a.nonneg(E, "E"), a.nonneg(K, "K");
  a.need(logits_NE, "logits_NE", dtypes::f32, N * E);
  a.need(probs_NE, "probs_NE", dtypes::f32, N * E);
  a.need(lse_N, "lse_N", dtypes::f32, N);
  a.need(topk_idx_NK, "topk_idx_NK", dtypes::i32, N * K);
  a.need(topk_w_NK, "topk_w_NK", dtypes::f32, N * K);
  a.maybe(bad_3, "bad_3", dtypes::i32, kMoeBadWords);
  const core::Device dev = a.device();
  switch (dev) {
    case core::Device::cpu:
      return cpu::moe_router_fwd<float>(logits_NE.f32(), N, E, K, probs_NE.f32(), lse_N.f32(),
                                        topk_idx_NK.i32(), topk_w_NK.f32());  // throws on a bad row
    case core::Device::cuda:
      DT_CUDA_BRANCH(cuda::moe_router_fwd(logits_NE.f32(), N, E, K, probs_NE.f32(), lse_N.f32(),
                                          topk_idx_NK.i32(), topk_w_NK.f32(),
                                          i32_out_or_null(bad_3)));
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

void moe_check_bad(const View& bad_3, int64_t E) {
  Args a("moe_check_bad");
  a.need(bad_3, "bad_3", dtypes::i32, kMoeBadWords);
  int32_t w[kMoeBadWords];
  copy_to_host(bad_3, w);
  moe_fail_bad(w, E);
}

void moe_fail_bad(const int32_t* w, int64_t E) {
  if (w[0] != kNoBadToken) fail_bad_token(w[0]);
  if (w[1] != kNoBadToken) fail_bad_expert(w[2], w[1], E);
}

void moe_permute(const View& topk_idx_NK, int64_t N, int64_t K, int64_t E, const View& bad_3,
                 const View& offsets_E1, int64_t* offsets_E1_host, const View& rows_P,
                 const View& pos_NK) {
  Args a("moe_permute");
  a.nonneg(N, "N"), a.nonneg(K, "K"), a.nonneg(E, "E");
  a.need(topk_idx_NK, "topk_idx_NK", dtypes::i32, N * K);
  a.maybe(bad_3, "bad_3", dtypes::i32, kMoeBadWords);
  a.need(offsets_E1, "offsets_E1", dtypes::i64, E + 1);
  a.need(rows_P, "rows_P", dtypes::i32, N * K);
  a.need(pos_NK, "pos_NK", dtypes::i32, N * K);
  const core::Device dev = a.device();
  switch (dev) {
    case core::Device::cpu: {
      if (!bad_3.empty() && *bad_3.i32() != kNoBadToken) fail_bad_token(*bad_3.i32());
      int32_t* rows = rows_P.i32();
      int32_t* pos = pos_NK.i32();
      int64_t* off = offsets_E1.i64();
      cpu::moe_permute(topk_idx_NK.i32(), N, K, E, off, rows);
      for (int64_t r = 0; r < N * K; ++r) pos[rows[r]] = int32_t(r);
      if (offsets_E1_host) std::copy(off, off + E + 1, offsets_E1_host);
      return;
    }
    case core::Device::cuda:
      DT_CHECK(offsets_E1_host || !bad_3.empty(), "ops::", a.op(),
               ": on CUDA without offsets_E1_host, bad_3 is required (errors are recorded there)");
      DT_CUDA_BRANCH(cuda::moe_permute(topk_idx_NK.i32(), N, K, E, i32_out_or_null(bad_3),
                                       offsets_E1.i64(), offsets_E1_host, rows_P.i32(),
                                       pos_NK.i32()));
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

namespace {

// The rows R of a grouped_linear call: off[E] of the host offsets (checked) when the CPU or the
// host-offset CUDA path runs, else the bound x_RI.numel() / I of the device-offset CUDA path.
// Sets *host to the offsets the CPU or the host-offset path reads (nullptr: device offsets).
int64_t grouped_rows(Args& a, const View& x_RI, const View& offsets_E1,
                     const int64_t* offsets_E1_host, int64_t E, int64_t I, const int64_t** host) {
  a.maybe(offsets_E1, "offsets_E1", dtypes::i64, E + 1);
  *host = offsets_E1_host;
  if (!*host && offsets_E1.device == core::Device::cpu) {
    DT_CHECK(!offsets_E1.empty(), "ops::", a.op(), ": no offsets (offsets_E1 empty, host null)");
    *host = offsets_E1.i64();
  }
  if (*host) return grouped_rows(a.op(), *host, E);
  DT_CHECK(!offsets_E1.empty(), "ops::", a.op(), ": no offsets (offsets_E1 empty, host null)");
  DT_CHECK(I > 0, "ops::", a.op(), ": device offsets need I > 0, got ", I);
  return x_RI.numel() / I;
}

}  // namespace

bool grouped_linear_needs_host_offsets(core::Device dev, core::DType dt, int64_t I, int64_t O) {
  switch (dev) {
    case core::Device::cpu:
      return false;
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return !cuda::grouped_linear_device_offsets_ok(dt, I, O);
#else
      (void)dt, (void)I, (void)O;
      return true;
#endif
  }
  core::fail("ops::grouped_linear_needs_host_offsets: unknown device");
}

void grouped_linear_fwd(const View& x_RI, const View& W_EOI, const View& offsets_E1,
                        const int64_t* offsets_E1_host, int64_t E, int64_t I, int64_t O,
                        const View& y_RO) {
  Args a("grouped_linear_fwd");
  a.nonneg(E, "E"), a.nonneg(I, "I"), a.nonneg(O, "O");
  const int64_t* host = nullptr;
  const int64_t R = grouped_rows(a, x_RI, offsets_E1, offsets_E1_host, E, I, &host);
  a.need(x_RI, "x_RI", dtypes::act, R * I);
  a.need(W_EOI, "W_EOI", {x_RI.dtype}, E * O * I);
  a.need(y_RO, "y_RO", {x_RI.dtype}, R * O);
  const core::Device dev = a.device();
  switch (dev) {
    case core::Device::cpu:
      return cpu::grouped_linear_fwd<float>(x_RI.f32(), W_EOI.f32(), host, E, I, O, y_RO.f32());
    case core::Device::cuda:
      if (host)
        DT_CUDA_BRANCH(
            cuda::grouped_linear_fwd(x_RI.dtype, x_RI.data, W_EOI.data, host, E, I, O, y_RO.data));
      DT_CUDA_BRANCH(cuda::grouped_linear_fwd(x_RI.dtype, x_RI.data, W_EOI.data,
                                              cuda::DeviceOffsets{offsets_E1.i64(), R}, E, I, O,
                                              y_RO.data));
  }
  a.bad_device();
}

void grouped_linear_bwd(const View& x_RI, const View& W_EOI, const View& dy_RO,
                        const View& offsets_E1, const int64_t* offsets_E1_host, int64_t E,
                        int64_t I, int64_t O, const View& dx_RI, const View& dW_EOI,
                        bool accumulate_dw) {
  Args a("grouped_linear_bwd");
  a.nonneg(E, "E"), a.nonneg(I, "I"), a.nonneg(O, "O");
  const int64_t* host = nullptr;
  const int64_t R = grouped_rows(a, x_RI, offsets_E1, offsets_E1_host, E, I, &host);
  a.need(x_RI, "x_RI", dtypes::act, R * I);
  a.need(W_EOI, "W_EOI", {x_RI.dtype}, E * O * I);
  a.need(dy_RO, "dy_RO", {x_RI.dtype}, R * O);
  a.maybe(dx_RI, "dx_RI", {x_RI.dtype}, R * I);
  a.maybe(dW_EOI, "dW_EOI", dtypes::f32, E * O * I);
  const core::Device dev = a.device();
  switch (dev) {
    case core::Device::cpu:
      return cpu::grouped_linear_bwd<float>(x_RI.f32(), W_EOI.f32(), dy_RO.f32(), host, E, I, O,
                                            f32_out_or_null(dx_RI), f32_out_or_null(dW_EOI),
                                            accumulate_dw);
    case core::Device::cuda:
      if (host)
        DT_CUDA_BRANCH(cuda::grouped_linear_bwd(x_RI.dtype, x_RI.data, W_EOI.data, dy_RO.data, host,
                                                E, I, O, dx_RI.data, f32_out_or_null(dW_EOI),
                                                accumulate_dw));
      DT_CUDA_BRANCH(cuda::grouped_linear_bwd(x_RI.dtype, x_RI.data, W_EOI.data, dy_RO.data,
                                              cuda::DeviceOffsets{offsets_E1.i64(), R}, E, I, O,
                                              dx_RI.data, f32_out_or_null(dW_EOI), accumulate_dw));
  }
  a.bad_device();
}

#undef DT_CUDA_BRANCH

}  // namespace deltatron::ops
