// Tests of the view forms of the ops (docs/ops-views.md) on the CPU: each equals the cpu:: kernel
// bitwise where the same kernel runs; accumulate flags add; empty optional views skip; a bf16
// view on the CPU, a wrong element count and a mixed-device call are core::Errors naming the op.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#include "core/segments.h"
#include "core/view.h"
#include "cpu/activation.h"
#include "cpu/attention.h"
#include "cpu/conv1d.h"
#include "cpu/embedding.h"
#include "cpu/gdn.h"
#include "cpu/gdn_gates.h"
#include "cpu/l2norm.h"
#include "cpu/linear.h"
#include "cpu/rmsnorm.h"
#include "cpu/rope.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/conv1d.h"
#include "ops/embedding.h"
#include "ops/gdn.h"
#include "ops/gdn_gates.h"
#include "ops/l2norm.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/tensor.h"
#include "test_util.h"

namespace {

using namespace deltatron;
using core::DType;
using core::View;
using dt_test::expect_error;
using VecF = std::vector<float>;
using VecI = std::vector<int32_t>;

constexpr core::Device kCpu = core::Device::cpu;

VecF rnd(size_t n, uint64_t seed, double scale = 1.0) {
  return dt_test::randn<float>(n, seed, scale);
}
View v(VecF& x) { return View(x.data(), DType::f32, kCpu, {int64_t(x.size())}); }
View v(VecI& x) { return View(x.data(), DType::i32, kCpu, {int64_t(x.size())}); }
// The same memory claimed to be on the GPU (never dereferenced: the checks fail first).
View on_cuda(VecF& x) {
  return View(x.data(), DType::f32, core::Device::cuda, {int64_t(x.size())});
}
// A bf16 view of n elements on the CPU.
View bf16(std::vector<uint16_t>& s, size_t n) {
  s.assign(n, 0);
  return View(s.data(), DType::bf16, kCpu, {int64_t(n)});
}

// Bitwise equality, reporting the first differing element.
void expect_same(const VecF& got, const VecF& want, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) {
      ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << " expected " << want[i];
      return;
    }
}
VecF plus(const VecF& a, const VecF& b) {
  VecF c(a.size());
  for (size_t i = 0; i < a.size(); ++i) c[i] = a[i] + b[i];
  return c;
}

// The three argument errors every op reports, each naming the op and the argument.
void expect_arg_errors(const char* op, const char* arg, const std::function<void()>& bf16_call,
                       const std::function<void()>& numel_call,
                       const std::function<void()>& device_call) {
  const std::string name = std::string("ops::") + op;
  expect_error(bf16_call, {name, "bf16", "cpu"});
  expect_error(numel_call, {name, arg, "elements"});
  expect_error(device_call, {name, "cuda", "expected"});
}

// ---- linear --------------------------------------------------------------------------------

TEST(OpsViews, Linear) {
  const int64_t N = 5, I = 7, O = 3;
  VecF x = rnd(N * I, 1), W = rnd(O * I, 2), dy = rnd(N * O, 3);
  VecF y_ref(N * O), y(N * O);
  cpu::linear_fwd<float>(x.data(), W.data(), N, I, O, y_ref.data());
  ops::linear_fwd(v(x), v(W), N, I, O, v(y), false);
  expect_same(y, y_ref, "y");
  // Accumulating (and alpha) round once: y0 + alpha x W^T is formed before the store.
  VecF y0 = rnd(N * O, 4), ya = y0, ya_ref = y0, ys = y0, ys_ref = y0;
  cpu::linear_fwd<float>(x.data(), W.data(), N, I, O, ya_ref.data(), true);
  ops::linear_fwd(v(x), v(W), N, I, O, v(ya), true);
  expect_same(ya, ya_ref, "y accumulated");
  const VecF two_roundings = plus(y0, y_ref);
  for (size_t i = 0; i < ya.size(); ++i)
    EXPECT_NEAR(ya[i], two_roundings[i], 4e-7 * (1 + std::abs(two_roundings[i]))) << i;
  cpu::linear_fwd<float>(x.data(), W.data(), N, I, O, ys_ref.data(), true, -0.5f);
  ops::linear_fwd(v(x), v(W), N, I, O, v(ys), true, -0.5f);
  expect_same(ys, ys_ref, "y accumulated with alpha");

  VecF dx_ref(N * I), dx(N * I);
  cpu::linear_bwd<float>(x.data(), W.data(), dy.data(), N, I, O, dx_ref.data(), false, nullptr);
  ops::linear_bwd_dx(v(dy), v(W), N, I, O, v(dx), false);
  expect_same(dx, dx_ref, "dx");
  VecF dx0 = rnd(N * I, 5), dxa_ref = dx0, dxa = dx0;
  cpu::linear_bwd<float>(x.data(), W.data(), dy.data(), N, I, O, dxa_ref.data(), true, nullptr);
  ops::linear_bwd_dx(v(dy), v(W), N, I, O, v(dxa), true);
  expect_same(dxa, dxa_ref, "dx accumulated");

  VecF dW0 = rnd(O * I, 6), dW_ref = dW0, dW = dW0;
  cpu::linear_bwd<float>(x.data(), W.data(), dy.data(), N, I, O, nullptr, false, dW_ref.data());
  ops::linear_bwd_dw(v(x), v(dy), N, I, O, v(dW));
  expect_same(dW, dW_ref, "dW (accumulated)");

  std::vector<uint16_t> s;
  VecF y_short(N * O - 1);
  expect_arg_errors(
      "linear_fwd", "y_NO", [&] { ops::linear_fwd(v(x), v(W), N, I, O, bf16(s, N * O), false); },
      [&] { ops::linear_fwd(v(x), v(W), N, I, O, v(y_short), false); },
      [&] { ops::linear_fwd(v(x), on_cuda(W), N, I, O, v(y), false); });
  expect_arg_errors(
      "linear_bwd_dx", "dx_NI",
      [&] { ops::linear_bwd_dx(v(dy), v(W), N, I, O, bf16(s, N * I), 0); },
      [&] { ops::linear_bwd_dx(v(dy), v(W), N, I, O, v(y_short), false); },
      [&] { ops::linear_bwd_dx(v(dy), v(W), N, I, O, on_cuda(dx), false); });
  expect_arg_errors(
      "linear_bwd_dw", "dW_OI", [&] { ops::linear_bwd_dw(bf16(s, N * I), v(dy), N, I, O, v(dW)); },
      [&] { ops::linear_bwd_dw(v(x), v(dy), N, I, O, v(y_short)); },
      [&] { ops::linear_bwd_dw(on_cuda(x), v(dy), N, I, O, v(dW)); });
  // An empty view stands for nothing only when nothing is to be read.
  expect_error([&] { ops::linear_fwd(v(x), View{}, N, I, O, v(y), false); },
               {"ops::linear_fwd", "W_OI", "null view"});
  VecF none;
  ops::linear_fwd(v(none), v(W), 0, I, O, v(none), false);  // N = 0: nothing to do
}

// ---- rmsnorm, l2norm -----------------------------------------------------------------------

TEST(OpsViews, RMSNorm) {
  const int64_t N = 6, D = 9;
  const double eps = 1e-6;
  VecF x = rnd(N * D, 10), w = rnd(D, 11, 0.1), dy = rnd(N * D, 12);
  VecF y_ref(N * D), r_ref(N), y(N * D), r(N);
  cpu::rmsnorm_fwd<float>(x.data(), w.data(), N, D, eps, y_ref.data(), r_ref.data());
  ops::rmsnorm_fwd(v(x), v(w), N, D, eps, v(y), v(r));
  expect_same(y, y_ref, "y");
  expect_same(r, r_ref, "rstd");

  VecF dw0 = rnd(D, 13), dx_ref(N * D), dw_ref = dw0;
  cpu::rmsnorm_bwd<float>(x.data(), w.data(), r.data(), dy.data(), N, D, dx_ref.data(),
                          dw_ref.data());
  VecF dx(N * D), dw = dw0;
  ops::rmsnorm_bwd(v(x), v(w), v(r), v(dy), N, D, v(dx), false, v(dw));
  expect_same(dx, dx_ref, "dx");
  expect_same(dw, dw_ref, "dw");
  // accumulate_dx adds; an empty dw is skipped.
  VecF dx0 = rnd(N * D, 14), dxa = dx0;
  ops::rmsnorm_bwd(v(x), v(w), v(r), v(dy), N, D, v(dxa), true, View{});
  expect_same(dxa, plus(dx0, dx_ref), "dx accumulated");
  // dx may alias dy.
  VecF dy_alias = dy;
  ops::rmsnorm_bwd(v(x), v(w), v(r), v(dy_alias), N, D, v(dy_alias), false, View{});
  expect_same(dy_alias, dx_ref, "dx aliasing dy");
  // The fused extras: x_copy is x, dx_cast is the new dx (f32 on the CPU)
  VecF y2(N * D), r2(N), x_copy(N * D, -3.f);
  ops::rmsnorm_fwd(v(x), v(w), N, D, eps, v(y2), v(r2), v(x_copy));
  expect_same(y2, y_ref, "y (with x_copy)");
  expect_same(x_copy, x, "x_copy");
  VecF dxc = dx0, dx_cast(N * D, -3.f);
  ops::rmsnorm_bwd(v(x), v(w), v(r), v(dy), N, D, v(dxc), true, View{}, v(dx_cast));
  expect_same(dxc, plus(dx0, dx_ref), "dx accumulated (with dx_cast)");
  expect_same(dx_cast, dxc, "dx_cast");
  EXPECT_THROW(ops::rmsnorm_fwd(v(x), v(w), N, D, eps, v(y2), v(r2), v(x)), core::Error);
  EXPECT_THROW(ops::rmsnorm_bwd(v(x), v(w), v(r), v(dy), N, D, v(dxc), true, View{}, v(dxc)),
               core::Error);

  std::vector<uint16_t> s;
  VecF short_r(N + 1);
  expect_arg_errors(
      "rmsnorm_fwd", "rstd_N", [&] { ops::rmsnorm_fwd(v(x), bf16(s, D), N, D, eps, v(y), v(r)); },
      [&] { ops::rmsnorm_fwd(v(x), v(w), N, D, eps, v(y), v(short_r)); },
      [&] { ops::rmsnorm_fwd(v(x), v(w), N, D, eps, on_cuda(y), v(r)); });
  expect_arg_errors(
      "rmsnorm_bwd", "dw_D",
      [&] { ops::rmsnorm_bwd(v(x), v(w), v(r), v(dy), N, D, bf16(s, N * D), false, v(dw)); },
      [&] { ops::rmsnorm_bwd(v(x), v(w), v(r), v(dy), N, D, v(dx), false, v(short_r)); },
      [&] { ops::rmsnorm_bwd(v(x), v(w), v(r), v(dy), N, D, v(dx), false, on_cuda(dw)); });
}

TEST(OpsViews, RMSNormGated) {
  const int64_t N = 4, D = 7;
  const double eps = 1e-6;
  VecF x = rnd(N * D, 20), z = rnd(N * D, 21), w = rnd(D, 22), dy = rnd(N * D, 23);
  VecF y_ref(N * D), r_ref(N), y(N * D), r(N);
  cpu::rmsnorm_gated_fwd<float>(x.data(), z.data(), w.data(), N, D, eps, y_ref.data(),
                                r_ref.data());
  ops::rmsnorm_gated_fwd(v(x), v(z), v(w), N, D, eps, v(y), v(r));
  expect_same(y, y_ref, "y");
  expect_same(r, r_ref, "rstd");
  VecF dw0 = rnd(D, 24), dx_ref(N * D), dz_ref(N * D), dw_ref = dw0;
  cpu::rmsnorm_gated_bwd<float>(x.data(), z.data(), w.data(), r.data(), dy.data(), N, D,
                                dx_ref.data(), dz_ref.data(), dw_ref.data());
  VecF dx(N * D), dz(N * D), dw = dw0;
  ops::rmsnorm_gated_bwd(v(x), v(z), v(w), v(r), v(dy), N, D, v(dx), v(dz), v(dw));
  expect_same(dx, dx_ref, "dx");
  expect_same(dz, dz_ref, "dz");
  expect_same(dw, dw_ref, "dw");
  VecF dx2(N * D), dz2 = dy;  // dz aliasing dy; dw skipped
  ops::rmsnorm_gated_bwd(v(x), v(z), v(w), v(r), v(dz2), N, D, v(dx2), v(dz2), View{});
  expect_same(dx2, dx_ref, "dx (dw skipped)");
  expect_same(dz2, dz_ref, "dz aliasing dy");

  std::vector<uint16_t> s;
  VecF short_z(N * D - 2);
  expect_arg_errors(
      "rmsnorm_gated_fwd", "z_ND",
      [&] { ops::rmsnorm_gated_fwd(v(x), v(z), v(w), N, D, eps, bf16(s, N * D), v(r)); },
      [&] { ops::rmsnorm_gated_fwd(v(x), v(short_z), v(w), N, D, eps, v(y), v(r)); },
      [&] { ops::rmsnorm_gated_fwd(v(x), v(z), on_cuda(w), N, D, eps, v(y), v(r)); });
  expect_arg_errors(
      "rmsnorm_gated_bwd", "dz_ND",
      [&] {
        ops::rmsnorm_gated_bwd(v(x), v(z), v(w), v(r), v(dy), N, D, v(dx), bf16(s, N * D), v(dw));
      },
      [&] {
        ops::rmsnorm_gated_bwd(v(x), v(z), v(w), v(r), v(dy), N, D, v(dx), v(short_z), v(dw));
      },
      [&] {
        ops::rmsnorm_gated_bwd(v(x), v(z), v(w), on_cuda(r), v(dy), N, D, v(dx), v(dz), v(dw));
      });
}

TEST(OpsViews, L2Norm) {
  const int64_t N = 5, D = 6;
  VecF x = rnd(N * D, 30), dy = rnd(N * D, 31);
  VecF y_ref(N * D), r_ref(N), y(N * D), r(N);
  cpu::l2norm_fwd<float>(x.data(), N, D, 1e-6, y_ref.data(), r_ref.data());
  ops::l2norm_fwd(v(x), N, D, 1e-6, v(y), v(r));
  expect_same(y, y_ref, "y");
  expect_same(r, r_ref, "rstd");
  VecF dx_ref(N * D), dx = dy;  // dx aliasing dy
  cpu::l2norm_bwd<float>(y.data(), r.data(), dy.data(), N, D, dx_ref.data());
  ops::l2norm_bwd(v(y), v(r), v(dx), N, D, v(dx));
  expect_same(dx, dx_ref, "dx");
  std::vector<uint16_t> s;
  VecF bad(N * D + 1);
  expect_arg_errors(
      "l2norm_fwd", "y_ND", [&] { ops::l2norm_fwd(bf16(s, N * D), N, D, 1e-6, v(y), v(r)); },
      [&] { ops::l2norm_fwd(v(x), N, D, 1e-6, v(bad), v(r)); },
      [&] { ops::l2norm_fwd(v(x), N, D, 1e-6, v(y), on_cuda(r)); });
  expect_arg_errors(
      "l2norm_bwd", "dy_ND", [&] { ops::l2norm_bwd(v(y), v(r), bf16(s, N * D), N, D, v(dx)); },
      [&] { ops::l2norm_bwd(v(y), v(r), v(bad), N, D, v(dx)); },
      [&] { ops::l2norm_bwd(v(y), v(r), v(dy), N, D, on_cuda(dx)); });
}

// ---- activation, gdn gates, rope -----------------------------------------------------------

TEST(OpsViews, Activation) {
  const int64_t n = 37;
  VecF g = rnd(n, 40), u = rnd(n, 41), dh = rnd(n, 42);
  VecF h_ref(n), h(n);
  cpu::swiglu_fwd<float>(g.data(), u.data(), n, h_ref.data());
  ops::swiglu_fwd(v(g), v(u), n, v(h));
  expect_same(h, h_ref, "swiglu h");
  VecF dg_ref(n), du_ref(n), dg(n), du = dh;  // dh aliasing dup
  cpu::swiglu_bwd<float>(g.data(), u.data(), dh.data(), n, dg_ref.data(), du_ref.data());
  ops::swiglu_bwd(v(g), v(u), v(du), n, v(dg), v(du));
  expect_same(dg, dg_ref, "swiglu dgate");
  expect_same(du, du_ref, "swiglu dup");
  // With h: the same gradients, and h bitwise swiglu_fwd's (selective recomputation's fused pass)
  VecF dg2(n), du2 = dh, h2(n, -7.f);
  ops::swiglu_bwd(v(g), v(u), v(du2), n, v(dg2), v(du2), v(h2));
  expect_same(dg2, dg_ref, "swiglu dgate (with h)");
  expect_same(du2, du_ref, "swiglu dup (with h)");
  expect_same(h2, h_ref, "swiglu h (from the backward)");
  EXPECT_THROW(ops::swiglu_bwd(v(g), v(u), v(du2), n, v(dg2), v(dh), v(du2)), core::Error);

  VecF o_ref(n), o(n);
  cpu::sigmoid_mul_fwd<float>(u.data(), g.data(), n, o_ref.data());
  ops::sigmoid_mul_fwd(v(u), v(g), n, v(o));
  expect_same(o, o_ref, "sigmoid_mul out");
  VecF da_ref(n), dgg_ref(n), da = dh, dgg(n);  // dout aliasing da
  cpu::sigmoid_mul_bwd<float>(u.data(), g.data(), dh.data(), n, da_ref.data(), dgg_ref.data());
  ops::sigmoid_mul_bwd(v(u), v(g), v(da), n, v(da), v(dgg));
  expect_same(da, da_ref, "sigmoid_mul da");
  expect_same(dgg, dgg_ref, "sigmoid_mul dg");

  std::vector<uint16_t> s;
  VecF bad(n - 1);
  expect_arg_errors(
      "swiglu_fwd", "up", [&] { ops::swiglu_fwd(v(g), v(u), n, bf16(s, n)); },
      [&] { ops::swiglu_fwd(v(g), v(bad), n, v(h)); },
      [&] { ops::swiglu_fwd(v(g), on_cuda(u), n, v(h)); });
  expect_arg_errors(
      "swiglu_bwd", "dup", [&] { ops::swiglu_bwd(bf16(s, n), v(u), v(dh), n, v(dg), v(du)); },
      [&] { ops::swiglu_bwd(v(g), v(u), v(dh), n, v(dg), v(bad)); },
      [&] { ops::swiglu_bwd(v(g), v(u), v(dh), n, on_cuda(dg), v(du)); });
  expect_arg_errors(
      "sigmoid_mul_fwd", "out", [&] { ops::sigmoid_mul_fwd(v(u), bf16(s, n), n, v(o)); },
      [&] { ops::sigmoid_mul_fwd(v(u), v(g), n, v(bad)); },
      [&] { ops::sigmoid_mul_fwd(on_cuda(u), v(g), n, v(o)); });
  expect_arg_errors(
      "sigmoid_mul_bwd", "dg",
      [&] { ops::sigmoid_mul_bwd(v(u), v(g), v(dh), n, v(da), bf16(s, n)); },
      [&] { ops::sigmoid_mul_bwd(v(u), v(g), v(dh), n, v(da), v(bad)); },
      [&] { ops::sigmoid_mul_bwd(v(u), v(g), on_cuda(dh), n, v(da), v(dgg)); });
}

TEST(OpsViews, GdnGates) {
  const int64_t N = 5, G = 3;
  VecF b = rnd(N * G, 50), a = rnd(N * G, 51), A = rnd(G, 52, 0.5), dt = rnd(G, 53);
  VecF beta_ref(N * G), g_ref(N * G), beta(N * G), g(N * G);
  cpu::gdn_gates_fwd<float>(b.data(), a.data(), A.data(), dt.data(), N, G, beta_ref.data(),
                            g_ref.data());
  ops::gdn_gates_fwd(v(b), v(a), v(A), v(dt), N, G, v(beta), v(g));
  expect_same(beta, beta_ref, "beta");
  expect_same(g, g_ref, "g");
  VecF dbeta = rnd(N * G, 54), dg = rnd(N * G, 55), dA0 = rnd(G, 56), ddt0 = rnd(G, 57);
  VecF db_ref(N * G), da_ref(N * G), dA_ref = dA0, ddt_ref = ddt0;
  cpu::gdn_gates_bwd<float>(b.data(), a.data(), A.data(), dt.data(), dbeta.data(), dg.data(), N, G,
                            db_ref.data(), da_ref.data(), dA_ref.data(), ddt_ref.data());
  VecF db(N * G), da(N * G), dA = dA0, ddt = ddt0;
  ops::gdn_gates_bwd(v(b), v(a), v(A), v(dt), v(dbeta), v(dg), N, G, v(db), v(da), v(dA), v(ddt));
  expect_same(db, db_ref, "db");
  expect_same(da, da_ref, "da");
  expect_same(dA, dA_ref, "dA_log (accumulated)");
  expect_same(ddt, ddt_ref, "ddt_bias (accumulated)");
  std::vector<uint16_t> s;
  VecF bad(G + 1);
  expect_arg_errors(
      "gdn_gates_fwd", "dt_bias_G",
      [&] { ops::gdn_gates_fwd(bf16(s, N * G), v(a), v(A), v(dt), N, G, v(beta), v(g)); },
      [&] { ops::gdn_gates_fwd(v(b), v(a), v(A), v(bad), N, G, v(beta), v(g)); },
      [&] { ops::gdn_gates_fwd(v(b), v(a), v(A), v(dt), N, G, v(beta), on_cuda(g)); });
  expect_arg_errors(
      "gdn_gates_bwd", "ddt_bias_G",
      [&] {
        ops::gdn_gates_bwd(v(b), v(a), v(A), v(dt), v(dbeta), v(dg), N, G, bf16(s, N * G), v(da),
                           v(dA), v(ddt));
      },
      [&] {
        ops::gdn_gates_bwd(v(b), v(a), v(A), v(dt), v(dbeta), v(dg), N, G, v(db), v(da), v(dA),
                           v(bad));
      },
      [&] {
        ops::gdn_gates_bwd(v(b), v(a), v(A), v(dt), on_cuda(dbeta), v(dg), N, G, v(db), v(da),
                           v(dA), v(ddt));
      });
}

TEST(OpsViews, Rope) {
  const int64_t N = 5, H = 2, K = 12, R = 8;
  const int sec[3] = {2, 1, 1};
  VecI pos(3 * N);
  for (int64_t i = 0; i < 3 * N; ++i) pos[i] = int32_t(i % N + i / N);
  VecF x = rnd(N * H * K, 60), x_ref = x;
  cpu::rope_fwd<float>(x_ref.data(), pos.data(), N, H, K, R, 1e6, sec);
  ops::rope_fwd(v(x), v(pos), N, H, K, R, 1e6, sec);
  expect_same(x, x_ref, "rope_fwd in place");
  VecF dx = rnd(N * H * K, 61), dx_ref = dx;
  cpu::rope_bwd<float>(dx_ref.data(), pos.data(), N, H, K, R, 1e6, sec);
  ops::rope_bwd(v(dx), v(pos), N, H, K, R, 1e6, sec);
  expect_same(dx, dx_ref, "rope_bwd in place");
  std::vector<uint16_t> s;
  VecI short_pos(N);
  VecF posf(3 * N);
  expect_arg_errors(
      "rope_fwd", "pos_3N",
      [&] { ops::rope_fwd(bf16(s, N * H * K), v(pos), N, H, K, R, 1e6, sec); },
      [&] { ops::rope_fwd(v(x), v(short_pos), N, H, K, R, 1e6, sec); },
      [&] { ops::rope_fwd(on_cuda(x), v(pos), N, H, K, R, 1e6, sec); });
  expect_error([&] { ops::rope_bwd(v(dx), v(posf), N, H, K, R, 1e6, sec); },
               {"ops::rope_bwd", "pos_3N", "expected i32"});
}

// ---- tensor helpers ------------------------------------------------------------------------

TEST(OpsViews, Tensor) {
  VecF a = rnd(12, 70), b(12);
  ops::cast(v(a), v(b), 12);
  expect_same(b, a, "cast f32 -> f32");

  // copy_cols: columns [1, 3) of a [3, 4] into columns [2, 4) of a [3, 5].
  VecF dst(15, -1.f), want = dst;
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 2; ++c) want[r * 5 + 2 + c] = a[r * 4 + 1 + c];
  ops::copy_cols(v(a), 4, 1, v(dst), 5, 2, 3, 2);
  expect_same(dst, want, "copy_cols");
  VecI ia = {1, 2, 3, 4, 5, 6}, ib(4, 0);
  ops::copy_cols(v(ia), 3, 1, v(ib), 2, 0, 2, 2);
  EXPECT_EQ(ib, (VecI{2, 3, 5, 6}));
  expect_error([&] { ops::copy_cols(v(a), 4, 3, v(dst), 5, 2, 3, 2); },
               {"ops::copy_cols", "do not fit"});

  VecF f(7);
  ops::fill(v(f), 2.5f, 7);
  expect_same(f, VecF(7, 2.5f), "fill f32");
  VecI fi(5);
  ops::fill(v(fi), 3.f, 5);
  EXPECT_EQ(fi, VecI(5, 3));
  ops::zero(v(f));
  expect_same(f, VecF(7, 0.f), "zero");
  ops::zero(View{});  // an empty view: nothing

  VecF y = rnd(12, 71), y0 = y;
  ops::add_inplace(v(y), v(a), 12);
  expect_same(y, plus(y0, a), "add_inplace");

  double ss = 0;
  for (float t : a) ss += double(t) * double(t);
  EXPECT_EQ(ops::sum_squares(v(a), 12), ss);

  VecF host = rnd(12, 72), dev(12), back(12);
  ops::copy_from_host(v(dev), host.data());
  ops::copy_to_host(v(dev), back.data());
  ops::synchronize(kCpu);
  expect_same(back, host, "copy_from_host / copy_to_host");

  std::vector<uint16_t> s;
  VecF short12(11);
  expect_arg_errors(
      "cast", "dst", [&] { ops::cast(v(a), bf16(s, 12), 12); },
      [&] { ops::cast(v(a), v(short12), 12); }, [&] { ops::cast(v(a), on_cuda(b), 12); });
  expect_arg_errors(
      "add_inplace", "x", [&] { ops::add_inplace(v(y), bf16(s, 12), 12); },
      [&] { ops::add_inplace(v(y), v(short12), 12); },
      [&] { ops::add_inplace(on_cuda(y), v(a), 12); });
  expect_error([&] { ops::fill(v(f), 1.f, 8); }, {"ops::fill", "x", "8 elements"});
  expect_error([&] { ops::fill(bf16(s, 4), 1.f, 4); }, {"ops::fill", "bf16", "cpu"});
  expect_error([&] { ops::sum_squares(v(short12), 12); }, {"ops::sum_squares", "x"});
  expect_error([&] { ops::copy_from_host(v(dev), nullptr); }, {"ops::copy_from_host", "null"});
  // The byte operations move stored state (bf16 moments and weights, u16 remainders) on the CPU
  // too: bytes, no arithmetic.
  {
    std::vector<uint16_t> h = {0x3F80, 0xBF81, 0x1234}, got(3, 0);
    const View b16 = bf16(s, 3);
    ops::copy_from_host(b16, h.data());
    ops::copy_to_host(b16, got.data());
    EXPECT_EQ(got, h);
    const View u16(h.data(), DType::u16, kCpu, {3});
    ops::zero(u16);
    EXPECT_EQ(h, std::vector<uint16_t>(3, 0));
  }
#ifndef DT_HAVE_CUDA
  expect_error([&] { ops::zero(on_cuda(f)); }, {"ops::zero", "without CUDA"});
  expect_error([&] { ops::synchronize(core::Device::cuda); }, {"ops::synchronize", "without CUDA"});
#endif
}

// ---- attention, conv1d, gdn ----------------------------------------------------------------

TEST(OpsViews, Attention) {
  VecI cu = {0, 4, 9};
  const core::Segments seg{cu.data(), 2};
  const int64_t N = 9, H = 4, J = 2, K = 5;
  const float scale = 0.4f;
  VecF q = rnd(N * H * K, 80), k = rnd(N * J * K, 81), vv = rnd(N * J * K, 82);
  VecF o_ref(N * H * K), lse_ref(N * H), o(N * H * K), lse(N * H);
  cpu::attention_fwd<float>(q.data(), k.data(), vv.data(), seg, N, H, J, K, scale, o_ref.data(),
                            lse_ref.data());
  VecI cu_copy = cu;  // a separate copy of the bounds, as a device would hold
  ops::attention_fwd(v(q), v(k), v(vv), v(cu_copy), seg, N, H, J, K, scale, v(o), v(lse));
  expect_same(o, o_ref, "o");
  expect_same(lse, lse_ref, "lse");
  VecF d_o = rnd(N * H * K, 83);
  VecF dq_ref(N * H * K), dk_ref(N * J * K), dv_ref(N * J * K);
  cpu::attention_bwd<float>(q.data(), k.data(), vv.data(), o.data(), lse.data(), d_o.data(), seg, N,
                            H, J, K, scale, dq_ref.data(), dk_ref.data(), dv_ref.data());
  VecF dq(N * H * K), dk(N * J * K), dv(N * J * K);
  ops::attention_bwd(v(q), v(k), v(vv), v(o), v(lse), v(d_o), v(cu), seg, N, H, J, K, scale, v(dq),
                     v(dk), v(dv));
  expect_same(dq, dq_ref, "dq");
  expect_same(dk, dk_ref, "dk");
  expect_same(dv, dv_ref, "dv");

  VecI other = {0, 5, 9};
  expect_error(
      [&] {
        ops::attention_fwd(v(q), v(k), v(vv), v(other), seg, N, H, J, K, scale, v(o), v(lse));
      },
      {"ops::attention_fwd", "cu[1]"});
  VecI short_cu = {0, 9};
  expect_error(
      [&] {
        ops::attention_fwd(v(q), v(k), v(vv), v(short_cu), seg, N, H, J, K, scale, v(o), v(lse));
      },
      {"ops::attention_fwd", "cu", "3 elements"});
  std::vector<uint16_t> s;
  VecF bad(N * H - 1);
  expect_arg_errors(
      "attention_fwd", "lse_NH",
      [&] {
        ops::attention_fwd(v(q), v(k), v(vv), v(cu), seg, N, H, J, K, scale, bf16(s, N * H * K),
                           v(lse));
      },
      [&] { ops::attention_fwd(v(q), v(k), v(vv), v(cu), seg, N, H, J, K, scale, v(o), v(bad)); },
      [&] {
        ops::attention_fwd(v(q), on_cuda(k), v(vv), v(cu), seg, N, H, J, K, scale, v(o), v(lse));
      });
  VecF bad_lse(N * H + 1);
  expect_arg_errors(
      "attention_bwd", "lse_NH",
      [&] {
        ops::attention_bwd(bf16(s, N * H * K), v(k), v(vv), v(o), v(lse), v(d_o), v(cu), seg, N, H,
                           J, K, scale, v(dq), v(dk), v(dv));
      },
      [&] {
        ops::attention_bwd(v(q), v(k), v(vv), v(o), v(bad_lse), v(d_o), v(cu), seg, N, H, J, K,
                           scale, v(dq), v(dk), v(dv));
      },
      [&] {
        ops::attention_bwd(v(q), v(k), v(vv), v(o), v(lse), v(d_o), v(cu), seg, N, H, J, K, scale,
                           v(dq), v(dk), on_cuda(dv));
      });
}

TEST(OpsViews, Conv1d) {
  VecI cu = {0, 3, 8};
  const core::Segments seg{cu.data(), 2};
  const int64_t N = 8, C = 5, W = 4;
  VecF x = rnd(N * C, 90), w = rnd(C * W, 91), dy = rnd(N * C, 92);
  VecF y_ref(N * C), y(N * C);
  cpu::conv1d_fwd<float>(x.data(), w.data(), seg, N, C, W, y_ref.data());
  ops::conv1d_fwd(v(x), v(w), v(cu), seg, N, C, W, v(y));
  expect_same(y, y_ref, "y");
  VecF dw0 = rnd(C * W, 93), dx_ref(N * C), dw_ref = dw0, dx(N * C), dw = dw0;
  cpu::conv1d_bwd<float>(x.data(), w.data(), seg, dy.data(), N, C, W, dx_ref.data(), dw_ref.data());
  ops::conv1d_bwd(v(x), v(w), v(cu), seg, v(dy), N, C, W, v(dx), v(dw));
  expect_same(dx, dx_ref, "dx");
  expect_same(dw, dw_ref, "dw (accumulated)");
  // The CPU accepts widths CUDA rejects.
  VecF w9 = rnd(C * 9, 94), y9(N * C);
  ops::conv1d_fwd(v(x), v(w9), v(cu), seg, N, C, 9, v(y9));
  std::vector<uint16_t> s;
  VecF bad(C * W + 1);
  expect_arg_errors(
      "conv1d_fwd", "w_CW",
      [&] { ops::conv1d_fwd(bf16(s, N * C), v(w), v(cu), seg, N, C, W, v(y)); },
      [&] { ops::conv1d_fwd(v(x), v(bad), v(cu), seg, N, C, W, v(y)); },
      [&] { ops::conv1d_fwd(v(x), v(w), v(cu), seg, N, C, W, on_cuda(y)); });
  expect_arg_errors(
      "conv1d_bwd", "dw_CW",
      [&] { ops::conv1d_bwd(v(x), v(w), v(cu), seg, v(dy), N, C, W, bf16(s, N * C), v(dw)); },
      [&] { ops::conv1d_bwd(v(x), v(w), v(cu), seg, v(dy), N, C, W, v(dx), v(bad)); },
      [&] { ops::conv1d_bwd(v(x), v(w), v(cu), seg, on_cuda(dy), N, C, W, v(dx), v(dw)); });
}

TEST(OpsViews, GdnChunk) {
  VecI cu = {0, 70, 70, 75};  // a segment longer than one chunk, an empty one, a short one
  const core::Segments seg{cu.data(), 3};
  const int64_t N = 75, H = 1, G = 2, K = 4, V = 3;
  const float scale = 0.5f;
  VecF q = rnd(N * H * K, 100, 0.5), k = rnd(N * H * K, 101, 0.5), vv = rnd(N * G * V, 102);
  VecF g = dt_test::uniform<float>(N * G, 103, -0.5, 0.0);
  VecF beta = dt_test::uniform<float>(N * G, 104, 0.1, 0.9);
  VecF o_ref(N * G * V), st_ref(3 * G * K * V), o(N * G * V), st(3 * G * K * V);
  cpu::gdn_chunk_fwd<float>(q.data(), k.data(), vv.data(), g.data(), beta.data(), seg, N, H, G, K,
                            V, scale, o_ref.data(), st_ref.data());
  ops::gdn_chunk_fwd(v(q), v(k), v(vv), v(g), v(beta), v(cu), seg, N, H, G, K, V, scale, v(o),
                     v(st));
  expect_same(o, o_ref, "o");
  expect_same(st, st_ref, "state");
  VecF o2(N * G * V);
  ops::gdn_chunk_fwd(v(q), v(k), v(vv), v(g), v(beta), v(cu), seg, N, H, G, K, V, scale, v(o2),
                     View{});
  expect_same(o2, o_ref, "o (state skipped)");

  VecF d_o = rnd(N * G * V, 105);
  VecF dq_ref(N * H * K), dk_ref(N * H * K), dv_ref(N * G * V), dg_ref(N * G), db_ref(N * G);
  cpu::gdn_chunk_bwd<float>(q.data(), k.data(), vv.data(), g.data(), beta.data(), seg, N, H, G, K,
                            V, scale, d_o.data(), dq_ref.data(), dk_ref.data(), dv_ref.data(),
                            dg_ref.data(), db_ref.data());
  VecF dq(N * H * K), dk(N * H * K), dv(N * G * V), dg(N * G), db(N * G);
  ops::gdn_chunk_bwd(v(q), v(k), v(vv), v(g), v(beta), v(cu), seg, N, H, G, K, V, scale, v(d_o),
                     v(dq), v(dk), v(dv), v(dg), v(db));
  expect_same(dq, dq_ref, "dq");
  expect_same(dk, dk_ref, "dk");
  expect_same(dv, dv_ref, "dv");
  expect_same(dg, dg_ref, "dg");
  expect_same(db, db_ref, "dbeta");

  std::vector<uint16_t> s;
  VecF bad_st(2 * G * K * V);
  expect_arg_errors(
      "gdn_chunk_fwd", "state_SGKV",
      [&] {
        ops::gdn_chunk_fwd(bf16(s, N * H * K), v(k), v(vv), v(g), v(beta), v(cu), seg, N, H, G, K,
                           V, scale, v(o), v(st));
      },
      [&] {
        ops::gdn_chunk_fwd(v(q), v(k), v(vv), v(g), v(beta), v(cu), seg, N, H, G, K, V, scale, v(o),
                           v(bad_st));
      },
      [&] {
        ops::gdn_chunk_fwd(v(q), v(k), v(vv), on_cuda(g), v(beta), v(cu), seg, N, H, G, K, V, scale,
                           v(o), v(st));
      });
  VecF bad_db(N * G - 1);
  expect_arg_errors(
      "gdn_chunk_bwd", "dbeta_NG",
      [&] {
        ops::gdn_chunk_bwd(v(q), v(k), v(vv), v(g), v(beta), v(cu), seg, N, H, G, K, V, scale,
                           bf16(s, N * G * V), v(dq), v(dk), v(dv), v(dg), v(db));
      },
      [&] {
        ops::gdn_chunk_bwd(v(q), v(k), v(vv), v(g), v(beta), v(cu), seg, N, H, G, K, V, scale,
                           v(d_o), v(dq), v(dk), v(dv), v(dg), v(bad_db));
      },
      [&] {
        ops::gdn_chunk_bwd(v(q), v(k), v(vv), v(g), v(beta), v(cu), seg, N, H, G, K, V, scale,
                           v(d_o), on_cuda(dq), v(dk), v(dv), v(dg), v(db));
      });
}

// ---- embedding -----------------------------------------------------------------------------

TEST(OpsViews, Embedding) {
  const int64_t N = 6, V = 5, D = 4;
  VecI ids = {3, 0, 3, 4, 1, 3};
  VecF table = rnd(V * D, 110), x_ref(N * D), x(N * D);
  cpu::embedding_fwd<float>(ids.data(), table.data(), N, V, D, x_ref.data());
  ops::embedding_fwd(v(ids), v(table), N, V, D, v(x));
  expect_same(x, x_ref, "x");
  VecI bad_ids = {3, 0, 5, 1, 1, 1};
  expect_error([&] { ops::embedding_fwd(v(bad_ids), v(table), N, V, D, v(x)); },
               {"ops::embedding_fwd", "ids_N[2]", "5"});

  VecF dx = rnd(N * D, 111), dt0 = rnd(V * D, 112), dt_ref = dt0, dt = dt0;
  cpu::embedding_bwd<float>(ids.data(), dx.data(), N, D, dt_ref.data());
  ops::embedding_bwd(v(ids), v(dx), N, D, V, v(dt));
  expect_same(dt, dt_ref, "dtable");
  // Negative ids (padding) are skipped: the same as the cpu:: kernel over the other tokens.
  VecI pad_ids = {3, -1, 3, -100, 1, 3};
  VecI kept_ids = {3, 3, 1, 3};
  VecF kept_dx;
  for (int64_t n : {0, 2, 4, 5}) kept_dx.insert(kept_dx.end(), &dx[n * D], &dx[(n + 1) * D]);
  VecF dtp_ref = dt0, dtp = dt0;
  cpu::embedding_bwd<float>(kept_ids.data(), kept_dx.data(), 4, D, dtp_ref.data());
  ops::embedding_bwd(v(pad_ids), v(dx), N, D, V, v(dtp));
  expect_same(dtp, dtp_ref, "dtable (negative ids skipped)");

  std::vector<uint16_t> s;
  VecF bad(V * D - 1);
  VecF idsf(N);
  expect_arg_errors(
      "embedding_fwd", "table_VD",
      [&] { ops::embedding_fwd(v(ids), bf16(s, V * D), N, V, D, v(x)); },
      [&] { ops::embedding_fwd(v(ids), v(bad), N, V, D, v(x)); },
      [&] { ops::embedding_fwd(v(ids), on_cuda(table), N, V, D, v(x)); });
  expect_arg_errors(
      "embedding_bwd", "dtable_VD",
      [&] { ops::embedding_bwd(v(ids), bf16(s, N * D), N, D, V, v(dt)); },
      [&] { ops::embedding_bwd(v(ids), v(dx), N, D, V, v(bad)); },
      [&] { ops::embedding_bwd(v(ids), v(dx), N, D, V, on_cuda(dt)); });
  expect_error([&] { ops::embedding_fwd(v(idsf), v(table), N, V, D, v(x)); },
               {"ops::embedding_fwd", "ids_N", "expected i32"});
}

}  // namespace
