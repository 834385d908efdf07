// Device dispatch for the router statistics and losses on f64 accumulators (ops/router_loss.h).
// The CPU branch is the host computation of the model today, on the views' memory: cpu/moe.h's
// count and loss functions with the coefficients of cpu::moe_aux_coefs (bitwise the values of
// model::MoeBlock::count_routes, make_router_terms + MoeBlock::router_loss and ops::moe_*_bwd).
#include "ops/router_loss.h"

#include <vector>

#include "core/error.h"
#include "cpu/moe.h"
#include "cpu/router_loss.h"
#ifdef DT_HAVE_CUDA
#include "cuda/moe.h"
#include "cuda/router_loss.h"
#endif

namespace deltatron::ops {

namespace {

using core::Device;
using core::DType;

// One argument's check: dtype, device and element count ("<op>: <name> is f32 [6] on cpu,
// expected f64 with 12 elements on cpu"). n == 0 also accepts an empty view.
void expect_n(const View& v, DType t, Device dev, int64_t n, const char* op, const char* name) {
  if (n == 0 && v.empty()) return;
  if (v.dtype == t && v.device == dev && v.numel() == n && (v.data || n == 0)) return;
  core::fail(op, ": ", name, " is ", v.data || v.numel() == 0 ? v.describe() : "a null view",
             ", expected ", core::dtype_name(t), " with ", n, " elements on ",
             core::device_name(dev));
}

// group_N: empty (every token in group 0) or i32 [N] on dev; the pointer for the kernels.
const int32_t* groups(const View& group_N, Device dev, int64_t N, const char* op) {
  if (group_N.empty()) return nullptr;
  expect_n(group_N, DType::i32, dev, N, op, "group_N");
  return group_N.i32();
}

[[noreturn]] void no_cuda(const char* op) {
  core::fail(op, ": a CUDA view, but this build has no CUDA backend (configure with DT_CUDA=ON)");
}

// Pointer of a view that may be empty when its element count is 0.
template <typename T>
T* ptr(const View& v) {
  return static_cast<T*>(v.data);
}

}  // namespace

void moe_count_routes(const View& topk_idx_NK, const View& group_N, int64_t N, int64_t K, int64_t E,
                      int64_t G, const View& counts_GE, const View& tokens_G) {
  constexpr const char* op = "ops::moe_count_routes";
  DT_CHECK(N >= 0 && K > 0 && E > 0 && G > 0, op, ": need N >= 0, K > 0, E > 0, G > 0, got N=", N,
           " K=", K, " E=", E, " G=", G);
  const Device dev = topk_idx_NK.device;
  expect_n(topk_idx_NK, DType::i32, dev, N * K, op, "topk_idx_NK");
  const int32_t* grp = groups(group_N, dev, N, op);
  expect_n(counts_GE, DType::f64, dev, G * E, op, "counts_GE");
  expect_n(tokens_G, DType::f64, dev, G, op, "tokens_G");
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
  core::fail(op, ": unknown device");
}

void moe_aux_loss_fwd(const View& probs_NE, const View& group_N, int64_t N, int64_t E, int64_t G,
                      const View& counts_GE, const View& tokens_G, const AuxCoef& coef,
                      const View& loss_1) {
  constexpr const char* op = "ops::moe_aux_loss_fwd";
  DT_CHECK(N >= 0 && E > 0 && G >= 0, op, ": need N >= 0, E > 0, G >= 0, got N=", N, " E=", E,
           " G=", G);
  const Device dev = probs_NE.device;
  expect_n(probs_NE, DType::f32, dev, N * E, op, "probs_NE");
  const int32_t* grp = groups(group_N, dev, N, op);
  expect_n(counts_GE, DType::f64, dev, G * E, op, "counts_GE");
  expect_n(tokens_G, DType::f64, dev, G, op, "tokens_G");
  expect_n(loss_1, DType::f64, dev, 1, op, "loss_1");
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
  core::fail(op, ": unknown device");
}

void moe_aux_loss_bwd(const View& group_N, int64_t N, int64_t E, int64_t G, const View& counts_GE,
                      const View& tokens_G, const AuxCoef& coef, double scale,
                      const View& dprobs_NE) {
  constexpr const char* op = "ops::moe_aux_loss_bwd";
  DT_CHECK(N >= 0 && E > 0 && G >= 0, op, ": need N >= 0, E > 0, G >= 0, got N=", N, " E=", E,
           " G=", G);
  const Device dev = dprobs_NE.device;
  expect_n(dprobs_NE, DType::f32, dev, N * E, op, "dprobs_NE");
  const int32_t* grp = groups(group_N, dev, N, op);
  expect_n(counts_GE, DType::f64, dev, G * E, op, "counts_GE");
  expect_n(tokens_G, DType::f64, dev, G, op, "tokens_G");
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
  core::fail(op, ": unknown device");
}

void moe_z_loss_fwd(const View& lse_N, const View& group_N, int64_t N, double z_coef,
                    const View& loss_1) {
  constexpr const char* op = "ops::moe_z_loss_fwd";
  DT_CHECK(N >= 0, op, ": need N >= 0, got N=", N);
  const Device dev = lse_N.device;
  expect_n(lse_N, DType::f32, dev, N, op, "lse_N");
  const int32_t* grp = groups(group_N, dev, N, op);
  expect_n(loss_1, DType::f64, dev, 1, op, "loss_1");
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
  core::fail(op, ": unknown device");
}

void moe_z_loss_bwd(const View& lse_N, const View& group_N, int64_t N, double z_coef, double scale,
                    const View& dlse_N) {
  constexpr const char* op = "ops::moe_z_loss_bwd";
  DT_CHECK(N >= 0, op, ": need N >= 0, got N=", N);
  const Device dev = lse_N.device;
  expect_n(lse_N, DType::f32, dev, N, op, "lse_N");
  const int32_t* grp = groups(group_N, dev, N, op);
  expect_n(dlse_N, DType::f32, dev, N, op, "dlse_N");
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
  core::fail(op, ": unknown device");
}

}  // namespace deltatron::ops
