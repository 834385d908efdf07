// GPU parity of ops/router_loss (router statistics and losses on f64 views) between the CUDA and
// CPU branches of the same ops:: calls (label gpu), determinism, and the NaN marking of bad ids.
//
// Inputs are fp32 router outputs of the CPU router on random logits, uploaded as they are, so
// both devices read the same values. Bounds: counts, token totals and both backwards bitwise
// equal (the same integer counts; the same double expressions rounded once to fp32); loss values
// within 1e-12 relative (the CPU sums serially in token order, CUDA per token then in a fixed
// tree); every CUDA result bitwise equal across two runs. Tests named *Small* are the memcheck
// set.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "core/view.h"
#include "cpu/moe.h"
#include "cuda/device.h"
#include "ops/router_loss.h"
#include "test_util.h"

namespace dt = deltatron;
using dt::core::Device;
using dt::core::DType;
using dt::core::View;
using Vec = std::vector<double>;
using VecF = std::vector<float>;
using VecI = std::vector<int32_t>;

namespace {

template <typename T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, double>)
    return DType::f64;
  else if constexpr (std::is_same_v<T, int32_t>)
    return DType::i32;
  else
    return DType::f32;
}

template <typename T>
View host_view(std::vector<T>& v) {
  return View(v.data(), dtype_of<T>(), Device::cpu, {int64_t(v.size())});
}

// A device copy of a host vector, viewed as a flat tensor on Device::cuda.
struct DevVec {
  dt::cuda::DeviceBuffer buf;
  View view;
  size_t bytes = 0;
};
template <typename T>
DevVec upload(const std::vector<T>& v) {
  DevVec d;
  d.bytes = v.size() * sizeof(T);
  d.buf = dt::cuda::DeviceBuffer(std::max<size_t>(d.bytes, 16), "test tensor");
  if (d.bytes) DT_CUDA_CHECK(cudaMemcpy(d.buf.get(), v.data(), d.bytes, cudaMemcpyHostToDevice));
  d.view = View(d.buf.get(), dtype_of<T>(), Device::cuda, {int64_t(v.size())});
  return d;
}
// NaN-filled (0xFF bytes) device output of n elements of T.
template <typename T>
DevVec poisoned(size_t n) {
  DevVec d = upload(std::vector<T>(n));
  DT_CUDA_CHECK(cudaMemset(d.buf.get(), 0xFF, d.bytes));
  return d;
}
template <typename T>
std::vector<T> download(const DevVec& d) {
  std::vector<T> h(d.bytes / sizeof(T));
  DT_CUDA_CHECK(cudaDeviceSynchronize());
  if (d.bytes) DT_CUDA_CHECK(cudaMemcpy(h.data(), d.buf.get(), d.bytes, cudaMemcpyDeviceToHost));
  return h;
}

template <typename T>
void expect_bitwise(const std::vector<T>& got, const std::vector<T>& want,
                    const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t diff = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0 && diff++ == 0) first = i;
  EXPECT_EQ(diff, 0u) << what << ": " << diff << " elements differ, first [" << first << "]: cuda "
                      << got[first] << " cpu " << want[first];
}

void expect_close(double got, double want, double tol, const std::string& what) {
  const double err = std::abs(got - want) / std::max(std::abs(want), 1e-300);
  EXPECT_LE(err, tol) << what << ": cuda " << got << " cpu " << want;
  std::printf("  %-52s cuda %.17g  rel err %.1e\n", what.c_str(), got, err);
}

// CPU router outputs of random logits: probs, lse, top-k ids.
struct Routing {
  VecF probs, lse;
  VecI idx;
};
Routing route(int64_t N, int64_t E, int64_t K, uint64_t seed) {
  Routing r;
  VecF logits = dt_test::randn<float>(N * E, seed, 2.0), w(N * K);
  r.probs.resize(N * E);
  r.lse.resize(N);
  r.idx.resize(N * K);
  dt::cpu::moe_router_fwd<float>(logits.data(), N, E, K, r.probs.data(), r.lse.data(), r.idx.data(),
                                 w.data());
  return r;
}

class CudaRouterLoss : public ::testing::Test {
 protected:
  void SetUp() override { dt::cuda::require_hopper(); }
};

// Every op on both devices for one layout; group empty = no group view (every token in group 0).
void parity_case(const Routing& r, VecI group, int64_t N, int64_t E, int64_t K, int64_t G,
                 double step_tokens, uint64_t seed, const std::string& what) {
  VecF probs = r.probs, lse = r.lse;
  VecI idx = r.idx;
  DevVec d_probs = upload(probs), d_lse = upload(lse), d_idx = upload(idx), d_group = upload(group);
  const View h_grp = group.empty() ? View{} : host_view(group);
  const View d_grp = group.empty() ? View{} : d_group.view;
  const dt::ops::AuxCoef coef{0.3 * 0.01 * double(E), double(K), step_tokens};
  const double z_coef = 1e-3 / 37, scale = 0.7;

  // Counts: accumulated onto integer-valued starting values, twice.
  Vec counts = dt_test::uniform<double>(G * E, seed, 0, 9), tokens(G, 3.0);
  for (double& x : counts) x = std::round(x);
  DevVec d_counts = upload(counts), d_tokens = upload(tokens);
  for (int rep = 0; rep < 2; ++rep) {
    dt::ops::moe_count_routes(host_view(idx), h_grp, N, K, E, G, host_view(counts),
                              host_view(tokens));
    dt::ops::moe_count_routes(d_idx.view, d_grp, N, K, E, G, d_counts.view, d_tokens.view);
  }
  expect_bitwise(download<double>(d_counts), counts, what + ": counts");
  expect_bitwise(download<double>(d_tokens), tokens, what + ": tokens");

  // Losses onto a running total; twice on the device for determinism.
  Vec loss = {0.75};
  dt::ops::moe_aux_loss_fwd(host_view(probs), h_grp, N, E, G, host_view(counts), host_view(tokens),
                            coef, host_view(loss));
  const double aux_ref = loss[0];
  dt::ops::moe_z_loss_fwd(host_view(lse), h_grp, N, z_coef, host_view(loss));
  std::vector<double> runs;
  for (int rep = 0; rep < 2; ++rep) {
    DevVec d_loss = upload(Vec{0.75});
    dt::ops::moe_aux_loss_fwd(d_probs.view, d_grp, N, E, G, d_counts.view, d_tokens.view, coef,
                              d_loss.view);
    if (rep == 0) expect_close(download<double>(d_loss)[0], aux_ref, 1e-12, what + ": 0.75 + aux");
    dt::ops::moe_z_loss_fwd(d_lse.view, d_grp, N, z_coef, d_loss.view);
    runs.push_back(download<double>(d_loss)[0]);
  }
  expect_close(runs[0], loss[0], 1e-12, what + ": 0.75 + aux + z");
  expect_bitwise(Vec{runs[1]}, Vec{runs[0]}, what + ": loss run to run");

  // Backwards: bitwise.
  VecF dprobs(N * E, NAN), dlse(N, NAN);
  DevVec d_dprobs = poisoned<float>(N * E), d_dlse = poisoned<float>(N);
  dt::ops::moe_aux_loss_bwd(h_grp, N, E, G, host_view(counts), host_view(tokens), coef, scale,
                            host_view(dprobs));
  dt::ops::moe_aux_loss_bwd(d_grp, N, E, G, d_counts.view, d_tokens.view, coef, scale,
                            d_dprobs.view);
  dt::ops::moe_z_loss_bwd(host_view(lse), h_grp, N, z_coef, scale, host_view(dlse));
  dt::ops::moe_z_loss_bwd(d_lse.view, d_grp, N, z_coef, scale, d_dlse.view);
  expect_bitwise(download<float>(d_dprobs), dprobs, what + ": dprobs");
  expect_bitwise(download<float>(d_dlse), dlse, what + ": dlse");
}

TEST_F(CudaRouterLoss, ParitySmall) {
  const int64_t N = 9, E = 5, K = 2;
  const Routing r = route(N, E, K, 60);
  parity_case(r, {}, N, E, K, 1, 0, 61, "no group view");
  parity_case(r, VecI(N, 0), N, E, K, 1, 0, 62, "one group");
  parity_case(r, {-1, 0, 0, -1, 2, 2, 0, 2, -1}, N, E, K, 3, 0, 63, "padding, an empty group");
  parity_case(r, {0, -1, 0, 0, 0, -1, 0, 0, 0}, N, E, K, 1, 40, 64, "running counts");
  parity_case(r, VecI(N, -1), N, E, K, 2, 0, 65, "all padding");
}

TEST_F(CudaRouterLoss, ParityReal) {
  const int64_t N = 8192, E = 256, K = 8, G = 4;
  const Routing r = route(N, E, K, 70);
  VecI group(N);
  for (int64_t t = 0; t < N; ++t) group[t] = t % 7 == 3 ? -1 : int32_t(t * G / N);
  parity_case(r, group, N, E, K, G, 0, 71, "real, 4 groups, 1/7 padding");
  VecI one(N);
  for (int64_t t = 0; t < N; ++t) one[t] = t % 5 == 1 ? -1 : 0;
  parity_case(r, one, N, E, K, 1, 3.0 * N, 72, "real, global running counts");
}

TEST_F(CudaRouterLoss, NoAuxGroupsSmall) {
  const int64_t N = 6, E = 4;
  VecI group = {0, -1, 0, 0, 0, 0};
  DevVec d_group = upload(group), d_probs = upload(VecF(N * E, 0.25f));
  DevVec d_loss = upload(Vec{0.5}), d_dprobs = poisoned<float>(N * E);
  const dt::ops::AuxCoef coef{1, 2, 0};
  dt::ops::moe_aux_loss_fwd(d_probs.view, d_group.view, N, E, 0, View{}, View{}, coef, d_loss.view);
  dt::ops::moe_aux_loss_bwd(d_group.view, N, E, 0, View{}, View{}, coef, 1.0, d_dprobs.view);
  EXPECT_EQ(download<double>(d_loss), Vec{0.5});
  EXPECT_EQ(download<float>(d_dprobs), VecF(N * E, 0.f));
}

// Bad ids cannot throw without a sync: they poison the results with NaN (ops/router_loss.h).
TEST_F(CudaRouterLoss, BadIdsGiveNaNSmall) {
  const int64_t N = 4, E = 3, K = 2, G = 2;
  VecI idx = {0, 1, 2, 0, 1, 2, 0, 1}, bad_expert = {0, 1, 2, 3, 1, 2, 0, 1};
  VecI ok = {0, 1, 1, -1}, bad_hi = {0, 2, 1, -1}, bad_lo = {0, -2, 1, 1};
  const dt::ops::AuxCoef coef{1, double(K), 0};
  auto all_nan = [](const Vec& v) {
    return std::all_of(v.begin(), v.end(), [](double x) { return std::isnan(x); });
  };
  DevVec d_idx = upload(idx), d_bad_expert = upload(bad_expert), d_ok = upload(ok),
         d_hi = upload(bad_hi), d_lo = upload(bad_lo);
  for (const auto& [ids, grp, what] :
       {std::tuple{&d_idx, &d_hi, "group id 2"}, std::tuple{&d_idx, &d_lo, "group id -2"},
        std::tuple{&d_bad_expert, &d_ok, "expert id 3"}}) {
    DevVec counts = upload(Vec(G * E, 1.0)), tokens = upload(Vec(G, 1.0));
    dt::ops::moe_count_routes(ids->view, grp->view, N, K, E, G, counts.view, tokens.view);
    EXPECT_TRUE(all_nan(download<double>(counts))) << what << ": counts";
    EXPECT_TRUE(all_nan(download<double>(tokens))) << what << ": tokens";
  }
  DevVec counts = upload(Vec(G * E, 1.0)), tokens = upload(Vec(G, 2.0));
  DevVec probs = upload(VecF(N * E, 0.25f)), lse = upload(VecF(N, 1.f));
  DevVec loss = upload(Vec{0.5});
  dt::ops::moe_aux_loss_fwd(probs.view, d_hi.view, N, E, G, counts.view, tokens.view, coef,
                            loss.view);
  EXPECT_TRUE(std::isnan(download<double>(loss)[0])) << "aux fwd, group id 2";
  DevVec dprobs = poisoned<float>(N * E);
  dt::ops::moe_aux_loss_bwd(d_hi.view, N, E, G, counts.view, tokens.view, coef, 1.0, dprobs.view);
  const VecF dp = download<float>(dprobs);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t e = 0; e < E; ++e)
      EXPECT_EQ(std::isnan(dp[t * E + e]), t == 1) << "aux bwd row " << t;
  DevVec zloss = upload(Vec{0.5}), dlse = poisoned<float>(N);
  dt::ops::moe_z_loss_fwd(lse.view, d_lo.view, N, 1.0, zloss.view);
  EXPECT_TRUE(std::isnan(download<double>(zloss)[0])) << "z fwd, group id -2";
  dt::ops::moe_z_loss_bwd(lse.view, d_lo.view, N, 1.0, 1.0, dlse.view);
  const VecF dl = download<float>(dlse);
  for (int64_t t = 0; t < N; ++t) EXPECT_EQ(std::isnan(dl[t]), t == 1) << "z bwd token " << t;
}

}  // namespace
