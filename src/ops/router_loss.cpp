// Device dispatch for the router statistics and losses on f64 accumulators (ops/router_loss.h).
// The CPU branch is the host computation of the model today, on the views' memory: cpu/moe.h's
// count and loss functions with the coefficients of cpu::moe_aux_coefs (bitwise the values of
// model::MoeBlock::count_routes, make_router_terms + MoeBlock::router_loss and ops::moe_*_bwd).
#include "ops/router_loss.h"

#include <vector>

#include "core/error.h"
#include "cpu/moe.h"
#include "cpu/router_loss.h"
#include "ops/check_views.h"
#ifdef DT_HAVE_CUDA
#include "cuda/moe.h"
#include "cuda/router_loss.h"
#endif

namespace deltatron::ops {

namespace {

using core::Device;
using core::DType;

// group_N: empty (every token in group 0) or i32 [N] on dev; the pointer for the kernels.
const int32_t* groups(const char* op, const View& group_N, Device dev, int64_t N) {
  check::optional(op, "group_N", group_N, dev, N, DType::i32);
  return group_N.empty() ? nullptr : group_N.i32();
}

// counts_GE [G*E] and tokens_G [G] f64 on dev; with G == 0 they may be empty views.
void statistics(const char* op, const View& counts_GE, const View& tokens_G, Device dev, int64_t G,
                int64_t E) {
  if (G == 0) {
    check::optional(op, "counts_GE", counts_GE, dev, 0, DType::f64);
    check::optional(op, "tokens_G", tokens_G, dev, 0, DType::f64);
  } else {
    check::view(op, "counts_GE", counts_GE, dev, G * E, DType::f64);
    check::view(op, "tokens_G", tokens_G, dev, G, DType::f64);
  }
}

[[noreturn]] void no_cuda(const char* op) {
  core::fail("ops::", op,
             ": a CUDA view, but this build has no CUDA backend (configure with DT_CUDA=ON)");
}

// Pointer of a view that may be empty when its element count is 0.
template <typename T>
T* ptr(const View& v) {
  return static_cast<T*>(v.data);
}

}  // namespace

void moe_count_routes(const View& topk_idx_NK, const View& group_N, int64_t N, int64_t K, int64_t E,
                      int64_t G, const View& counts_GE, const View& tokens_G) {
  constexpr const char* op = "moe_count_routes";
  DT_CHECK(N >= 0 && K > 0 && E > 0 && G > 0, "ops::", op,
           ": need N >= 0, K > 0, E > 0, G > 0, got N=", N, " K=", K, " E=", E, " G=", G);
  const Device dev = check::device_of(op, {{"topk_idx_NK", topk_idx_NK},
                                           {"group_N", group_N},
                                           {"counts_GE", counts_GE},
                                           {"tokens_G", tokens_G}});
  check::view(op, "topk_idx_NK", topk_idx_NK, dev, N * K, DType::i32);
  const int32_t* grp = groups(op, group_N, dev, N);
  statistics(op, counts_GE, tokens_G, dev, G, E);
  switch (dev) {
    case Device::cpu:
      return cpu::moe_count_routes(ptr<int32_t>(topk_idx_NK), grp, N, K, E, G, counts_GE.f64(),
                                   tokens_G.f64());
    case Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::moe_count_routes(ptr<int32_t>(topk_idx_NK), grp, N, K, E, G, counts_GE.f64(),
                                    tokens_G.f64());
#else
      no_cuda(op);
#endif
  }
  core::fail("ops::", op, ": unknown device");
}

void moe_aux_loss_fwd(const View& probs_NE, const View& group_N, int64_t N, int64_t E, int64_t G,
                      const View& counts_GE, const View& tokens_G, const AuxCoef& coef,
                      const View& loss_1) {
  constexpr const char* op = "moe_aux_loss_fwd";
  DT_CHECK(N >= 0 && E > 0 && G >= 0, "ops::", op, ": need N >= 0, E > 0, G >= 0, got N=", N,
           " E=", E, " G=", G);
  const Device dev = check::device_of(op, {{"probs_NE", probs_NE},
                                           {"group_N", group_N},
                                           {"counts_GE", counts_GE},
                                           {"tokens_G", tokens_G},
                                           {"loss_1", loss_1}});
  check::view(op, "probs_NE", probs_NE, dev, N * E, DType::f32);
  const int32_t* grp = groups(op, group_N, dev, N);
  statistics(op, counts_GE, tokens_G, dev, G, E);
  check::view(op, "loss_1", loss_1, dev, 1, DType::f64);
  switch (dev) {
    case Device::cpu: {
      std::vector<double> c_G(G);
      cpu::moe_aux_coefs(ptr<double>(tokens_G), G, coef.numer, coef.k, coef.step_tokens,
                         c_G.data());
      loss_1.f64()[0] += cpu::moe_aux_loss_fwd<float>(ptr<float>(probs_NE), grp, N, E, G,
                                                      ptr<double>(counts_GE), c_G.data());
      return;
    }
    case Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::moe_aux_loss_fwd(ptr<float>(probs_NE), grp, N, E, G, ptr<double>(counts_GE),
                                    ptr<double>(tokens_G), coef.numer, coef.k, coef.step_tokens,
                                    loss_1.f64());
#else
      no_cuda(op);
#endif
  }
  core::fail("ops::", op, ": unknown device");
}

void moe_aux_loss_bwd(const View& group_N, int64_t N, int64_t E, int64_t G, const View& counts_GE,
                      const View& tokens_G, const AuxCoef& coef, double scale,
                      const View& dprobs_NE) {
  constexpr const char* op = "moe_aux_loss_bwd";
  DT_CHECK(N >= 0 && E > 0 && G >= 0, "ops::", op, ": need N >= 0, E > 0, G >= 0, got N=", N,
           " E=", E, " G=", G);
  const Device dev = check::device_of(op, {{"dprobs_NE", dprobs_NE},
                                           {"group_N", group_N},
                                           {"counts_GE", counts_GE},
                                           {"tokens_G", tokens_G}});
  check::view(op, "dprobs_NE", dprobs_NE, dev, N * E, DType::f32);
  const int32_t* grp = groups(op, group_N, dev, N);
  statistics(op, counts_GE, tokens_G, dev, G, E);
  switch (dev) {
    case Device::cpu: {
      std::vector<double> c_G(G);
      cpu::moe_aux_coefs(ptr<double>(tokens_G), G, coef.numer, coef.k, coef.step_tokens,
                         c_G.data());
      return cpu::moe_aux_loss_bwd<float>(grp, N, E, G, ptr<double>(counts_GE), c_G.data(), scale,
                                          ptr<float>(dprobs_NE));
    }
    case Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::moe_aux_loss_bwd(grp, N, E, G, ptr<double>(counts_GE), ptr<double>(tokens_G),
                                    coef.numer, coef.k, coef.step_tokens, scale,
                                    ptr<float>(dprobs_NE));
#else
      no_cuda(op);
#endif
  }
  core::fail("ops::", op, ": unknown device");
}

void moe_z_loss_fwd(const View& lse_N, const View& group_N, int64_t N, double z_coef,
                    const View& loss_1) {
  constexpr const char* op = "moe_z_loss_fwd";
  DT_CHECK(N >= 0, "ops::", op, ": need N >= 0, got N=", N);
  const Device dev =
      check::device_of(op, {{"lse_N", lse_N}, {"group_N", group_N}, {"loss_1", loss_1}});
  check::view(op, "lse_N", lse_N, dev, N, DType::f32);
  const int32_t* grp = groups(op, group_N, dev, N);
  check::view(op, "loss_1", loss_1, dev, 1, DType::f64);
  switch (dev) {
    case Device::cpu:
      loss_1.f64()[0] += cpu::moe_z_loss_fwd<float>(ptr<float>(lse_N), grp, N, z_coef);
      return;
    case Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::moe_z_loss_fwd(ptr<float>(lse_N), grp, N, z_coef, loss_1.f64());
#else
      no_cuda(op);
#endif
  }
  core::fail("ops::", op, ": unknown device");
}

void moe_z_loss_bwd(const View& lse_N, const View& group_N, int64_t N, double z_coef, double scale,
                    const View& dlse_N) {
  constexpr const char* op = "moe_z_loss_bwd";
  DT_CHECK(N >= 0, "ops::", op, ": need N >= 0, got N=", N);
  const Device dev =
      check::device_of(op, {{"lse_N", lse_N}, {"group_N", group_N}, {"dlse_N", dlse_N}});
  check::view(op, "lse_N", lse_N, dev, N, DType::f32);
  const int32_t* grp = groups(op, group_N, dev, N);
  check::view(op, "dlse_N", dlse_N, dev, N, DType::f32);
  switch (dev) {
    case Device::cpu:
      return cpu::moe_z_loss_bwd<float>(ptr<float>(lse_N), grp, N, z_coef, scale,
                                        ptr<float>(dlse_N));
    case Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::moe_z_loss_bwd(ptr<float>(lse_N), grp, N, z_coef, scale, ptr<float>(dlse_N));
#else
      no_cuda(op);
#endif
  }
  core::fail("ops::", op, ": unknown device");
}

}  // namespace deltatron::ops
