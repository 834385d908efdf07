// The view forms of the ops on Device::cuda (f32 and bf16 views) against the same view ops on the
// CPU over the bf16-rounded inputs: the one op layer gives the same results on either device.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/segments.h"
#include "core/view.h"
#include "cuda/device.h"
#include "cuda/dtype.h"
#include "dev_tensor.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/embedding.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"
#include "ops/tensor.h"
#include "test_util.h"

namespace {

namespace dt = deltatron;
using dt::core::View;
using dt_test::DevTensor;
using dt_test::DType;
using VecF = std::vector<float>;
using VecI = std::vector<int32_t>;

constexpr dt::core::Device kCpu = dt::core::Device::cpu;
constexpr dt::core::Device kCuda = dt::core::Device::cuda;

View dv(const DevTensor& d) { return View(d.ptr, d.t, kCuda, {int64_t(d.n)}); }
View hv(VecF& x) { return View(x.data(), DType::f32, kCpu, {int64_t(x.size())}); }
View hv(VecI& x) { return View(x.data(), DType::i32, kCpu, {int64_t(x.size())}); }

// An int32 device copy of host ids / bounds.
struct DevInts {
  dt::cuda::DeviceBuffer buf;
  View view;
  explicit DevInts(const VecI& v) : buf(v.size() * 4 + 4, "test ints") {
    view = View(buf.get(), DType::i32, kCuda, {int64_t(v.size())});
    dt::ops::copy_from_host(view, v.data());
  }
};

void expect_close(const DevTensor& got, const VecF& want, double tol, const std::string& what) {
  dt::ops::synchronize(kCuda);
  dt_test::check(dt_test::download(got), dt_test::to_double(want), tol, what, "");
}

class OpsViewsCuda : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override { dt::cuda::require_hopper(); }
  DType st() const { return GetParam(); }  // the storage type of activations
  double tol(bool bwd = false) const { return dt_test::tol_for(st(), bwd); }
};

TEST_P(OpsViewsCuda, Linear) {
  const int64_t N = 37, I = 64, O = 24;
  DevTensor x = dt_test::upload(dt_test::randn<float>(N * I, 1), st());
  DevTensor W = dt_test::upload(dt_test::randn<float>(O * I, 2, 0.2), st());
  DevTensor dy = dt_test::upload(dt_test::randn<float>(N * O, 3), st());
  VecF y0 = dt_test::randn<float>(N * O, 4);
  DevTensor y = dt_test::upload(y0, DType::f32);
  dt::ops::linear_fwd(dv(x), dv(W), N, I, O, dv(y), true);
  VecF y_ref = y0;
  dt::ops::linear_fwd(hv(x.host), hv(W.host), N, I, O, hv(y_ref), true);
  expect_close(y, y_ref, 1e-5, "linear_fwd accumulate");

  DevTensor dx = dt_test::poisoned(N * I, st());
  dt::ops::linear_bwd_dx(dv(dy), dv(W), N, I, O, dv(dx), false);
  VecF dx_ref(N * I);
  dt::ops::linear_bwd_dx(hv(dy.host), hv(W.host), N, I, O, hv(dx_ref), false);
  expect_close(dx, dx_ref, tol(true), "linear_bwd_dx");

  VecF dW0 = dt_test::randn<float>(O * I, 5);
  DevTensor dW = dt_test::upload(dW0, DType::f32);
  dt::ops::linear_bwd_dw(dv(x), dv(dy), N, I, O, dv(dW));
  VecF dW_ref = dW0;
  dt::ops::linear_bwd_dw(hv(x.host), hv(dy.host), N, I, O, hv(dW_ref));
  expect_close(dW, dW_ref, 1e-5, "linear_bwd_dw");
}

TEST_P(OpsViewsCuda, RMSNormResidual) {
  const int64_t N = 19, D = 96;
  DevTensor x = dt_test::upload(dt_test::randn<float>(N * D, 10), DType::f32);  // residual
  DevTensor w = dt_test::upload(dt_test::randn<float>(D, 11, 0.1), st());
  DevTensor y = dt_test::poisoned(N * D, st()), r = dt_test::poisoned(N, DType::f32);
  dt::ops::rmsnorm_fwd(dv(x), dv(w), N, D, 1e-6, dv(y), dv(r));
  VecF y_ref(N * D), r_ref(N);
  dt::ops::rmsnorm_fwd(hv(x.host), hv(w.host), N, D, 1e-6, hv(y_ref), hv(r_ref));
  expect_close(y, y_ref, tol(), "rmsnorm_fwd y");
  expect_close(r, r_ref, 1e-5, "rmsnorm_fwd rstd");

  DevTensor dy = dt_test::upload(dt_test::randn<float>(N * D, 12), st());
  VecF dx0 = dt_test::randn<float>(N * D, 13);
  DevTensor dx = dt_test::upload(dx0, DType::f32);
  VecF r_host = dt_test::download(r);
  dt::ops::rmsnorm_bwd(dv(x), dv(w), dv(r), dv(dy), N, D, dv(dx), true, View{});
  VecF dx_ref = dx0;
  dt::ops::rmsnorm_bwd(hv(x.host), hv(w.host), hv(r_host), hv(dy.host), N, D, hv(dx_ref), true,
                       View{});
  expect_close(dx, dx_ref, 1e-4, "rmsnorm_bwd dx accumulated");
}

TEST_P(OpsViewsCuda, SwiGLU) {
  const int64_t n = 1001;
  DevTensor g = dt_test::upload(dt_test::randn<float>(n, 20), st());
  DevTensor u = dt_test::upload(dt_test::randn<float>(n, 21), st());
  DevTensor h = dt_test::poisoned(n, st());
  dt::ops::swiglu_fwd(dv(g), dv(u), n, dv(h));
  VecF h_ref(n);
  dt::ops::swiglu_fwd(hv(g.host), hv(u.host), n, hv(h_ref));
  expect_close(h, h_ref, tol(), "swiglu_fwd");
}

TEST_P(OpsViewsCuda, Attention) {
  VecI cu = {0, 13, 40};
  const dt::core::Segments seg{cu.data(), 2};
  const int64_t N = 40, H = 4, J = 2, K = 32;
  const float scale = 0.17677669f;
  DevTensor q = dt_test::upload(dt_test::randn<float>(N * H * K, 30), st());
  DevTensor k = dt_test::upload(dt_test::randn<float>(N * J * K, 31), st());
  DevTensor v = dt_test::upload(dt_test::randn<float>(N * J * K, 32), st());
  DevTensor o = dt_test::poisoned(N * H * K, st()), lse = dt_test::poisoned(N * H, DType::f32);
  DevInts cu_dev(cu);
  dt::ops::attention_fwd(dv(q), dv(k), dv(v), cu_dev.view, seg, N, H, J, K, scale, dv(o), dv(lse));
  VecF o_ref(N * H * K), lse_ref(N * H);
  dt::ops::attention_fwd(hv(q.host), hv(k.host), hv(v.host), hv(cu), seg, N, H, J, K, scale,
                         hv(o_ref), hv(lse_ref));
  expect_close(o, o_ref, tol(), "attention_fwd o");
  expect_close(lse, lse_ref, 1e-4, "attention_fwd lse");
}

TEST_P(OpsViewsCuda, Embedding) {
  const int64_t N = 9, V = 11, D = 64;
  VecI ids = {3, 0, 10, 3, 7, 7, 1, 2, 3};
  DevInts ids_dev(ids);
  DevTensor table = dt_test::upload(dt_test::randn<float>(V * D, 40), st());
  DevTensor x = dt_test::poisoned(N * D, DType::f32);
  dt::ops::embedding_fwd(ids_dev.view, dv(table), N, V, D, dv(x));
  VecF x_ref(N * D);
  dt::ops::embedding_fwd(hv(ids), hv(table.host), N, V, D, hv(x_ref));
  expect_close(x, x_ref, 0, "embedding_fwd");

  VecI pad = {3, -1, 10, 3, -100, 7, 1, 2, 3};
  DevInts pad_dev(pad);
  DevTensor dx = dt_test::upload(dt_test::randn<float>(N * D, 41), DType::f32);
  VecF dt0 = dt_test::randn<float>(V * D, 42);
  DevTensor dtab = dt_test::upload(dt0, DType::f32);
  dt::ops::embedding_bwd(pad_dev.view, dv(dx), N, D, V, dv(dtab));
  VecF dt_ref = dt0;
  dt::ops::embedding_bwd(hv(pad), hv(dx.host), N, D, V, hv(dt_ref));
  expect_close(dtab, dt_ref, 1e-6, "embedding_bwd (negative ids skipped)");
}

TEST_P(OpsViewsCuda, Tensor) {
  const int64_t n = 515;
  VecF a = dt_test::randn<float>(n, 50);
  DevTensor src = dt_test::upload(a, DType::f32);
  DevTensor dst = dt_test::poisoned(n, st());
  dt::ops::cast(dv(src), dv(dst), n);
  VecF a_ref = dt_test::download(dst);  // rounded once: cast back must be exact
  DevTensor back = dt_test::poisoned(n, DType::f32);
  dt::ops::cast(dv(dst), dv(back), n);
  expect_close(back, a_ref, 0, "cast round trip");

  DevTensor y = dt_test::upload(a, DType::f32);
  dt::ops::add_inplace(dv(y), dv(dst), n);
  VecF y_ref = a, dst_host = a_ref;
  dt::ops::add_inplace(hv(y_ref), hv(dst_host), n);
  expect_close(y, y_ref, 0, "add_inplace");

  VecF y_host = dt_test::download(y);
  EXPECT_NEAR(dt::ops::sum_squares(dv(y), n), dt::ops::sum_squares(hv(y_host), n),
              1e-9 * dt::ops::sum_squares(hv(y_host), n));

  // copy_cols: columns [3, 3 + 5) of a [rows, 8] into columns [0, 5) of a [rows, 5].
  const int64_t rows = 7;
  DevTensor m = dt_test::upload(dt_test::randn<float>(rows * 8, 51), st());
  DevTensor mc = dt_test::poisoned(rows * 5, st());
  dt::ops::copy_cols(dv(m), 8, 3, dv(mc), 5, 0, rows, 5);
  VecF mc_ref(rows * 5);
  dt::ops::copy_cols(hv(m.host), 8, 3, hv(mc_ref), 5, 0, rows, 5);
  expect_close(mc, mc_ref, 0, "copy_cols");

  DevTensor f = dt_test::poisoned(n, st());
  dt::ops::fill(dv(f), 1.5f, n);
  expect_close(f, VecF(n, 1.5f), 0, "fill");
  dt::ops::zero(dv(f));
  expect_close(f, VecF(n, 0.f), 0, "zero");
  VecI ints(n);
  DevInts id(ints);
  dt::ops::fill(id.view, 7.f, n);
  dt::ops::copy_to_host(id.view, ints.data());
  EXPECT_EQ(ints, VecI(n, 7));

  // Mixed devices are an error naming the op.
  VecF host(n);
  dt_test::expect_error([&] { dt::ops::add_inplace(dv(y), hv(host), n); },
                        {"ops::add_inplace", "x", "cpu"});
}

INSTANTIATE_TEST_SUITE_P(Dtypes, OpsViewsCuda, ::testing::Values(DType::f32, DType::bf16),
                         [](const auto& info) {
                           return std::string(dt::core::dtype_name(info.param));
                         });

}  // namespace
