// Device dispatch for the Mixture-of-Experts op family.
#include "ops/moe.h"

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "cpu/grouped_linear.h"
#include "cpu/moe.h"
#include "ops/check_views.h"
#include "ops/tensor.h"
#ifdef DT_HAVE_CUDA
#include "cuda/grouped_linear.h"
#include "cuda/moe.h"
#endif

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

// ---- device forms over views ---------------------------------------------------------------

#ifdef DT_HAVE_CUDA
static_assert(kNoBadToken == cuda::kNoBadToken);
#define DT_CUDA_BRANCH(call) return call
#else
#define DT_CUDA_BRANCH(call) core::fail("ops::", op, ": this build has no CUDA backend")
#endif

namespace {

using core::DType;
using core::View;

const float* f32_or_null(const View& v) { return v.empty() ? nullptr : v.f32(); }
float* f32_out_or_null(const View& v) { return v.empty() ? nullptr : v.f32(); }
int32_t* i32_out_or_null(const View& v) { return v.empty() ? nullptr : v.i32(); }

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
  constexpr const char* op = "moe_router_fwd";
  const core::Device dev = check::device_of(op, {{"logits_NE", logits_NE},
                                                 {"probs_NE", probs_NE},
                                                 {"lse_N", lse_N},
                                                 {"topk_idx_NK", topk_idx_NK},
                                                 {"topk_w_NK", topk_w_NK},
                                                 {"bad_3", bad_3}});
  check::dims(op, {N, E, K});
  check::view(op, "logits_NE", logits_NE, dev, N * E, DType::f32);
  check::view(op, "probs_NE", probs_NE, dev, N * E, DType::f32);
  check::view(op, "lse_N", lse_N, dev, N, DType::f32);
  check::view(op, "topk_idx_NK", topk_idx_NK, dev, N * K, DType::i32);
  check::view(op, "topk_w_NK", topk_w_NK, dev, N * K, DType::f32);
  check::optional(op, "bad_3", bad_3, dev, kMoeBadWords, DType::i32);
  switch (dev) {
    case core::Device::cpu:
      return cpu::moe_router_fwd<float>(logits_NE.f32(), N, E, K, probs_NE.f32(), lse_N.f32(),
                                        topk_idx_NK.i32(), topk_w_NK.f32());  // throws on a bad row
    case core::Device::cuda:
      DT_CUDA_BRANCH(cuda::moe_router_fwd(logits_NE.f32(), N, E, K, probs_NE.f32(), lse_N.f32(),
                                          topk_idx_NK.i32(), topk_w_NK.f32(),
                                          i32_out_or_null(bad_3)));
  }
  core::fail("ops::", op, ": unknown device");
}

void moe_router_bwd(const View& probs_NE, const View& topk_idx_NK, const View& topk_w_NK,
                    const View& dw_NK, const View& dprobs_NE, const View& dlse_N, int64_t N,
                    int64_t E, int64_t K, const View& dlogits_NE) {
  constexpr const char* op = "moe_router_bwd";
  const core::Device dev = check::device_of(op, {{"probs_NE", probs_NE},
                                                 {"topk_idx_NK", topk_idx_NK},
                                                 {"topk_w_NK", topk_w_NK},
                                                 {"dw_NK", dw_NK},
                                                 {"dprobs_NE", dprobs_NE},
                                                 {"dlse_N", dlse_N},
                                                 {"dlogits_NE", dlogits_NE}});
  check::dims(op, {N, E, K});
  check::view(op, "probs_NE", probs_NE, dev, N * E, DType::f32);
  check::view(op, "topk_idx_NK", topk_idx_NK, dev, N * K, DType::i32);
  check::view(op, "topk_w_NK", topk_w_NK, dev, N * K, DType::f32);
  check::optional(op, "dw_NK", dw_NK, dev, N * K, DType::f32);
  check::optional(op, "dprobs_NE", dprobs_NE, dev, N * E, DType::f32);
  check::optional(op, "dlse_N", dlse_N, dev, N, DType::f32);
  check::view(op, "dlogits_NE", dlogits_NE, dev, N * E, DType::f32);
  switch (dev) {
    case core::Device::cpu:
      return cpu::moe_router_bwd<float>(probs_NE.f32(), topk_idx_NK.i32(), topk_w_NK.f32(),
                                        f32_or_null(dw_NK), f32_or_null(dprobs_NE),
                                        f32_or_null(dlse_N), N, E, K, dlogits_NE.f32());
    case core::Device::cuda:
      DT_CUDA_BRANCH(cuda::moe_router_bwd(probs_NE.f32(), topk_idx_NK.i32(), topk_w_NK.f32(),
                                          f32_or_null(dw_NK), f32_or_null(dprobs_NE),
                                          f32_or_null(dlse_N), N, E, K, dlogits_NE.f32()));
  }
  core::fail("ops::", op, ": unknown device");
}

void moe_check_bad(const View& bad_3, int64_t E) {
  constexpr const char* op = "moe_check_bad";
  const core::Device dev = check::device_of(op, {{"bad_3", bad_3}});
  check::view(op, "bad_3", bad_3, dev, kMoeBadWords, DType::i32);
  int32_t w[kMoeBadWords];
  copy_to_host(bad_3, w);
  if (w[0] != kNoBadToken) fail_bad_token(w[0]);
  if (w[1] != kNoBadToken) fail_bad_expert(w[2], w[1], E);
}

void moe_permute(const View& topk_idx_NK, int64_t N, int64_t K, int64_t E, const View& bad_3,
                 const View& offsets_E1, int64_t* offsets_E1_host, const View& rows_P,
                 const View& pos_NK) {
  constexpr const char* op = "moe_permute";
  const core::Device dev = check::device_of(op, {{"topk_idx_NK", topk_idx_NK},
                                                 {"bad_3", bad_3},
                                                 {"offsets_E1", offsets_E1},
                                                 {"rows_P", rows_P},
                                                 {"pos_NK", pos_NK}});
  check::dims(op, {N, K, E});
  check::view(op, "topk_idx_NK", topk_idx_NK, dev, N * K, DType::i32);
  check::optional(op, "bad_3", bad_3, dev, kMoeBadWords, DType::i32);
  check::view(op, "offsets_E1", offsets_E1, dev, E + 1, DType::i64);
  check::view(op, "rows_P", rows_P, dev, N * K, DType::i32);
  check::view(op, "pos_NK", pos_NK, dev, N * K, DType::i32);
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
      DT_CHECK(offsets_E1_host || !bad_3.empty(), "ops::", op,
               ": on CUDA without offsets_E1_host, bad_3 is required (errors are recorded there)");
      DT_CUDA_BRANCH(cuda::moe_permute(topk_idx_NK.i32(), N, K, E, i32_out_or_null(bad_3),
                                       offsets_E1.i64(), offsets_E1_host, rows_P.i32(),
                                       pos_NK.i32()));
  }
  core::fail("ops::", op, ": unknown device");
}

void moe_gather(const View& x_ND, const View& rows_R, const View& w_NK, int64_t R, int64_t K,
                int64_t D, const View& out_RD) {
  constexpr const char* op = "moe_gather";
  const core::Device dev = check::device_of(
      op, {{"x_ND", x_ND}, {"rows_R", rows_R}, {"w_NK", w_NK}, {"out_RD", out_RD}});
  check::dims(op, {R, D});
  DT_CHECK(K > 0, "ops::", op, ": need K > 0, got ", K);
  DT_CHECK(D > 0 || R == 0, "ops::", op, ": D = 0 with ", R, " rows");
  const int64_t N = D > 0 ? x_ND.numel() / D : 0;
  check::view(op, "x_ND", x_ND, dev, N * D, check::activation_types(dev));
  check::view(op, "rows_R", rows_R, dev, R, DType::i32);
  check::optional(op, "w_NK", w_NK, dev, N * K, DType::f32);
  check::view(op, "out_RD", out_RD, dev, R * D, x_ND.dtype);
  switch (dev) {
    case core::Device::cpu:
      check_rows(op, rows_R, R, N * K);
      return cpu::moe_gather<float>(x_ND.f32(), rows_R.i32(), f32_or_null(w_NK), R, K, D,
                                    out_RD.f32());
    case core::Device::cuda:
      DT_CUDA_BRANCH(cuda::moe_gather(x_ND.dtype, x_ND.data, rows_R.i32(), f32_or_null(w_NK), R, K,
                                      D, out_RD.data));
  }
  core::fail("ops::", op, ": unknown device");
}

void moe_scatter_add(const View& src_PD, const View& pos_NK, const View& w_NK, int64_t N, int64_t K,
                     int64_t D, const View& y_ND, bool accumulate) {
  constexpr const char* op = "moe_scatter_add";
  const core::Device dev = check::device_of(
      op, {{"src_PD", src_PD}, {"pos_NK", pos_NK}, {"w_NK", w_NK}, {"y_ND", y_ND}});
  check::dims(op, {N, D});
  DT_CHECK(K > 0, "ops::", op, ": need K > 0, got ", K);
  const check::Types act = check::activation_types(dev);
  check::view(op, "src_PD", src_PD, dev, N * K * D, act);
  check::view(op, "pos_NK", pos_NK, dev, N * K, DType::i32);
  check::optional(op, "w_NK", w_NK, dev, N * K, DType::f32);
  check::view(op, "y_ND", y_ND, dev, N * D, check::Types(DType::f32, src_PD.dtype));
  switch (dev) {
    case core::Device::cpu:
      return cpu::moe_scatter_add<float>(src_PD.f32(), pos_NK.i32(), f32_or_null(w_NK), N, K, D,
                                         y_ND.f32(), accumulate);
    case core::Device::cuda:
      DT_CUDA_BRANCH(cuda::moe_scatter_add(src_PD.dtype, src_PD.data, pos_NK.i32(),
                                           f32_or_null(w_NK), N, K, D, y_ND.dtype, y_ND.data,
                                           accumulate));
  }
  core::fail("ops::", op, ": unknown device");
}

void moe_expert_weight_bwd(const View& h_RF, const View& g_RF, const View& rows_R, const View& w_NK,
                           int64_t R, int64_t K, int64_t F, const View& dw_NK, const View& dh_RF) {
  constexpr const char* op = "moe_expert_weight_bwd";
  const core::Device dev = check::device_of(op, {{"h_RF", h_RF},
                                                 {"g_RF", g_RF},
                                                 {"rows_R", rows_R},
                                                 {"w_NK", w_NK},
                                                 {"dw_NK", dw_NK},
                                                 {"dh_RF", dh_RF}});
  check::dims(op, {R, F});
  DT_CHECK(K > 0, "ops::", op, ": need K > 0, got ", K);
  const int64_t P = w_NK.numel();
  check::view(op, "h_RF", h_RF, dev, R * F, check::activation_types(dev));
  check::view(op, "g_RF", g_RF, dev, R * F, h_RF.dtype);
  check::view(op, "rows_R", rows_R, dev, R, DType::i32);
  check::view(op, "w_NK", w_NK, dev, P - P % K, DType::f32);
  check::view(op, "dw_NK", dw_NK, dev, P, DType::f32);
  check::view(op, "dh_RF", dh_RF, dev, R * F, h_RF.dtype);
  switch (dev) {
    case core::Device::cpu:
      check_rows(op, rows_R, R, P);
      return cpu::moe_expert_weight_bwd<float>(h_RF.f32(), g_RF.f32(), rows_R.i32(), w_NK.f32(), R,
                                               K, F, dw_NK.f32(), dh_RF.f32());
    case core::Device::cuda:
      DT_CUDA_BRANCH(cuda::moe_expert_weight_bwd(h_RF.dtype, h_RF.data, g_RF.data, rows_R.i32(),
                                                 w_NK.f32(), R, K, F, dw_NK.f32(), dh_RF.data));
  }
  core::fail("ops::", op, ": unknown device");
}

void moe_shared_gate_fwd(const View& o_ND, const View& g_N, int64_t N, int64_t D,
                         const View& y_ND) {
  constexpr const char* op = "moe_shared_gate_fwd";
  const core::Device dev = check::device_of(op, {{"o_ND", o_ND}, {"g_N", g_N}, {"y_ND", y_ND}});
  check::dims(op, {N, D});
  check::view(op, "o_ND", o_ND, dev, N * D, check::activation_types(dev));
  check::view(op, "g_N", g_N, dev, N, DType::f32);
  check::view(op, "y_ND", y_ND, dev, N * D, check::Types(DType::f32, o_ND.dtype));
  switch (dev) {
    case core::Device::cpu:
      return cpu::moe_shared_gate_fwd<float>(o_ND.f32(), g_N.f32(), N, D, y_ND.f32());
    case core::Device::cuda:
      DT_CUDA_BRANCH(
          cuda::moe_shared_gate_fwd(o_ND.dtype, o_ND.data, g_N.f32(), N, D, y_ND.dtype, y_ND.data));
  }
  core::fail("ops::", op, ": unknown device");
}

void moe_shared_gate_bwd(const View& o_ND, const View& g_N, const View& dy_ND, int64_t N, int64_t D,
                         const View& do_ND, const View& dg_N) {
  constexpr const char* op = "moe_shared_gate_bwd";
  const core::Device dev = check::device_of(
      op, {{"o_ND", o_ND}, {"g_N", g_N}, {"dy_ND", dy_ND}, {"do_ND", do_ND}, {"dg_N", dg_N}});
  check::dims(op, {N, D});
  check::view(op, "o_ND", o_ND, dev, N * D, check::activation_types(dev));
  check::view(op, "g_N", g_N, dev, N, DType::f32);
  check::view(op, "dy_ND", dy_ND, dev, N * D, o_ND.dtype);
  check::view(op, "do_ND", do_ND, dev, N * D, o_ND.dtype);
  check::view(op, "dg_N", dg_N, dev, N, DType::f32);
  switch (dev) {
    case core::Device::cpu:
      return cpu::moe_shared_gate_bwd<float>(o_ND.f32(), g_N.f32(), dy_ND.f32(), N, D, do_ND.f32(),
                                             dg_N.f32());
    case core::Device::cuda:
      DT_CUDA_BRANCH(cuda::moe_shared_gate_bwd(o_ND.dtype, o_ND.data, g_N.f32(), dy_ND.data, N, D,
                                               do_ND.data, dg_N.f32()));
  }
  core::fail("ops::", op, ": unknown device");
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
int64_t grouped_rows(const char* op, core::Device dev, const View& x_RI, const View& offsets_E1,
                     const int64_t* offsets_E1_host, int64_t E, int64_t I, const int64_t** host) {
  check::optional(op, "offsets_E1", offsets_E1, dev, E + 1, DType::i64);
  *host = offsets_E1_host;
  if (!*host && dev == core::Device::cpu) {
    DT_CHECK(!offsets_E1.empty(), "ops::", op, ": no offsets (offsets_E1 empty, host null)");
    *host = offsets_E1.i64();
  }
  if (*host) return grouped_rows(op, *host, E);
  DT_CHECK(!offsets_E1.empty(), "ops::", op, ": no offsets (offsets_E1 empty, host null)");
  DT_CHECK(I > 0, "ops::", op, ": device offsets need I > 0, got ", I);
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
  constexpr const char* op = "grouped_linear_fwd";
  const core::Device dev = check::device_of(
      op, {{"x_RI", x_RI}, {"W_EOI", W_EOI}, {"offsets_E1", offsets_E1}, {"y_RO", y_RO}});
  check::dims(op, {E, I, O});
  const int64_t* host = nullptr;
  const int64_t R = grouped_rows(op, dev, x_RI, offsets_E1, offsets_E1_host, E, I, &host);
  check::view(op, "x_RI", x_RI, dev, R * I, check::activation_types(dev));
  check::view(op, "W_EOI", W_EOI, dev, E * O * I, x_RI.dtype);
  check::view(op, "y_RO", y_RO, dev, R * O, x_RI.dtype);
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
  core::fail("ops::", op, ": unknown device");
}

void grouped_linear_bwd(const View& x_RI, const View& W_EOI, const View& dy_RO,
                        const View& offsets_E1, const int64_t* offsets_E1_host, int64_t E,
                        int64_t I, int64_t O, const View& dx_RI, const View& dW_EOI) {
  constexpr const char* op = "grouped_linear_bwd";
  const core::Device dev = check::device_of(op, {{"x_RI", x_RI},
                                                 {"W_EOI", W_EOI},
                                                 {"dy_RO", dy_RO},
                                                 {"offsets_E1", offsets_E1},
                                                 {"dx_RI", dx_RI},
                                                 {"dW_EOI", dW_EOI}});
  check::dims(op, {E, I, O});
  const int64_t* host = nullptr;
  const int64_t R = grouped_rows(op, dev, x_RI, offsets_E1, offsets_E1_host, E, I, &host);
  check::view(op, "x_RI", x_RI, dev, R * I, check::activation_types(dev));
  check::view(op, "W_EOI", W_EOI, dev, E * O * I, x_RI.dtype);
  check::view(op, "dy_RO", dy_RO, dev, R * O, x_RI.dtype);
  check::optional(op, "dx_RI", dx_RI, dev, R * I, x_RI.dtype);
  check::optional(op, "dW_EOI", dW_EOI, dev, E * O * I, DType::f32);
  switch (dev) {
    case core::Device::cpu:
      return cpu::grouped_linear_bwd<float>(x_RI.f32(), W_EOI.f32(), dy_RO.f32(), host, E, I, O,
                                            f32_out_or_null(dx_RI), f32_out_or_null(dW_EOI));
    case core::Device::cuda:
      if (host)
        DT_CUDA_BRANCH(cuda::grouped_linear_bwd(x_RI.dtype, x_RI.data, W_EOI.data, dy_RO.data, host,
                                                E, I, O, dx_RI.data, f32_out_or_null(dW_EOI)));
      DT_CUDA_BRANCH(cuda::grouped_linear_bwd(x_RI.dtype, x_RI.data, W_EOI.data, dy_RO.data,
                                              cuda::DeviceOffsets{offsets_E1.i64(), R}, E, I, O,
                                              dx_RI.data, f32_out_or_null(dW_EOI)));
  }
  core::fail("ops::", op, ": unknown device");
}

#undef DT_CUDA_BRANCH

}  // namespace deltatron::ops
