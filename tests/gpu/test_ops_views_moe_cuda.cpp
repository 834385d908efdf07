// GPU parity of the view forms of linear_cross_entropy, the MoE ops and adamw_step_multi (label
// gpu): each op on Device::cuda views against the same op on Device::cpu views of the values the
// device holds (bf16-rounded for bf16 storage), in f32 and bf16 storage.
//
// Bounds (docs/tolerances.md, tests/gpu/dev_tensor.h): outputs stored in fp32 1e-5 relative RMS
// (loss 1e-4 in bf16 mode: fp32 logits of bf16 inputs summed in another order); bf16 storage
// 5e-3 forward, 1e-2 backward; routing decisions, permutations and offsets exact; AdamW within
// 1e-6 relative per element (the kernel repeats the CPU's operations; bitwise differences are
// printed), its bf16 compute copy the GPU master rounded to nearest with ties away from zero
// exactly (core::bf16_round_ties_away, the rounding of the lean master's weight, core/bf16.h).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "bf16_util.h"
#include "core/bf16.h"
#include "core/constants.h"
#include "core/error.h"
#include "core/view.h"
#include "cuda/device.h"
#include "cuda/dtype.h"
#include "dev_tensor.h"
#include "ops/adamw.h"
#include "ops/lm_head_ce.h"
#include "ops/moe.h"
#include "test_util.h"

namespace dt = deltatron;
using dt::core::View;
using dt_test::DevTensor;
using dt_test::download;
using dt_test::poisoned;
using dt_test::randn;
using dt_test::tol_for;
using dt_test::upload;
using DType = dt::core::DType;
using VecF = std::vector<float>;
using VecI = std::vector<int32_t>;
using VecL = std::vector<int64_t>;

namespace {

constexpr dt::core::Device kCpu = dt::core::Device::cpu;
constexpr dt::core::Device kCuda = dt::core::Device::cuda;

View vf(VecF& v) { return View(v.data(), DType::f32, kCpu, {int64_t(v.size())}); }
View vi(VecI& v) { return View(v.data(), DType::i32, kCpu, {int64_t(v.size())}); }
View dv(const DevTensor& d) { return View(d.ptr, d.t, kCuda, {int64_t(d.n)}); }

// An int32 device tensor.
struct DevI {
  dt::cuda::DeviceBuffer buf;
  size_t n = 0;
  View view() const { return View(buf.get(), DType::i32, kCuda, {int64_t(n)}); }
};

DevI upload_i(const VecI& v) {
  DevI d{dt::cuda::DeviceBuffer(std::max<size_t>(v.size(), 1) * 4, "test ints"), v.size()};
  if (!v.empty())
    DT_CUDA_CHECK(cudaMemcpy(d.buf.get(), v.data(), v.size() * 4, cudaMemcpyHostToDevice));
  return d;
}

DevI alloc_i(size_t n) { return upload_i(VecI(n, -12345)); }

// An int64 device tensor (expert row offsets).
struct DevL {
  dt::cuda::DeviceBuffer buf;
  size_t n = 0;
  View view() const { return View(buf.get(), DType::i64, kCuda, {int64_t(n)}); }
};

DevL alloc_l(size_t n) {
  DevL d{dt::cuda::DeviceBuffer(std::max<size_t>(n, 1) * 8, "test int64s"), n};
  DT_CUDA_CHECK(cudaMemset(d.buf.get(), 0xA5, std::max<size_t>(n, 1) * 8));
  return d;
}

VecL download_l(const DevL& d) {
  VecL v(d.n);
  DT_CUDA_CHECK(cudaDeviceSynchronize());
  if (d.n) DT_CUDA_CHECK(cudaMemcpy(v.data(), d.buf.get(), d.n * 8, cudaMemcpyDeviceToHost));
  return v;
}

View vl(VecL& v) { return View(v.data(), DType::i64, kCpu, {int64_t(v.size())}); }
VecI no_bad() { return VecI(dt::ops::kMoeBadWords, dt::ops::kNoBadToken); }

VecI download_i(const DevI& d) {
  VecI v(d.n);
  DT_CUDA_CHECK(cudaDeviceSynchronize());
  if (d.n) DT_CUDA_CHECK(cudaMemcpy(v.data(), d.buf.get(), d.n * 4, cudaMemcpyDeviceToHost));
  return v;
}

void check(const DevTensor& got, const VecF& want, double tol, const std::string& what) {
  dt_test::check(download(got), dt_test::to_double(want), tol, what, "");
}

const char* name(DType t) { return dt::core::dtype_name(t); }

// ---- linear_cross_entropy ------------------------------------------------------------------

TEST(OpsViewsCuda, LinearCrossEntropy) {
  const int64_t N = 37, D = 24, V = 301;
  for (DType st : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(name(st));
    DevTensor x = upload(randn<float>(N * D, 1), st), W = upload(randn<float>(V * D, 2, 0.3), st);
    VecI targets(N);
    for (int64_t n = 0; n < N; ++n)
      targets[n] = n % 5 == 2 ? dt::core::kIgnoreIndex : int32_t((n * 13 + 1) % V);
    VecF dloss = dt_test::uniform<float>(N, 3, 0.1, 1.0);
    DevI t_d = upload_i(targets);
    DevTensor dloss_d = upload(dloss, DType::f32);
    const VecF dx0 = randn<float>(N * D, 4), dW0 = randn<float>(V * D, 5);
    DevTensor loss_d = poisoned(N, DType::f32), dx_d = upload(dx0, st),
              dW_d = upload(dW0, DType::f32);
    DevI correct_d = alloc_i(N);
    dt::ops::linear_cross_entropy(dv(x), dv(W), t_d.view(), dv(dloss_d), N, D, V, dv(loss_d),
                                  correct_d.view(), dv(dx_d), true, dv(dW_d));
    // CPU on the values the device holds (dx starts from its rounded values too).
    VecF xh = x.host, Wh = W.host, loss(N), dx = dx_d.host, dW = dW0;
    VecI correct(N);
    dt::ops::linear_cross_entropy(vf(xh), vf(Wh), vi(targets), vf(dloss), N, D, V, vf(loss),
                                  vi(correct), vf(dx), true, vf(dW));
    check(loss_d, loss, st == DType::f32 ? 1e-5 : 1e-4, "lce loss");
    check(dx_d, dx, tol_for(st, true), "lce dx (accumulated)");
    check(dW_d, dW, tol_for(st, true), "lce dW");
    const VecI correct_g = download_i(correct_d);
    int mismatches = 0;
    for (int64_t n = 0; n < N; ++n) mismatches += correct_g[n] != correct[n];
    EXPECT_LE(mismatches, st == DType::f32 ? 0 : 1);
  }
}

// ---- MoE -----------------------------------------------------------------------------------

TEST(OpsViewsCuda, RouterPermuteAndCombine) {
  const int64_t N = 53, E = 16, K = 4, D = 40, F = 24;
  VecF logits = randn<float>(N * E, 11);
  DevTensor logits_d = upload(logits, DType::f32);
  DevTensor probs_d = poisoned(N * E, DType::f32), lse_d = poisoned(N, DType::f32),
            w_d = poisoned(N * K, DType::f32);
  DevI idx_d = alloc_i(N * K), bad_d = upload_i(no_bad()), rows_d = alloc_i(N * K),
       pos_d = alloc_i(N * K);
  dt::ops::moe_router_fwd(dv(logits_d), N, E, K, dv(probs_d), dv(lse_d), idx_d.view(), dv(w_d),
                          bad_d.view());
  // Device offsets only (no host copy), then the host path: the same permutation.
  DevL off_dev = alloc_l(E + 1);
  dt::ops::moe_permute(idx_d.view(), N, K, E, bad_d.view(), off_dev.view(), nullptr, rows_d.view(),
                       pos_d.view());
  VecL off_d(E + 1, -1);
  DevL off_dev2 = alloc_l(E + 1);
  DevI rows2_d = alloc_i(N * K), pos2_d = alloc_i(N * K);
  dt::ops::moe_permute(idx_d.view(), N, K, E, bad_d.view(), off_dev2.view(), off_d.data(),
                       rows2_d.view(), pos2_d.view());
  VecF probs(N * E), lse(N), w(N * K);
  VecI idx(N * K), bad = no_bad(), rows(N * K), pos(N * K);
  dt::ops::moe_router_fwd(vf(logits), N, E, K, vf(probs), vf(lse), vi(idx), vf(w), vi(bad));
  VecL off(E + 1);
  dt::ops::moe_permute(vi(idx), N, K, E, vi(bad), vl(off), nullptr, vi(rows), vi(pos));
  check(probs_d, probs, 1e-5, "router probs");
  check(lse_d, lse, 1e-5, "router lse");
  check(w_d, w, 1e-5, "router topk_w");
  EXPECT_EQ(download_i(idx_d), idx);
  EXPECT_EQ(download_i(bad_d), no_bad());
  EXPECT_EQ(download_l(off_dev), off);
  EXPECT_EQ(download_l(off_dev2), off);
  EXPECT_EQ(off_d, off);
  EXPECT_EQ(download_i(rows_d), rows);
  EXPECT_EQ(download_i(pos_d), pos);
  EXPECT_EQ(download_i(rows2_d), rows);
  EXPECT_EQ(download_i(pos2_d), pos);
  dt::ops::moe_check_bad(bad_d.view(), E);  // nothing recorded

  VecF dw = randn<float>(N * K, 12), dprobs = randn<float>(N * E, 13);
  DevTensor dw_d = upload(dw, DType::f32), dprobs_d = upload(dprobs, DType::f32);
  DevTensor dlogits_d = poisoned(N * E, DType::f32);
  VecF dlogits(N * E);
  dt::ops::moe_router_bwd(dv(probs_d), idx_d.view(), dv(w_d), dv(dw_d), dv(dprobs_d), View{}, N, E,
                          K, dv(dlogits_d));
  dt::ops::moe_router_bwd(vf(probs), vi(idx), vf(w), vf(dw), vf(dprobs), View{}, N, E, K,
                          vf(dlogits));
  check(dlogits_d, dlogits, 1e-5, "router dlogits");

  for (DType st : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(name(st));
    const int64_t P = N * K;
    DevTensor x = upload(randn<float>(N * D, 21), st);
    DevTensor xg_d = poisoned(P * D, st);
    dt::ops::moe_gather(dv(x), rows_d.view(), dv(w_d), P, K, D, dv(xg_d));
    VecF xh = x.host, xg(P * D);
    dt::ops::moe_gather(vf(xh), vi(rows), vf(w), P, K, D, vf(xg));
    check(xg_d, xg, st == DType::f32 ? 1e-5 : tol_for(st, false), "moe_gather");

    DevTensor src = upload(randn<float>(P * D, 22), st);
    const VecF y0 = randn<float>(N * D, 23);
    DevTensor y_d = upload(y0, DType::f32);
    dt::ops::moe_scatter_add(dv(src), pos_d.view(), dv(w_d), N, K, D, dv(y_d), true);
    VecF srch = src.host, y = y0;
    dt::ops::moe_scatter_add(vf(srch), vi(pos), vf(w), N, K, D, vf(y), true);
    check(y_d, y, 1e-5, "moe_scatter_add (f32 y, +=)");

    DevTensor h = upload(randn<float>(P * F, 24), st), g = upload(randn<float>(P * F, 25), st);
    DevTensor dwe_d = upload(VecF(P, 0.f), DType::f32), dh_d = poisoned(P * F, st);
    dt::ops::moe_expert_weight_bwd(dv(h), dv(g), rows_d.view(), dv(w_d), P, K, F, dv(dwe_d),
                                   dv(dh_d));
    VecF hh = h.host, gh = g.host, dwe(P, 0.f), dh(P * F);
    dt::ops::moe_expert_weight_bwd(vf(hh), vf(gh), vi(rows), vf(w), P, K, F, vf(dwe), vf(dh));
    check(dwe_d, dwe, 1e-5, "moe_expert_weight_bwd dw");
    check(dh_d, dh, tol_for(st, true), "moe_expert_weight_bwd dh");

    DevTensor o = upload(randn<float>(N * D, 26), st), dy = upload(randn<float>(N * D, 27), st);
    VecF gate = randn<float>(N, 28);
    DevTensor gate_d = upload(gate, DType::f32), ys_d = upload(y0, DType::f32);
    dt::ops::moe_shared_gate_fwd(dv(o), dv(gate_d), N, D, dv(ys_d));
    VecF oh = o.host, dyh = dy.host, ys = y0;
    dt::ops::moe_shared_gate_fwd(vf(oh), vf(gate), N, D, vf(ys));
    check(ys_d, ys, 1e-5, "moe_shared_gate_fwd");
    DevTensor do_d = poisoned(N * D, st), dg_d = poisoned(N, DType::f32);
    dt::ops::moe_shared_gate_bwd(dv(o), dv(gate_d), dv(dy), N, D, dv(do_d), dv(dg_d));
    VecF dout(N * D), dg(N);
    dt::ops::moe_shared_gate_bwd(vf(oh), vf(gate), vf(dyh), N, D, vf(dout), vf(dg));
    check(do_d, dout, tol_for(st, true), "moe_shared_gate_bwd do");
    check(dg_d, dg, 1e-5, "moe_shared_gate_bwd dg");
  }
}

TEST(OpsViewsCuda, GroupedLinear) {
  const int64_t E = 5, I = 32, O = 48;
  VecL off = {0, 7, 7, 30, 31, 64};
  const int64_t R = off[E];
  DevL off_dev = alloc_l(E + 1);
  DT_CUDA_CHECK(cudaMemcpy(off_dev.buf.get(), off.data(), (E + 1) * 8, cudaMemcpyHostToDevice));
  for (DType st : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(name(st));
    DevTensor x = upload(randn<float>(R * I, 31), st), W = upload(randn<float>(E * O * I, 32), st),
              dy = upload(randn<float>(R * O, 33), st);
    const VecF dW0 = randn<float>(E * O * I, 34);
    DevTensor y_d = poisoned(R * O, st), dx_d = poisoned(R * I, st), dW_d = upload(dW0, DType::f32);
    dt::ops::grouped_linear_fwd(dv(x), dv(W), off_dev.view(), off.data(), E, I, O, dv(y_d));
    dt::ops::grouped_linear_bwd(dv(x), dv(W), dv(dy), off_dev.view(), off.data(), E, I, O, dv(dx_d),
                                dv(dW_d));
    VecF xh = x.host, Wh = W.host, dyh = dy.host, y(R * O), dx(R * I), dW = dW0;
    dt::ops::grouped_linear_fwd(vf(xh), vf(Wh), vl(off), nullptr, E, I, O, vf(y));
    dt::ops::grouped_linear_bwd(vf(xh), vf(Wh), vf(dyh), vl(off), nullptr, E, I, O, vf(dx), vf(dW));
    check(y_d, y, tol_for(st, false), "grouped_linear_fwd");
    check(dx_d, dx, tol_for(st, true), "grouped_linear_bwd dx");
    check(dW_d, dW, 1e-5, "grouped_linear_bwd dW");
    const bool needs_host = dt::ops::grouped_linear_needs_host_offsets(kCuda, st, I, O);
    EXPECT_EQ(needs_host, st == DType::f32);
    if (needs_host) {  // the fp32 debug mode runs per expert from host offsets only
      dt_test::expect_error(
          [&] {
            dt::ops::grouped_linear_fwd(dv(x), dv(W), off_dev.view(), nullptr, E, I, O, dv(y_d));
          },
          {"grouped_linear_fwd", "pass host offsets"});
      continue;
    }
    // Device offsets: bitwise the host-offset results (same kernel, same tiles).
    DevTensor y2 = poisoned(R * O, st), dx2 = poisoned(R * I, st), dW2 = upload(dW0, DType::f32);
    dt::ops::grouped_linear_fwd(dv(x), dv(W), off_dev.view(), nullptr, E, I, O, dv(y2));
    dt::ops::grouped_linear_bwd(dv(x), dv(W), dv(dy), off_dev.view(), nullptr, E, I, O, dv(dx2),
                                dv(dW2));
    EXPECT_EQ(download(y2), download(y_d)) << "y, device offsets";
    EXPECT_EQ(download(dx2), download(dx_d)) << "dx, device offsets";
    EXPECT_EQ(download(dW2), download(dW_d)) << "dW, device offsets";
  }
}

// ---- AdamW ---------------------------------------------------------------------------------

TEST(OpsViewsCuda, AdamWStepMulti) {
  const int64_t sizes[] = {70000, 33};
  const double decays[] = {0.1, 0.0};
  struct Host {
    VecF p, m, v, g, copy;
  };
  std::vector<Host> host(2);
  std::vector<DevTensor> p_d, m_d, v_d, g_d, c_d;
  for (int k = 0; k < 2; ++k) {
    const int64_t n = sizes[k];
    host[k] = {randn<float>(n, 40 + k), VecF(n, 0.f), VecF(n, 0.f), VecF(n), VecF(n)};
    p_d.push_back(upload(host[k].p, DType::f32));
    m_d.push_back(upload(host[k].m, DType::f32));
    v_d.push_back(upload(host[k].v, DType::f32));
    g_d.push_back(poisoned(n, DType::f32));
    c_d.push_back(poisoned(n, DType::bf16));
  }
  for (int step = 1; step <= 3; ++step) {
    dt::ops::AdamWArgs args;
    args.lr = 1e-3 * step;
    args.step = step;
    args.grad_scale = step == 2 ? 0.625f : 1.0f;
    std::vector<dt::ops::AdamWTensor> cpu_ts, gpu_ts;
    for (int k = 0; k < 2; ++k) {
      host[k].g = randn<float>(sizes[k], 100 * step + k, 0.2);
      g_d[k] = upload(host[k].g, DType::f32);
      cpu_ts.push_back({vf(host[k].p), vf(host[k].m), vf(host[k].v), vf(host[k].g),
                        vf(host[k].copy), decays[k]});
      gpu_ts.push_back({dv(p_d[k]), dv(m_d[k]), dv(v_d[k]), dv(g_d[k]), dv(c_d[k]), decays[k]});
    }
    dt::ops::adamw_step_multi(cpu_ts, args);
    dt::ops::adamw_step_multi(gpu_ts, args);
    for (int k = 0; k < 2; ++k) {
      for (auto [d, want, what] :
           {std::tuple{&p_d[k], &host[k].p, "master"}, std::tuple{&m_d[k], &host[k].m, "exp_avg"},
            std::tuple{&v_d[k], &host[k].v, "exp_avg_sq"}}) {
        const VecF got = download(*d);
        double max_rel = 0;
        int64_t bitwise = 0;
        for (size_t i = 0; i < got.size(); ++i) {
          bitwise += std::memcmp(&got[i], &(*want)[i], 4) != 0;
          max_rel = std::max(max_rel, std::abs(double(got[i]) - (*want)[i]) /
                                          std::max(std::abs(double((*want)[i])), 1e-30));
        }
        std::printf("  adamw step %d tensor %d %-10s max_rel=%.3e bitwise_diffs=%lld\n", step, k,
                    what, max_rel, static_cast<long long>(bitwise));
        EXPECT_LE(max_rel, 1e-6) << what << " step " << step << " tensor " << k;
      }
      const VecF master = download(p_d[k]);
      const std::vector<uint8_t> copy = dt_test::bytes_of(c_d[k]);
      for (size_t i = 0; i < master.size(); ++i) {
        uint16_t c;
        std::memcpy(&c, copy.data() + 2 * i, 2);
        ASSERT_EQ(c, dt::core::bf16_round_ties_away(master[i]))
            << "compute copy " << k << " element " << i;
      }
    }
  }
}

}  // namespace
