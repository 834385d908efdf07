// Tests of the view forms of the LM head + cross-entropy, MoE and AdamW ops on the CPU: the fused
// linear_cross_entropy against a double reference (one weight for every token, the chunked path,
// per-token dloss weights, correct flags, accumulation); every MoE view op against its cpu:: kernel
// (bitwise); the all-experts moe_scatter_add against the per-expert scatter; grouped_linear
// against one linear per expert; adamw_step_multi against the pre-op train::AdamW::step loop and
// train::AdamW::step with clip_grad_norm (bitwise); and the argument checks' errors.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "core/constants.h"
#include "core/error.h"
#include "core/view.h"
#include "cpu/linear.h"
#include "cpu/moe.h"
#include "model/config.h"
#include "ops/adamw.h"
#include "ops/linear.h"
#include "ops/lm_head_ce.h"
#include "ops/moe.h"
#include "test_util.h"
#include "train/optimizer.h"

namespace {

using namespace deltatron;
using core::DType;
using core::View;
using dt_test::expect_error;
using dt_test::randn;
using VecF = std::vector<float>;
using VecI = std::vector<int32_t>;
using VecL = std::vector<int64_t>;

constexpr core::Device kCpu = core::Device::cpu;

View vf(VecF& v) { return View(v.data(), DType::f32, kCpu, {int64_t(v.size())}); }
View vi(VecI& v) { return View(v.data(), DType::i32, kCpu, {int64_t(v.size())}); }
View vl(VecL& v) { return View(v.data(), DType::i64, kCpu, {int64_t(v.size())}); }
VecI no_bad() { return VecI(ops::kMoeBadWords, ops::kNoBadToken); }

// Bitwise equality of two float vectors, naming the first difference.
void expect_bitwise(const VecF& got, const VecF& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) {
      ADD_FAILURE() << what << ": element " << i << " is " << got[i] << ", expected " << want[i];
      return;
    }
}

// ---- linear_cross_entropy ------------------------------------------------------------------

struct HeadCase {
  int64_t N, D, V;
  VecF x, W;
  VecI targets;
};

HeadCase make_head(int64_t N, int64_t D, int64_t V, uint64_t seed) {
  HeadCase h{N, D, V, randn<float>(N * D, seed), randn<float>(V * D, seed + 1, 0.5), VecI(N)};
  for (int64_t n = 0; n < N; ++n)
    h.targets[n] = n % 4 == 1 ? core::kIgnoreIndex : int32_t((n * 7 + 3) % V);
  return h;
}

// Double reference of the fused head: per-token loss, dx and dW for per-token weights dloss.
struct HeadRef {
  std::vector<double> loss, dx, dW;
  std::vector<int32_t> argmax;
};

HeadRef head_reference(const HeadCase& h, const VecF& dloss) {
  const int64_t N = h.N, D = h.D, V = h.V;
  HeadRef r{std::vector<double>(N, 0), std::vector<double>(N * D, 0), std::vector<double>(V * D, 0),
            VecI(N, -1)};
  for (int64_t n = 0; n < N; ++n) {
    if (h.targets[n] == core::kIgnoreIndex) continue;
    std::vector<double> l(V);
    for (int64_t v = 0; v < V; ++v)
      for (int64_t d = 0; d < D; ++d) l[v] += double(h.x[n * D + d]) * double(h.W[v * D + d]);
    const double m = *std::max_element(l.begin(), l.end());
    r.argmax[n] = int32_t(std::max_element(l.begin(), l.end()) - l.begin());
    double s = 0;
    for (double z : l) s += std::exp(z - m);
    const double lse = m + std::log(s);
    r.loss[n] = lse - l[h.targets[n]];
    for (int64_t v = 0; v < V; ++v) {
      const double g = dloss[n] * (std::exp(l[v] - lse) - (v == h.targets[n] ? 1.0 : 0.0));
      if (g == 0) continue;
      for (int64_t d = 0; d < D; ++d) {
        r.dx[n * D + d] += g * double(h.W[v * D + d]);
        r.dW[v * D + d] += g * double(h.x[n * D + d]);
      }
    }
  }
  return r;
}

// The fused op with one weight for every token against the double reference (the LM head's
// use: ce_scale), correct flags included. dx sums V float32 products per element: the bound
// grows with the vocabulary (1e-5 for V = 2^20).
void expect_same_as_reference(const HeadCase& h, double tol = 1e-6) {
  const float scale = 0.37f;
  VecF dloss(h.N, scale), loss(h.N, -1.f), dx(h.N * h.D, 5.f), dW(h.V * h.D, 0.f);
  const HeadRef ref = head_reference(h, dloss);
  VecI correct(h.N, 7);
  VecI targets = h.targets;
  VecF x = h.x, W = h.W;
  ops::linear_cross_entropy(vf(x), vf(W), vi(targets), vf(dloss), h.N, h.D, h.V, vf(loss),
                            vi(correct), vf(dx), false, vf(dW));
  EXPECT_LE(dt_test::compare(loss.data(), ref.loss.data(), h.N).rel_rms, tol);
  EXPECT_LE(dt_test::compare(dx.data(), ref.dx.data(), h.N * h.D).rel_rms, tol);
  EXPECT_LE(dt_test::compare(dW.data(), ref.dW.data(), h.V * h.D).rel_rms, tol);
  for (int64_t n = 0; n < h.N; ++n) {
    if (h.targets[n] == core::kIgnoreIndex) {
      EXPECT_EQ(correct[n], 0) << n;
      EXPECT_EQ(loss[n], 0.f) << n;
      for (int64_t d = 0; d < h.D; ++d) EXPECT_EQ(dx[n * h.D + d], 0.f) << n;
    } else {
      EXPECT_EQ(correct[n], int32_t(ref.argmax[n] == h.targets[n])) << n;
    }
  }
}

TEST(LinearCrossEntropy, MatchesDoubleReference) {
  expect_same_as_reference(make_head(11, 13, 37, 1));
}

// V = 2^20 gives chunks of 4 label rows: several chunks, the last one partial.
TEST(LinearCrossEntropy, MatchesDoubleReferenceChunked) {
  expect_same_as_reference(make_head(19, 3, int64_t(1) << 20, 2), 1e-5);
}

TEST(LinearCrossEntropy, CorrectFlagsWhereTargetIsArgmax) {
  HeadCase h = make_head(9, 5, 23, 3);
  // Make half the label rows' targets the argmax of their logits.
  VecF logits(h.N * h.V);
  cpu::linear_fwd<float>(h.x.data(), h.W.data(), h.N, h.D, h.V, logits.data());
  for (int64_t n = 0; n < h.N; n += 2)
    if (h.targets[n] != core::kIgnoreIndex)
      h.targets[n] =
          int32_t(std::max_element(&logits[n * h.V], &logits[(n + 1) * h.V]) - &logits[n * h.V]);
  VecF loss(h.N);
  VecI correct(h.N, -1);
  ops::linear_cross_entropy(vf(h.x), vf(h.W), vi(h.targets), View{}, h.N, h.D, h.V, vf(loss),
                            vi(correct), View{}, false, View{});
  int hits = 0;
  for (int64_t n = 0; n < h.N; ++n) {
    const float* row = &logits[n * h.V];
    const int32_t want = h.targets[n] != core::kIgnoreIndex &&
                         std::max_element(row, row + h.V) - row == h.targets[n];
    EXPECT_EQ(correct[n], want) << n;
    hits += want;
  }
  EXPECT_GE(hits, 2);
}

// Per-token dloss weights against a double reference; accumulation into dx and dW.
TEST(LinearCrossEntropy, DlossWeightsAndAccumulate) {
  HeadCase h = make_head(10, 7, 29, 4);
  const int64_t N = h.N, D = h.D, V = h.V;
  VecF dloss = dt_test::uniform<float>(N, 5, 0.1, 2.0);
  // Double reference.
  std::vector<double> loss_ref(N, 0), dx_ref(N * D, 0), dW_ref(V * D, 0);
  for (int64_t n = 0; n < N; ++n) {
    if (h.targets[n] == core::kIgnoreIndex) continue;
    std::vector<double> l(V);
    for (int64_t v = 0; v < V; ++v)
      for (int64_t d = 0; d < D; ++d) l[v] += double(h.x[n * D + d]) * double(h.W[v * D + d]);
    const double m = *std::max_element(l.begin(), l.end());
    double s = 0;
    for (double z : l) s += std::exp(z - m);
    const double lse = m + std::log(s);
    loss_ref[n] = lse - l[h.targets[n]];
    for (int64_t v = 0; v < V; ++v) {
      const double g = dloss[n] * (std::exp(l[v] - lse) - (v == h.targets[n] ? 1.0 : 0.0));
      for (int64_t d = 0; d < D; ++d) {
        dx_ref[n * D + d] += g * double(h.W[v * D + d]);
        dW_ref[v * D + d] += g * double(h.x[n * D + d]);
      }
    }
  }
  VecF loss(N), dx(N * D, 3.f), dW(V * D, 0.f);
  ops::linear_cross_entropy(vf(h.x), vf(h.W), vi(h.targets), vf(dloss), N, D, V, vf(loss), View{},
                            vf(dx), false, vf(dW));
  EXPECT_LE(dt_test::compare(loss.data(), loss_ref.data(), N).rel_rms, 1e-6);
  EXPECT_LE(dt_test::compare(dx.data(), dx_ref.data(), N * D).rel_rms, 1e-6);
  EXPECT_LE(dt_test::compare(dW.data(), dW_ref.data(), V * D).rel_rms, 1e-6);
  for (int64_t n = 0; n < N; ++n)
    if (h.targets[n] == core::kIgnoreIndex)
      for (int64_t d = 0; d < D; ++d) EXPECT_EQ(dx[n * D + d], 0.f);

  // Accumulate: dx += (bitwise: the same products added once), dW += (within rounding).
  const VecF dx0 = randn<float>(N * D, 6), dW0 = randn<float>(V * D, 7);
  VecF dx_acc = dx0, dW_acc = dW0;
  ops::linear_cross_entropy(vf(h.x), vf(h.W), vi(h.targets), vf(dloss), N, D, V, vf(loss), View{},
                            vf(dx_acc), true, vf(dW_acc));
  VecF dx_want(N * D);
  for (int64_t i = 0; i < N * D; ++i) dx_want[i] = dx0[i] + dx[i];
  expect_bitwise(dx_acc, dx_want, "accumulated dx");
  std::vector<double> dW_want(V * D);
  for (int64_t i = 0; i < V * D; ++i) dW_want[i] = double(dW0[i]) + dW_ref[i];
  EXPECT_LE(dt_test::compare(dW_acc.data(), dW_want.data(), V * D).rel_rms, 1e-6);

  // dx only (frozen head) and dW only.
  VecF dx_only(N * D), dW_only(V * D, 0.f);
  ops::linear_cross_entropy(vf(h.x), vf(h.W), vi(h.targets), vf(dloss), N, D, V, vf(loss), View{},
                            vf(dx_only), false, View{});
  expect_bitwise(dx_only, dx, "dx without dW");
  ops::linear_cross_entropy(vf(h.x), vf(h.W), vi(h.targets), vf(dloss), N, D, V, vf(loss), View{},
                            View{}, false, vf(dW_only));
  expect_bitwise(dW_only, dW, "dW without dx");
}

TEST(LinearCrossEntropy, Errors) {
  HeadCase h = make_head(4, 3, 5, 8);
  VecF loss(4), dx(12), dloss(4, 1.f), short_loss(3);
  std::vector<uint16_t> xb(12);
  const View x_bf16(xb.data(), DType::bf16, kCpu, {12});
  expect_error(
      [&] {
        ops::linear_cross_entropy(x_bf16, vf(h.W), vi(h.targets), View{}, 4, 3, 5, vf(loss), View{},
                                  View{}, false, View{});
      },
      {"ops::linear_cross_entropy", "x_ND", "bf16", "float32 only"});
  expect_error(
      [&] {
        ops::linear_cross_entropy(vf(h.x), vf(h.W), vi(h.targets), View{}, 4, 3, 5, vf(short_loss),
                                  View{}, View{}, false, View{});
      },
      {"ops::linear_cross_entropy", "loss_N", "expected f32 with 4 elements on cpu"});
  expect_error(
      [&] {
        ops::linear_cross_entropy(vf(h.x), vf(h.W), vi(h.targets), View{}, 4, 3, 5, vf(loss),
                                  View{}, vf(dx), false, View{});
      },
      {"ops::linear_cross_entropy", "without dloss_N"});
  const View loss_cuda(loss.data(), DType::f32, core::Device::cuda, {4});
  expect_error(
      [&] {
        ops::linear_cross_entropy(vf(h.x), vf(h.W), vi(h.targets), View{}, 4, 3, 5, loss_cuda,
                                  View{}, View{}, false, View{});
      },
      {"ops::linear_cross_entropy", "loss_N is f32 [4] on cuda", "on cpu like x_ND"});
  VecI bad = h.targets;
  bad[0] = 5;
  expect_error(
      [&] {
        ops::linear_cross_entropy(vf(h.x), vf(h.W), vi(bad), View{}, 4, 3, 5, vf(loss), View{},
                                  View{}, false, View{});
      },
      {"target id 5"});
}

// ---- MoE -----------------------------------------------------------------------------------

struct Routing {
  int64_t N, E, K;
  VecF logits, probs, lse, w;
  VecI idx;
  VecL off;
  VecI rows, pos;
};

Routing route(int64_t N, int64_t E, int64_t K, uint64_t seed) {
  Routing r{N,           E,           K,           randn<float>(N * E, seed),
            VecF(N * E), VecF(N),     VecF(N * K), VecI(N * K),
            VecL(E + 1), VecI(N * K), VecI(N * K)};
  VecI bad = no_bad();
  ops::moe_router_fwd(vf(r.logits), N, E, K, vf(r.probs), vf(r.lse), vi(r.idx), vf(r.w), vi(bad));
  EXPECT_EQ(bad, no_bad());  // the CPU throws instead of recording
  ops::moe_permute(vi(r.idx), N, K, E, vi(bad), vl(r.off), nullptr, vi(r.rows), vi(r.pos));
  EXPECT_EQ(bad, no_bad());
  return r;
}

TEST(MoeViews, RouterAndPermuteMatchHostOps) {
  const int64_t N = 13, E = 7, K = 3;
  Routing r = route(N, E, K, 11);
  VecF probs(N * E), lse(N), w(N * K);
  VecI idx(N * K);
  cpu::moe_router_fwd<float>(r.logits.data(), N, E, K, probs.data(), lse.data(), idx.data(),
                             w.data());
  expect_bitwise(r.probs, probs, "probs");
  expect_bitwise(r.lse, lse, "lse");
  expect_bitwise(r.w, w, "topk_w");
  EXPECT_EQ(r.idx, idx);
  VecL off(E + 1);
  VecI rows(N * K);
  cpu::moe_permute(idx.data(), N, K, E, off.data(), rows.data());
  EXPECT_EQ(r.off, off);
  EXPECT_EQ(r.rows, rows);
  for (int64_t i = 0; i < N * K; ++i) EXPECT_EQ(r.rows[r.pos[i]], i);

  // bad_3 may be empty; the host copy of the offsets equals the offsets view.
  VecF probs2(N * E), lse2(N), w2(N * K);
  VecI idx2(N * K), rows2(N * K), pos2(N * K);
  ops::moe_router_fwd(vf(r.logits), N, E, K, vf(probs2), vf(lse2), vi(idx2), vf(w2), View{});
  expect_bitwise(probs2, probs, "probs without bad_3");
  VecL off2(E + 1, -1), off2_host(E + 1, -1);
  ops::moe_permute(vi(idx2), N, K, E, View{}, vl(off2), off2_host.data(), vi(rows2), vi(pos2));
  EXPECT_EQ(off2, off);
  EXPECT_EQ(off2_host, off);
  EXPECT_EQ(rows2, rows);
  EXPECT_EQ(pos2, r.pos);

  // Router backward with each optional gradient present or empty.
  VecF dw = randn<float>(N * K, 12), dprobs = randn<float>(N * E, 13), dlse = randn<float>(N, 14);
  for (int mask = 0; mask < 8; ++mask) {
    VecF got(N * E), want(N * E);
    ops::moe_router_bwd(vf(r.probs), vi(r.idx), vf(r.w), mask & 1 ? vf(dw) : View{},
                        mask & 2 ? vf(dprobs) : View{}, mask & 4 ? vf(dlse) : View{}, N, E, K,
                        vf(got));
    cpu::moe_router_bwd<float>(r.probs.data(), r.idx.data(), r.w.data(),
                               mask & 1 ? dw.data() : nullptr, mask & 2 ? dprobs.data() : nullptr,
                               mask & 4 ? dlse.data() : nullptr, N, E, K, want.data());
    expect_bitwise(got, want, "dlogits, mask " + std::to_string(mask));
  }
}

TEST(MoeViews, RouterNonFiniteAndBadToken) {
  const int64_t N = 4, E = 5, K = 2;
  VecF logits = randn<float>(N * E, 21), probs(N * E), lse(N), w(N * K);
  VecI idx(N * K), bad = no_bad(), rows(N * K), pos(N * K);
  logits[2 * E + 1] = NAN;
  expect_error(
      [&] {
        ops::moe_router_fwd(vf(logits), N, E, K, vf(probs), vf(lse), vi(idx), vf(w), vi(bad));
      },
      {"moe_router_fwd", "router logits of token 2 are not finite"});
  EXPECT_EQ(bad, no_bad());
  // A device router's bad token (here written by hand) makes moe_permute throw the same error.
  for (int64_t i = 0; i < N * K; ++i) idx[i] = int32_t(i % K);
  bad[0] = 3;
  VecL off(E + 1), off_host(E + 1);
  expect_error(
      [&] {
        ops::moe_permute(vi(idx), N, K, E, vi(bad), vl(off), off_host.data(), vi(rows), vi(pos));
      },
      {"router logits of token 3 are not finite"});
  // The CPU refuses an out-of-range expert id at once, with or without host offsets.
  VecI bad_idx = idx;
  bad_idx[3] = 7;
  VecI clean = no_bad();
  for (int64_t* host : {static_cast<int64_t*>(nullptr), off_host.data()})
    expect_error(
        [&] {
          ops::moe_permute(vi(bad_idx), N, K, E, vi(clean), vl(off), host, vi(rows), vi(pos));
        },
        {"moe_permute", "expert id 7", "token 1", "outside [0, 5)"});
  EXPECT_EQ(clean, no_bad());
}

// moe_check_bad throws the first recorded error with the text of the op that found it.
TEST(MoeViews, CheckBadWords) {
  VecI none = no_bad();
  ops::moe_check_bad(vi(none), 5);
  VecI router = no_bad();
  router[0] = 6;
  expect_error([&] { ops::moe_check_bad(vi(router), 5); },
               {"moe_router_fwd: router logits of token 6 are not finite"});
  VecI expert = no_bad();
  expert[1] = 2, expert[2] = 9;
  expect_error([&] { ops::moe_check_bad(vi(expert), 5); },
               {"moe_permute: expert id 9 of token 2 is outside [0, 5)"});
  VecI both = expert;
  both[0] = 4;
  expect_error([&] { ops::moe_check_bad(vi(both), 5); }, {"router logits of token 4"});
  VecI short_words(2, ops::kNoBadToken);
  expect_error([&] { ops::moe_check_bad(vi(short_words), 5); },
               {"ops::moe_check_bad", "bad_3", "expected i32 with 3 elements"});
}

TEST(MoeViews, GatherAndExpertWeightBwdMatchHostOps) {
  const int64_t N = 9, E = 4, K = 2, D = 6, F = 5;
  Routing r = route(N, E, K, 31);
  VecF x = randn<float>(N * D, 32);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t R = r.off[e + 1] - r.off[e];
    VecI rows(r.rows.begin() + r.off[e], r.rows.begin() + r.off[e + 1]);
    for (bool weighted : {false, true}) {
      VecF got(R * D, -1.f), want(R * D, -2.f);
      ops::moe_gather(vf(x), vi(rows), weighted ? vf(r.w) : View{}, R, K, D, vf(got));
      cpu::moe_gather<float>(x.data(), rows.data(), weighted ? r.w.data() : nullptr, R, K, D,
                             want.data());
      expect_bitwise(got, want, "gather");
    }
    VecF h = randn<float>(R * F, 33 + e), g = randn<float>(R * F, 43 + e);
    VecF dw_got(N * K, 0.f), dw_want(N * K, 0.f), dh_got(R * F), dh_want(R * F);
    ops::moe_expert_weight_bwd(vf(h), vf(g), vi(rows), vf(r.w), R, K, F, vf(dw_got), vf(dh_got));
    cpu::moe_expert_weight_bwd<float>(h.data(), g.data(), rows.data(), r.w.data(), R, K, F,
                                      dw_want.data(), dh_want.data());
    expect_bitwise(dw_got, dw_want, "expert dw");
    expect_bitwise(dh_got, dh_want, "expert dh");
  }
  VecI out_of_range(1, int32_t(N * K));
  VecF out(D);
  expect_error([&] { ops::moe_gather(vf(x), vi(out_of_range), View{}, 1, K, D, vf(out)); },
               {"ops::moe_gather", "rows_R[0]", "outside [0, 18)"});
}

// The all-experts combine equals the per-expert scatter in ascending expert order, bitwise.
TEST(MoeViews, ScatterAddCombineEqualsPerExpertScatter) {
  const int64_t N = 17, E = 6, K = 3, D = 8;
  Routing r = route(N, E, K, 51);
  VecF src = randn<float>(N * K * D, 52);
  const VecF y0 = randn<float>(N * D, 53);
  for (bool weighted : {false, true})
    for (bool accumulate : {false, true}) {
      VecF want = accumulate ? y0 : VecF(N * D, 0.f);
      for (int64_t e = 0; e < E; ++e)
        cpu::moe_scatter_add<float>(src.data() + r.off[e] * D, r.rows.data() + r.off[e],
                                    weighted ? r.w.data() : nullptr, r.off[e + 1] - r.off[e], K, D,
                                    want.data());
      VecF got = accumulate ? y0 : VecF(N * D, NAN);
      ops::moe_scatter_add(vf(src), vi(r.pos), weighted ? vf(r.w) : View{}, N, K, D, vf(got),
                           accumulate);
      expect_bitwise(got, want,
                     std::string("combine") + (weighted ? " weighted" : "") +
                         (accumulate ? " accumulate" : ""));
    }
}

TEST(MoeViews, SharedGateMatchesHostOps) {
  const int64_t N = 7, D = 9;
  VecF o = randn<float>(N * D, 61), g = randn<float>(N, 62), dy = randn<float>(N * D, 63);
  VecF y_got = randn<float>(N * D, 64), y_want = y_got;
  ops::moe_shared_gate_fwd(vf(o), vf(g), N, D, vf(y_got));
  cpu::moe_shared_gate_fwd<float>(o.data(), g.data(), N, D, y_want.data());
  expect_bitwise(y_got, y_want, "shared gate y");
  VecF do_got(N * D), do_want(N * D), dg_got(N), dg_want(N);
  ops::moe_shared_gate_bwd(vf(o), vf(g), vf(dy), N, D, vf(do_got), vf(dg_got));
  cpu::moe_shared_gate_bwd<float>(o.data(), g.data(), dy.data(), N, D, do_want.data(),
                                  dg_want.data());
  expect_bitwise(do_got, do_want, "shared gate do");
  expect_bitwise(dg_got, dg_want, "shared gate dg");
}

// grouped_linear = one linear per expert slice; an expert without rows is skipped. The offsets
// view alone (host pointer null) and the host pointer give the same results.
TEST(MoeViews, GroupedLinearEqualsPerExpertLinear) {
  const int64_t E = 4, I = 6, O = 5;
  VecL off = {0, 3, 3, 8, 10};
  const int64_t R = off[E];
  VecF x = randn<float>(R * I, 71), W = randn<float>(E * O * I, 72), dy = randn<float>(R * O, 73);
  VecF y_got(R * O, NAN), y_want(R * O);
  ops::grouped_linear_fwd(vf(x), vf(W), View{}, off.data(), E, I, O, vf(y_got));
  const VecF dW0 = randn<float>(E * O * I, 74);
  VecF dx_want(R * I), dW_want = dW0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = off[e + 1] - off[e];
    if (n == 0) continue;
    cpu::linear_fwd<float>(x.data() + off[e] * I, W.data() + e * O * I, n, I, O,
                           y_want.data() + off[e] * O);
    cpu::linear_bwd<float>(x.data() + off[e] * I, W.data() + e * O * I, dy.data() + off[e] * O, n,
                           I, O, dx_want.data() + off[e] * I, false, dW_want.data() + e * O * I);
  }
  expect_bitwise(y_got, y_want, "grouped y");
  VecF y_view(R * O, NAN);
  ops::grouped_linear_fwd(vf(x), vf(W), vl(off), nullptr, E, I, O, vf(y_view));
  expect_bitwise(y_view, y_want, "grouped y from the offsets view");
  for (bool host : {true, false}) {
    const int64_t* off_host = host ? off.data() : nullptr;
    const std::string how = host ? " (host offsets)" : " (offsets view)";
    VecF dx_got(R * I, NAN), dW_got = dW0;
    ops::grouped_linear_bwd(vf(x), vf(W), vf(dy), vl(off), off_host, E, I, O, vf(dx_got),
                            vf(dW_got));
    expect_bitwise(dx_got, dx_want, "grouped dx" + how);
    expect_bitwise(dW_got, dW_want, "grouped dW" + how);
    VecF dx_only(R * I, NAN), dW_only = dW0;
    ops::grouped_linear_bwd(vf(x), vf(W), vf(dy), vl(off), off_host, E, I, O, vf(dx_only), View{});
    expect_bitwise(dx_only, dx_want, "grouped dx without dW" + how);
    ops::grouped_linear_bwd(vf(x), vf(W), vf(dy), vl(off), off_host, E, I, O, View{}, vf(dW_only));
    expect_bitwise(dW_only, dW_want, "grouped dW without dx" + how);
    // accumulate_dw false: a NaN-poisoned dW overwritten, an empty expert's slice with zeros
    VecF dW_over(E * O * I, NAN), dW_sum(E * O * I, 0.f);
    ops::grouped_linear_bwd(vf(x), vf(W), vf(dy), vl(off), off_host, E, I, O, View{}, vf(dW_over),
                            false);
    ops::grouped_linear_bwd(vf(x), vf(W), vf(dy), vl(off), off_host, E, I, O, View{}, vf(dW_sum));
    expect_bitwise(dW_over, dW_sum, "grouped dW overwritten" + how);
  }
  EXPECT_FALSE(ops::grouped_linear_needs_host_offsets(kCpu, DType::f32, I, O));

  VecL bad_off = {0, 3, 2, 8, 10};
  expect_error(
      [&] { ops::grouped_linear_fwd(vf(x), vf(W), View{}, bad_off.data(), E, I, O, vf(y_got)); },
      {"ops::grouped_linear_fwd", "decrease at expert 1"});
  expect_error(
      [&] { ops::grouped_linear_fwd(vf(x), vf(W), vl(bad_off), nullptr, E, I, O, vf(y_got)); },
      {"ops::grouped_linear_fwd", "decrease at expert 1"});
  expect_error([&] { ops::grouped_linear_fwd(vf(x), vf(W), View{}, nullptr, E, I, O, vf(y_got)); },
               {"ops::grouped_linear_fwd", "no offsets"});
  VecF short_W(E * O * I - 1);
  expect_error(
      [&] { ops::grouped_linear_fwd(vf(x), vf(short_W), vl(off), nullptr, E, I, O, vf(y_got)); },
      {"ops::grouped_linear_fwd", "W_EOI", "expected f32 with 120 elements"});
}

TEST(MoeViews, Errors) {
  const int64_t N = 3, E = 4, K = 2;
  VecF logits(N * E), probs(N * E), lse(N), w(N * K);
  VecI idx(N * K);
  VecF wrong_idx(N * K);
  expect_error(
      [&] {
        ops::moe_router_fwd(vf(logits), N, E, K, vf(probs), vf(lse), vf(wrong_idx), vf(w), View{});
      },
      {"ops::moe_router_fwd", "topk_idx_NK is f32", "expected i32 with 6 elements on cpu"});
  std::vector<uint16_t> src_b(N * K * 2);
  VecI pos(N * K);
  VecF y(N * 2);
  expect_error(
      [&] {
        ops::moe_scatter_add(View(src_b.data(), DType::bf16, kCpu, {N * K * 2}), vi(pos), View{}, N,
                             K, 2, vf(y), false);
      },
      {"ops::moe_scatter_add", "src_PD is bf16", "float32 only"});
  VecF g(N);
  const View y_cuda(y.data(), DType::f32, core::Device::cuda, {N * 2});
  expect_error([&] { ops::moe_shared_gate_fwd(vf(y), vf(g), N, 2, y_cuda); },
               {"ops::moe_shared_gate_fwd", "y_ND is f32 [6] on cuda", "on cpu like o_ND"});
  expect_error(
      [&] { ops::moe_router_fwd(View{}, N, E, K, vf(probs), vf(lse), vi(idx), vf(w), View{}); },
      {"ops::moe_router_fwd", "logits_NE is a null view"});
}

// ---- AdamW ---------------------------------------------------------------------------------

// train::AdamW::step's element loop as it was before it called ops::adamw_step_multi, on
// gradients already scaled in place (train::clip_grad_norm).
void adamw_reference(VecF& p, VecF& m, VecF& v, const VecF& g, double lr, double beta1_d,
                     double beta2_d, double eps_d, int64_t step, double wd) {
  const double t = static_cast<double>(step);
  const double bias_correction1 = 1.0 - std::pow(beta1_d, t);
  const double bias_correction2 = 1.0 - std::pow(beta2_d, t);
  const float beta1 = static_cast<float>(beta1_d), beta2 = static_cast<float>(beta2_d);
  const float one_minus_beta1 = static_cast<float>(1.0 - beta1_d);
  const float one_minus_beta2 = static_cast<float>(1.0 - beta2_d);
  const float step_size = static_cast<float>(lr / bias_correction1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  const float eps = static_cast<float>(eps_d);
  const float decay = static_cast<float>(1.0 - lr * wd);
  for (size_t i = 0; i < p.size(); ++i) {
    p[i] *= decay;
    m[i] = beta1 * m[i] + one_minus_beta1 * g[i];
    v[i] = beta2 * v[i] + one_minus_beta2 * (g[i] * g[i]);
    const float denom = std::sqrt(v[i]) / bc2_sqrt + eps;
    p[i] -= step_size * (m[i] / denom);
  }
}

TEST(AdamWViews, BitwiseReferenceLoopAndTrainStep) {
  const std::string wname = "model.layers.0.mlp.up_proj.weight", nname = "model.norm.weight";
  model::TensorMap params;
  params.emplace(wname, core::Tensor({40, 1000}));  // above the OpenMP threshold
  params.emplace(nname, core::Tensor({37}));
  for (auto& [name, t] : params) {
    const VecF r = randn<float>(t.numel(), name.size());
    std::copy(r.begin(), r.end(), t.ptr());
  }
  train::AdamWOptions opt;
  opt.weight_decay = 0.1;
  opt.beta2 = 0.95;
  train::AdamW adamw(params, opt);
  ASSERT_TRUE(adamw.decays(wname));
  ASSERT_FALSE(adamw.decays(nname));
  model::TensorMap p_train = params;

  // The op's state and the reference loop's state, per tensor: p, m, v, compute copy.
  struct State {
    VecF p, m, v, copy;
    double wd;
  };
  std::map<std::string, State> op_state, ref_state;
  for (auto& [name, t] : params) {
    State s{VecF(t.ptr(), t.ptr() + t.numel()), VecF(t.numel(), 0.f), VecF(t.numel(), 0.f),
            VecF(t.numel(), NAN), adamw.decays(name) ? opt.weight_decay : 0.0};
    op_state[name] = s;
    ref_state[name] = s;
  }
  const double lrs[] = {1e-3, 3e-3, 2e-3, 5e-4};
  const double max_norms[] = {0.0, 1.0, 1e6, 0.5};  // off, clipping, no clipping, clipping
  for (int step = 1; step <= 4; ++step) {
    model::TensorMap grads = model::zeros_like(params);
    for (auto& [name, t] : grads) {
      const VecF r = randn<float>(t.numel(), 100 * step + name.size(), 0.3);
      std::copy(r.begin(), r.end(), t.ptr());
    }
    const model::TensorMap raw = grads;
    const double lr = lrs[step - 1];
    // train: clip in place, then step.
    const double norm = train::clip_grad_norm(grads, max_norms[step - 1]);
    adamw.step(p_train, grads, lr);
    // op: the raw gradients and the clip factor as grad_scale.
    ops::AdamWArgs args;
    args.lr = lr;
    args.beta1 = opt.beta1;
    args.beta2 = opt.beta2;
    args.eps = opt.eps;
    args.step = step;
    const double mn = max_norms[step - 1];
    const double coef = mn > 0 ? mn / (norm + 1e-6) : 1.0;
    args.grad_scale = coef < 1.0 ? static_cast<float>(coef) : 1.0f;
    EXPECT_EQ(args.grad_scale != 1.0f, step == 2 || step == 4) << step;
    std::vector<ops::AdamWTensor> ts;
    std::map<std::string, VecF> raw_copy;
    for (auto& [name, s] : op_state) {
      const core::Tensor& g = raw.at(name);
      raw_copy[name] = VecF(g.ptr(), g.ptr() + g.numel());
      ts.push_back({vf(s.p), vf(s.m), vf(s.v), vf(raw_copy[name]), vf(s.copy), s.wd});
    }
    ops::adamw_step_multi(ts, args);
    for (auto& [name, s] : ref_state) {
      const core::Tensor& g = grads.at(name);  // the clipped gradients
      adamw_reference(s.p, s.m, s.v, VecF(g.ptr(), g.ptr() + g.numel()), lr, opt.beta1, opt.beta2,
                      opt.eps, step, s.wd);
    }
    for (auto& [name, s] : op_state) {
      const std::string at = name + " step " + std::to_string(step);
      const core::Tensor& pt = p_train.at(name);
      expect_bitwise(s.p, ref_state[name].p, "p vs reference loop, " + at);
      expect_bitwise(s.m, ref_state[name].m, "m vs reference loop, " + at);
      expect_bitwise(s.v, ref_state[name].v, "v vs reference loop, " + at);
      expect_bitwise(s.p, VecF(pt.ptr(), pt.ptr() + pt.numel()), "p vs AdamW::step, " + at);
      const core::Tensor& mt = adamw.exp_avg().at(name);
      expect_bitwise(s.m, VecF(mt.ptr(), mt.ptr() + mt.numel()), "m vs AdamW::step, " + at);
      expect_bitwise(s.copy, s.p, "compute copy, " + at);
      expect_bitwise(raw_copy[name], VecF(raw.at(name).ptr(), raw.at(name).ptr() + s.p.size()),
                     "grad untouched, " + at);
    }
  }
}

TEST(AdamWViews, Errors) {
  VecF p(5), m(5), v(5), g(5), g4(4);
  std::vector<uint16_t> cb(5);
  ops::AdamWArgs args;
  std::vector<ops::AdamWTensor> ts = {{vf(p), vf(m), vf(v), vf(g4), View{}, 0.0}};
  expect_error([&] { ops::adamw_step_multi(ts, args); },
               {"ops::adamw_step_multi", "tensor 0 grad", "expected f32 with 5 elements"});
  ts = {{vf(p), vf(m), vf(v), vf(g), View(cb.data(), DType::bf16, kCpu, {5}), 0.0}};
  expect_error([&] { ops::adamw_step_multi(ts, args); },
               {"ops::adamw_step_multi", "tensor 0 compute_copy", "bf16", "float32 only"});
  VecF p2(3), m2(3), v2(3), g2(3);
  ts = {
      {vf(p), vf(m), vf(v), vf(g), View{}, 0.0},
      {View(p2.data(), DType::f32, core::Device::cuda, {3}), vf(m2), vf(v2), vf(g2), View{}, 0.0}};
  expect_error(
      [&] { ops::adamw_step_multi(ts, args); },
      {"ops::adamw_step_multi", "tensor 1 master is f32 [3] on cuda", "like tensor 0 master"});
  ops::adamw_step_multi({}, args);  // nothing to do
}

}  // namespace
