// Device dispatch for the router statistics and losses on f64 accumulators (ops/router_loss.h).
// The CPU branch is the host computation of the model today, on the views' memory: cpu/moe.h's
// count and loss functions with the coefficients of cpu::moe_aux_coefs (bitwise the values of
// model::MoeBlock::count_routes, make_router_terms + MoeBlock::router_loss and cpu::moe_*_bwd).
#include "ops/router_loss.h"

#include <vector>

#include "core/error.h"
#include "cpu/moe.h"
#include "cpu/router_loss.h"
#include "ops/check.h"
#ifdef DT_HAVE_CUDA
#include "cuda/moe.h"
#include "cuda/router_loss.h"
#endif

namespace deltatron::ops {

namespace {

using core::Device;
using core::DType;

// group_N: empty (every token in group 0) or i32 [N]; the pointer for the kernels.
const int32_t* groups(Args& a, const View& group_N, int64_t N) {
  a.maybe(group_N, "group_N", dtypes::i32, N);
  return group_N.empty() ? nullptr : group_N.i32();
}

// counts_GE [G*E] and tokens_G [G] f64; with G == 0 they may be empty views.
void statistics(Args& a, const View& counts_GE, const View& tokens_G, int64_t G, int64_t E) {
  if (G == 0) {
    a.maybe(counts_GE, "counts_GE", dtypes::f64, 0);
    a.maybe(tokens_G, "tokens_G", dtypes::f64, 0);
  } else {
    a.need(counts_GE, "counts_GE", dtypes::f64, G * E);
    a.need(tokens_G, "tokens_G", dtypes::f64, G);
  }
}

// Pointer of a view that may be empty when its element count is 0.
template <typename T>
T* ptr(const View& v) {
  return static_cast<T*>(v.data);
}

}  // namespace

void moe_count_routes(const View& topk_idx_NK, const View& group_N, int64_t N, int64_t K, int64_t E,
                      int64_t G, const View& counts_GE, const View& tokens_G) {
  Args a("moe_count_routes");
  DT_CHECK(N >= 0 && K > 0 && E > 0 && G > 0, "ops::", a.op(),
           ": need N >= 0, K > 0, E > 0, G > 0, got N=", N, " K=", K, " E=", E, " G=", G);
  a.need(topk_idx_NK, "topk_idx_NK", dtypes::i32, N * K);
  const int32_t* grp = groups(a, group_N, N);
  statistics(a, counts_GE, tokens_G, G, E);
  switch (a.device()) {
    case Device::cpu:
      return cpu::moe_count_routes(ptr<int32_t>(topk_idx_NK), grp, N, K, E, G, counts_GE.f64(),
                                   tokens_G.f64());
    case Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::moe_count_routes(ptr<int32_t>(topk_idx_NK), grp, N, K, E, G, counts_GE.f64(),
                                    tokens_G.f64());
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void moe_aux_loss_fwd(const View& probs_NE, const View& group_N, int64_t N, int64_t E, int64_t G,
                      const View& counts_GE, const View& tokens_G, const AuxCoef& coef,
                      const View& loss_1) {
  Args a("moe_aux_loss_fwd");
  DT_CHECK(N >= 0 && E > 0 && G >= 0, "ops::", a.op(), ": need N >= 0, E > 0, G >= 0, got N=", N,
           " E=", E, " G=", G);
  a.need(probs_NE, "probs_NE", dtypes::f32, N * E);
  const int32_t* grp = groups(a, group_N, N);
  statistics(a, counts_GE, tokens_G, G, E);
  a.need(loss_1, "loss_1", dtypes::f64, 1);
  switch (a.device()) {
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
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void moe_aux_loss_bwd(const View& group_N, int64_t N, int64_t E, int64_t G, const View& counts_GE,
                      const View& tokens_G, const AuxCoef& coef, double scale,
                      const View& dprobs_NE) {
  Args a("moe_aux_loss_bwd");
  DT_CHECK(N >= 0 && E > 0 && G >= 0, "ops::", a.op(), ": need N >= 0, E > 0, G >= 0, got N=", N,
           " E=", E, " G=", G);
  a.need(dprobs_NE, "dprobs_NE", dtypes::f32, N * E);
  const int32_t* grp = groups(a, group_N, N);
  statistics(a, counts_GE, tokens_G, G, E);
  switch (a.device()) {
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
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void moe_z_loss_fwd(const View& lse_N, const View& group_N, int64_t N, double z_coef,
                    const View& loss_1) {
  Args a("moe_z_loss_fwd");
  DT_CHECK(N >= 0, "ops::", a.op(), ": need N >= 0, got N=", N);
  a.need(lse_N, "lse_N", dtypes::f32, N);
  const int32_t* grp = groups(a, group_N, N);
  a.need(loss_1, "loss_1", dtypes::f64, 1);
  switch (a.device()) {
    case Device::cpu:
      loss_1.f64()[0] += cpu::moe_z_loss_fwd<float>(ptr<float>(lse_N), grp, N, z_coef);
      return;
    case Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::moe_z_loss_fwd(ptr<float>(lse_N), grp, N, z_coef, loss_1.f64());
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void moe_z_loss_bwd(const View& lse_N, const View& group_N, int64_t N, double z_coef, double scale,
                    const View& dlse_N) {
  Args a("moe_z_loss_bwd");
  DT_CHECK(N >= 0, "ops::", a.op(), ": need N >= 0, got N=", N);
  a.need(lse_N, "lse_N", dtypes::f32, N);
  const int32_t* grp = groups(a, group_N, N);
  a.need(dlse_N, "dlse_N", dtypes::f32, N);
  switch (a.device()) {
    case Device::cpu:
      return cpu::moe_z_loss_bwd<float>(ptr<float>(lse_N), grp, N, z_coef, scale,
                                        ptr<float>(dlse_N));
    case Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::moe_z_loss_bwd(ptr<float>(lse_N), grp, N, z_coef, scale, ptr<float>(dlse_N));
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

}  // namespace deltatron::ops
