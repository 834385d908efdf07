// GPU parity of the CUDA RMSNorm / gated RMSNorm / L2 norm kernels (cuda::*norm*) vs cpu::*.
//
// Reference: cpu::<op><double> on the values the device sees (bf16-rounded in bf16 mode); the
// backward references take the device's saved statistics (rstd, and y for L2), so they check
// the backward alone. Outputs are NaN-poisoned so unwritten elements fail; dw and accumulated dx
// start from random values. Bounds (relative RMS, util below): outputs stored in bf16: forward
// 5e-3, backward 1e-2; outputs stored in fp32 (rstd, dw, the residual dx): 1e-5 in every mode
// (fp32 arithmetic on identical inputs). Shapes: odd (7 x 13, D = 1, N = 1, N = 0), the real
// per-head and hidden sizes (65536 x 128 = 4096 tokens x 16 heads, 65536 x 256, 4096 x 2048),
// large D (5120, 8192), unvectorisable sizes and a misaligned pointer. Also bitwise determinism.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"
#include "cpu/l2norm.h"
#include "cpu/rmsnorm.h"
#include "cuda/device.h"
#include "cuda/norms.h"
#include "cuda/pointwise.h"
#include "dev_tensor.h"
#include "gpu_timer.h"
#include "test_util.h"

namespace dt = deltatron;
using dt::cuda::DType;

namespace {

using dt_test::bytes_of;
using dt_test::check;
using dt_test::DevTensor;
using dt_test::download;
using dt_test::poisoned;
using dt_test::to_double;
using dt_test::tol_for;
using dt_test::upload;

[[maybe_unused]] auto* const kPrintWorst =
    ::testing::AddGlobalTestEnvironment(new dt_test::PrintWorst);

std::string mode_name(DType xt, DType t) {
  if (xt != t) return std::string("x:") + dt::cuda::dtype_name(xt) + "/" + dt::cuda::dtype_name(t);
  return dt::cuda::dtype_name(t);
}

std::string shape(int64_t N, int64_t D, size_t off) {
  return "N=" + std::to_string(N) + " D=" + std::to_string(D) +
         (off ? " off=" + std::to_string(off) : "");
}

constexpr double kEps = 1e-6;

// Row scales spread over two decades so rstd varies between rows. D = 1 rows are scaled to
// ~sqrt(eps): there the input gradient is r g eps / (x^2 + eps), a cancellation of two terms
// that agree to eps / x^2 (beyond fp32 when |x| >> sqrt(eps), for any implementation).
std::vector<float> rows_randn(int64_t N, int64_t D, uint64_t seed) {
  auto v = dt_test::randn<float>(size_t(N * D), seed);
  auto s = dt_test::uniform<float>(size_t(N), seed + 99, -1.0, 1.0);
  const float base = D == 1 ? 1e-3f : 1.0f;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d) v[n * D + d] *= base * std::pow(10.0f, s[n]);
  return v;
}

// ---- RMSNorm -------------------------------------------------------------------------------

void run_rmsnorm(int64_t N, int64_t D, DType xt, DType t, size_t off, uint64_t seed) {
  const std::string mode = mode_name(xt, t), where = shape(N, D, off);
  DevTensor x = upload(rows_randn(N, D, seed), xt, off);
  DevTensor w = upload(dt_test::randn<float>(size_t(D), seed + 1, 0.1), t, off);
  DevTensor dy = upload(dt_test::randn<float>(size_t(N * D), seed + 2), t, off);
  const auto x_d = to_double(x.host), w_d = to_double(w.host), dy_d = to_double(dy.host);

  DevTensor y = poisoned(size_t(N * D), t, off), rstd = poisoned(size_t(N), DType::f32);
  dt::cuda::rmsnorm_fwd(xt, x.ptr, t, w.ptr, N, D, kEps, y.ptr, rstd.f32());
  std::vector<double> y_ref(size_t(N * D)), rstd_ref(static_cast<size_t>(N));
  dt::cpu::rmsnorm_fwd<double>(x_d.data(), w_d.data(), N, D, kEps, y_ref.data(), rstd_ref.data());
  check(download(y), y_ref, tol_for(t, false), "rmsnorm y " + mode, where);
  check(download(rstd), rstd_ref, 1e-5, "rmsnorm rstd " + mode, where);

  // backward: dx overwritten, dw accumulated onto random values
  const auto rstd_dev = download(rstd);
  const auto rstd_d = to_double(rstd_dev);
  const auto dw0 = dt_test::randn<float>(size_t(D), seed + 3);
  DevTensor dx = poisoned(size_t(N * D), xt, off);
  DevTensor dw = upload(dw0, DType::f32);
  dt::cuda::rmsnorm_bwd(xt, x.ptr, t, w.ptr, rstd.f32(), dy.ptr, N, D, dx.ptr, false, dw.f32());
  std::vector<double> dx_ref(size_t(N * D)), dw_ref = to_double(dw0);
  dt::cpu::rmsnorm_bwd<double>(x_d.data(), w_d.data(), rstd_d.data(), dy_d.data(), N, D,
                               dx_ref.data(), dw_ref.data());
  check(download(dx), dx_ref, tol_for(xt, true), "rmsnorm dx " + mode, where);
  check(download(dw), dw_ref, 1e-5, "rmsnorm dw(+=) " + mode, where);

  // backward: dx accumulated onto random values (the residual gradient), dw skipped
  DevTensor dx_acc = upload(dt_test::randn<float>(size_t(N * D), seed + 4), xt, off);
  std::vector<double> dx_acc_ref = to_double(dx_acc.host);
  for (size_t i = 0; i < dx_acc_ref.size(); ++i) dx_acc_ref[i] += dx_ref[i];
  dt::cuda::rmsnorm_bwd(xt, x.ptr, t, w.ptr, rstd.f32(), dy.ptr, N, D, dx_acc.ptr, true, nullptr);
  check(download(dx_acc), dx_acc_ref, tol_for(xt, true), "rmsnorm dx(+=) " + mode, where);

  // determinism: the same calls again give the same bits
  DevTensor y2 = poisoned(size_t(N * D), t, off), rstd2 = poisoned(size_t(N), DType::f32);
  DevTensor dx2 = poisoned(size_t(N * D), xt, off), dw2 = upload(dw0, DType::f32);
  dt::cuda::rmsnorm_fwd(xt, x.ptr, t, w.ptr, N, D, kEps, y2.ptr, rstd2.f32());
  dt::cuda::rmsnorm_bwd(xt, x.ptr, t, w.ptr, rstd.f32(), dy.ptr, N, D, dx2.ptr, false, dw2.f32());
  EXPECT_EQ(bytes_of(y), bytes_of(y2)) << "rmsnorm y not bitwise repeatable " << where;
  EXPECT_EQ(bytes_of(rstd), bytes_of(rstd2)) << "rmsnorm rstd not bitwise repeatable " << where;
  EXPECT_EQ(bytes_of(dx), bytes_of(dx2)) << "rmsnorm dx not bitwise repeatable " << where;
  EXPECT_EQ(bytes_of(dw), bytes_of(dw2)) << "rmsnorm dw not bitwise repeatable " << where;

  // The fused extras (the decoder layer's saved residual, the next block's output gradient): the
  // same y, rstd, dx, dw, plus x_copy == x and dx_cast == cast(dx) bitwise.
  DevTensor y3 = poisoned(size_t(N * D), t, off), rstd3 = poisoned(size_t(N), DType::f32);
  DevTensor x_copy = poisoned(size_t(N * D), xt, off);
  dt::cuda::rmsnorm_fwd(xt, x.ptr, t, w.ptr, N, D, kEps, y3.ptr, rstd3.f32(), x_copy.ptr);
  EXPECT_EQ(bytes_of(y3), bytes_of(y)) << "rmsnorm y with x_copy differs " << where;
  EXPECT_EQ(bytes_of(rstd3), bytes_of(rstd)) << "rmsnorm rstd with x_copy differs " << where;
  EXPECT_EQ(bytes_of(x_copy), bytes_of(x)) << "rmsnorm x_copy is not x " << where;
  DevTensor dx3 = upload(dx_acc.host, xt, off), dw3 = upload(dw0, DType::f32);
  DevTensor dx4 = upload(dx_acc.host, xt, off), dw4 = upload(dw0, DType::f32);
  DevTensor dx_cast = poisoned(size_t(N * D), t, off),
            dx_cast_ref = poisoned(size_t(N * D), t, off);
  dt::cuda::rmsnorm_bwd(xt, x.ptr, t, w.ptr, rstd.f32(), dy.ptr, N, D, dx3.ptr, true, dw3.f32(),
                        dx_cast.ptr);
  dt::cuda::rmsnorm_bwd(xt, x.ptr, t, w.ptr, rstd.f32(), dy.ptr, N, D, dx4.ptr, true, dw4.f32());
  dt::cuda::cast(xt, dx4.ptr, t, dx_cast_ref.ptr, N * D);
  EXPECT_EQ(bytes_of(dx3), bytes_of(dx4)) << "rmsnorm dx(+=) with dx_cast differs " << where;
  EXPECT_EQ(bytes_of(dw3), bytes_of(dw4)) << "rmsnorm dw with dx_cast differs " << where;
  EXPECT_EQ(bytes_of(dx_cast), bytes_of(dx_cast_ref))
      << "rmsnorm dx_cast is not cast(dx) " << where;
}

// ---- gated RMSNorm -------------------------------------------------------------------------

void run_gated(int64_t N, int64_t D, DType t, size_t off, uint64_t seed) {
  const std::string mode = dt::cuda::dtype_name(t), where = shape(N, D, off);
  DevTensor x = upload(rows_randn(N, D, seed), t, off);
  DevTensor z = upload(dt_test::randn<float>(size_t(N * D), seed + 1, 2.0), t, off);
  auto w_h = dt_test::randn<float>(size_t(D), seed + 2, 0.1);
  for (auto& v : w_h) v += 1.0f;  // plain weight, ~1
  DevTensor w = upload(w_h, t, off);
  DevTensor dy = upload(dt_test::randn<float>(size_t(N * D), seed + 3), t, off);
  const auto x_d = to_double(x.host), z_d = to_double(z.host), w_d = to_double(w.host);
  const auto dy_d = to_double(dy.host);

  DevTensor y = poisoned(size_t(N * D), t, off), rstd = poisoned(size_t(N), DType::f32);
  dt::cuda::rmsnorm_gated_fwd(t, x.ptr, z.ptr, w.ptr, N, D, kEps, y.ptr, rstd.f32());
  std::vector<double> y_ref(size_t(N * D)), rstd_ref(static_cast<size_t>(N));
  dt::cpu::rmsnorm_gated_fwd<double>(x_d.data(), z_d.data(), w_d.data(), N, D, kEps, y_ref.data(),
                                     rstd_ref.data());
  check(download(y), y_ref, tol_for(t, false), "gated y " + mode, where);
  check(download(rstd), rstd_ref, 1e-5, "gated rstd " + mode, where);

  const auto rstd_d = to_double(download(rstd));
  const auto dw0 = dt_test::randn<float>(size_t(D), seed + 4);
  DevTensor dx = poisoned(size_t(N * D), t, off), dz = poisoned(size_t(N * D), t, off);
  DevTensor dw = upload(dw0, DType::f32);
  dt::cuda::rmsnorm_gated_bwd(t, x.ptr, z.ptr, w.ptr, rstd.f32(), dy.ptr, N, D, dx.ptr, dz.ptr,
                              dw.f32());
  std::vector<double> dx_ref(size_t(N * D)), dz_ref(size_t(N * D)), dw_ref = to_double(dw0);
  dt::cpu::rmsnorm_gated_bwd<double>(x_d.data(), z_d.data(), w_d.data(), rstd_d.data(), dy_d.data(),
                                     N, D, dx_ref.data(), dz_ref.data(), dw_ref.data());
  check(download(dx), dx_ref, tol_for(t, true), "gated dx " + mode, where);
  check(download(dz), dz_ref, tol_for(t, true), "gated dz " + mode, where);
  check(download(dw), dw_ref, 1e-5, "gated dw(+=) " + mode, where);

  DevTensor dx2 = poisoned(size_t(N * D), t, off), dz2 = poisoned(size_t(N * D), t, off);
  DevTensor dw2 = upload(dw0, DType::f32);
  dt::cuda::rmsnorm_gated_bwd(t, x.ptr, z.ptr, w.ptr, rstd.f32(), dy.ptr, N, D, dx2.ptr, dz2.ptr,
                              dw2.f32());
  EXPECT_EQ(bytes_of(dx), bytes_of(dx2)) << "gated dx not bitwise repeatable " << where;
  EXPECT_EQ(bytes_of(dz), bytes_of(dz2)) << "gated dz not bitwise repeatable " << where;
  EXPECT_EQ(bytes_of(dw), bytes_of(dw2)) << "gated dw not bitwise repeatable " << where;
}

// ---- L2 norm -------------------------------------------------------------------------------

void run_l2(int64_t N, int64_t D, DType t, size_t off, uint64_t seed) {
  const std::string mode = dt::cuda::dtype_name(t), where = shape(N, D, off);
  DevTensor x = upload(rows_randn(N, D, seed), t, off);
  DevTensor dy = upload(dt_test::randn<float>(size_t(N * D), seed + 1), t, off);
  const auto x_d = to_double(x.host);

  DevTensor y = poisoned(size_t(N * D), t, off), rstd = poisoned(size_t(N), DType::f32);
  dt::cuda::l2norm_fwd(t, x.ptr, N, D, kEps, y.ptr, rstd.f32());
  std::vector<double> y_ref(size_t(N * D)), rstd_ref(static_cast<size_t>(N));
  dt::cpu::l2norm_fwd<double>(x_d.data(), N, D, kEps, y_ref.data(), rstd_ref.data());
  check(download(y), y_ref, tol_for(t, false), "l2norm y " + mode, where);
  check(download(rstd), rstd_ref, 1e-5, "l2norm rstd " + mode, where);

  // backward from the device's saved y and rstd
  const auto y_d = to_double(download(y)), rstd_d = to_double(download(rstd));
  const auto dy_d = to_double(dy.host);
  DevTensor dx = poisoned(size_t(N * D), t, off);
  dt::cuda::l2norm_bwd(t, y.ptr, rstd.f32(), dy.ptr, N, D, dx.ptr);
  std::vector<double> dx_ref(size_t(N * D));
  dt::cpu::l2norm_bwd<double>(y_d.data(), rstd_d.data(), dy_d.data(), N, D, dx_ref.data());
  check(download(dx), dx_ref, tol_for(t, true), "l2norm dx " + mode, where);

  // dx may alias dy; the result is bitwise the same as out of place
  DevTensor dy_alias = upload(dy.host, t, off);
  dt::cuda::l2norm_bwd(t, y.ptr, rstd.f32(), dy_alias.ptr, N, D, dy_alias.ptr);
  EXPECT_EQ(bytes_of(dx), bytes_of(dy_alias)) << "l2norm dx aliasing dy differs " << where;
}

class CudaNorms : public ::testing::Test {
 protected:
  void SetUp() override { dt::cuda::require_hopper(); }
};

struct Shape {
  int64_t N, D;
  size_t off;
};

// Odd and edge shapes (small enough for compute-sanitizer), and the real sizes.
const std::vector<Shape> kSmallShapes = {
    {7, 13, 0},   {1, 13, 0},   {0, 13, 0},   {5, 1, 0},    {33, 256, 1},
    {9, 1004, 0}, {3, 4095, 0}, {2, 5120, 0}, {3, 8192, 0},
};
const std::vector<Shape> kRealShapes = {{65536, 128, 0}, {65536, 256, 0}, {4096, 2048, 0}};

}  // namespace

TEST_F(CudaNorms, RmsnormSmall) {
  uint64_t seed = 100;
  for (const auto& s : kSmallShapes) {
    run_rmsnorm(s.N, s.D, DType::f32, DType::f32, s.off, seed += 10);
    run_rmsnorm(s.N, s.D, DType::bf16, DType::bf16, s.off, seed += 10);
    run_rmsnorm(s.N, s.D, DType::f32, DType::bf16, s.off, seed += 10);
  }
}

TEST_F(CudaNorms, RmsnormF32) {
  uint64_t seed = 1000;
  for (const auto& s : kRealShapes)
    run_rmsnorm(s.N, s.D, DType::f32, DType::f32, s.off, seed += 10);
}

TEST_F(CudaNorms, RmsnormBf16) {
  uint64_t seed = 2000;
  for (const auto& s : kRealShapes)
    run_rmsnorm(s.N, s.D, DType::bf16, DType::bf16, s.off, seed += 10);
}

// The residual-stream norms: x and dx in fp32, weight, y and dy in bf16.
TEST_F(CudaNorms, RmsnormF32ResidualBf16Out) {
  uint64_t seed = 3000;
  for (const auto& s : kRealShapes)
    run_rmsnorm(s.N, s.D, DType::f32, DType::bf16, s.off, seed += 10);
}

TEST_F(CudaNorms, RmsnormGatedSmall) {
  uint64_t seed = 3500;
  for (const auto& s : kSmallShapes) {
    run_gated(s.N, s.D, DType::f32, s.off, seed += 10);
    run_gated(s.N, s.D, DType::bf16, s.off, seed += 10);
  }
}

TEST_F(CudaNorms, RmsnormGatedF32) {
  uint64_t seed = 4000;
  for (const auto& s : kRealShapes) run_gated(s.N, s.D, DType::f32, s.off, seed += 10);
  run_gated(131072, 128, DType::f32, 0, 4999);  // 4096 tokens x 32 value heads x dv
}

TEST_F(CudaNorms, RmsnormGatedBf16) {
  uint64_t seed = 5000;
  for (const auto& s : kRealShapes) run_gated(s.N, s.D, DType::bf16, s.off, seed += 10);
  run_gated(131072, 128, DType::bf16, 0, 5999);
}

TEST_F(CudaNorms, L2normSmall) {
  uint64_t seed = 5500;
  for (const auto& s : kSmallShapes) {
    run_l2(s.N, s.D, DType::f32, s.off, seed += 10);
    run_l2(s.N, s.D, DType::bf16, s.off, seed += 10);
  }
}

TEST_F(CudaNorms, L2normF32) {
  uint64_t seed = 6000;
  for (const auto& s : kRealShapes) run_l2(s.N, s.D, DType::f32, s.off, seed += 10);
}

TEST_F(CudaNorms, L2normBf16) {
  uint64_t seed = 7000;
  for (const auto& s : kRealShapes) run_l2(s.N, s.D, DType::bf16, s.off, seed += 10);
}

// Rows at a token pitch (the GDN block's q / k columns of its conv output, ops::RowPitch): with
// a pitch that keeps the rows' vector width (16-byte rows, as the model's), the same bits as the
// rows copied out, forward and backward; with an odd pitch (scalar loads) within the usual bounds
// of the CPU reference. The backward leaves the elements between the rows alone.
TEST_F(CudaNorms, L2normPitchedRowsMatchContiguous) {
  struct Case {
    int64_t T, H, D, ld, col0;
    bool bitwise;
  };
  for (const Case& k : {Case{300, 16, 128, 6144, 2048, true}, Case{37, 3, 24, 80, 8, true},
                        Case{50, 2, 20, 53, 5, false}})
    for (DType t : {DType::bf16, DType::f32}) {
      const int64_t N = k.T * k.H;
      const std::string mode = dt::cuda::dtype_name(t), where = "T=" + std::to_string(k.T) +
                                                                " D=" + std::to_string(k.D) +
                                                                " ld=" + std::to_string(k.ld);
      const std::vector<float> c = dt_test::randn<float>(size_t(k.T * k.ld), 8100);
      DevTensor xc = upload(c, t);
      std::vector<float> rows(size_t(N * k.D));  // the rows as the device holds them
      const std::vector<float> cd = download(xc);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t d = 0; d < k.D; ++d)
          rows[n * k.D + d] = cd[(n / k.H) * k.ld + k.col0 + (n % k.H) * k.D + d];
      DevTensor xr = upload(rows, t);
      DevTensor y1 = poisoned(size_t(N * k.D), t), r1 = poisoned(size_t(N), DType::f32);
      DevTensor y2 = poisoned(size_t(N * k.D), t), r2 = poisoned(size_t(N), DType::f32);
      dt::cuda::l2norm_fwd(t, xr.ptr, N, k.D, kEps, y1.ptr, r1.f32());
      const size_t es = dt::cuda::dtype_size(t);
      dt::cuda::l2norm_fwd(t, static_cast<char*>(xc.ptr) + k.col0 * es, N, k.D, kEps, y2.ptr,
                           r2.f32(), k.H, k.ld);
      DevTensor dy = upload(dt_test::randn<float>(size_t(N * k.D), 8101), t);
      DevTensor dx1 = poisoned(size_t(N * k.D), t);
      dt::cuda::l2norm_bwd(t, y2.ptr, r2.f32(), dy.ptr, N, k.D, dx1.ptr);
      DevTensor dc = upload(std::vector<float>(size_t(k.T * k.ld), 7.f), t);
      dt::cuda::l2norm_bwd(t, y2.ptr, r2.f32(), dy.ptr, N, k.D,
                           static_cast<char*>(dc.ptr) + k.col0 * es, k.H, k.ld);
      const std::vector<float> g2 = download(dc);
      std::vector<float> g2rows(size_t(N * k.D));
      for (int64_t e = 0; e < k.T * k.ld; ++e) {
        const int64_t tok = e / k.ld, col = e % k.ld - k.col0;
        if (col >= 0 && col < k.H * k.D)
          g2rows[size_t((tok * k.H + col / k.D) * k.D + col % k.D)] = g2[size_t(e)];
        else
          ASSERT_EQ(g2[size_t(e)], 7.f)
              << "element " << e << " between the rows was written, " << mode << " " << where;
      }
      if (k.bitwise) {
        EXPECT_EQ(bytes_of(y1), bytes_of(y2)) << "y " << mode << " " << where;
        EXPECT_EQ(bytes_of(r1), bytes_of(r2)) << "rstd " << mode << " " << where;
        EXPECT_EQ(download(dx1), g2rows) << "dx " << mode << " " << where;
      } else {  // against the CPU in double on the same rows
        const auto x_d = to_double(rows), dy_d = to_double(dy.host);
        std::vector<double> y_ref(size_t(N * k.D)), r_ref(static_cast<size_t>(N)),
            dx_ref(size_t(N * k.D));
        dt::cpu::l2norm_fwd<double>(x_d.data(), N, k.D, kEps, y_ref.data(), r_ref.data());
        check(download(y2), y_ref, tol_for(t, false), "pitched l2norm y " + mode, where);
        check(download(r2), r_ref, 1e-5, "pitched l2norm rstd " + mode, where);
        const auto y2_d = to_double(download(y2)), r2_d = to_double(download(r2));
        dt::cpu::l2norm_bwd<double>(y2_d.data(), r2_d.data(), dy_d.data(), N, k.D, dx_ref.data());
        check(g2rows, dx_ref, tol_for(t, true), "pitched l2norm dx " + mode, where);
      }
    }
}

TEST_F(CudaNorms, BadShapesAreOneLineErrors) {
  dt_test::expect_error(
      [] {
        dt::cuda::rmsnorm_fwd(DType::f32, nullptr, DType::f32, nullptr, 4, 0, kEps, nullptr,
                              nullptr);
      },
      {"cuda::rmsnorm_fwd", "D=0"});
  dt_test::expect_error(
      [] { dt::cuda::l2norm_fwd(DType::bf16, nullptr, 1, 8193, kEps, nullptr, nullptr); },
      {"cuda::l2norm_fwd", "D=8193"});
  dt_test::expect_error(
      [] {
        dt::cuda::rmsnorm_gated_bwd(DType::bf16, nullptr, nullptr, nullptr, nullptr, nullptr, -1, 8,
                                    nullptr, nullptr, nullptr);
      },
      {"cuda::rmsnorm_gated_bwd", "N=-1"});
}

// Achieved bandwidth at the real sizes (information only: printed, not asserted).
TEST_F(CudaNorms, Bandwidth) {
  auto time_ms = [](auto&& f) { return dt_test::gpu_time_ms(f, 3, 20); };
  auto report = [](const char* what, double ms, double bytes) {
    std::printf("  %-52s %8.1f us %7.0f GB/s\n", what, ms * 1e3, bytes / (ms * 1e-3) / 1e9);
  };
  const DType bf = DType::bf16, f32 = DType::f32;
  {  // residual-stream norm: 8192 tokens x 2048, x/dx fp32, y/dy bf16, dw fp32
    const int64_t N = 8192, D = 2048;
    DevTensor x = upload(dt_test::randn<float>(size_t(N * D), 1), f32);
    DevTensor w = upload(dt_test::randn<float>(size_t(D), 2, 0.1), bf);
    DevTensor dy = upload(dt_test::randn<float>(size_t(N * D), 3), bf);
    DevTensor y = poisoned(size_t(N * D), bf), rstd = poisoned(size_t(N), f32);
    DevTensor dx = upload(std::vector<float>(size_t(N * D), 0.0f), f32);
    DevTensor dw = upload(std::vector<float>(size_t(D), 0.0f), f32);
    const double nd = double(N * D);
    report("rmsnorm_fwd x f32 -> y bf16, 8192 x 2048", time_ms([&] {
             dt::cuda::rmsnorm_fwd(f32, x.ptr, bf, w.ptr, N, D, kEps, y.ptr, rstd.f32());
           }),
           nd * 6);
    report("rmsnorm_bwd dx f32 (+=), dw, 8192 x 2048", time_ms([&] {
             dt::cuda::rmsnorm_bwd(f32, x.ptr, bf, w.ptr, rstd.f32(), dy.ptr, N, D, dx.ptr, true,
                                   dw.f32());
           }),
           nd * 14);
  }
  {  // q norm: 8192 tokens x 16 heads x 256, bf16
    const int64_t N = 8192 * 16, D = 256;
    DevTensor x = upload(dt_test::randn<float>(size_t(N * D), 4), bf);
    DevTensor w = upload(dt_test::randn<float>(size_t(D), 5, 0.1), bf);
    DevTensor y = poisoned(size_t(N * D), bf), rstd = poisoned(size_t(N), f32);
    DevTensor dw = upload(std::vector<float>(size_t(D), 0.0f), f32);
    const double nd = double(N * D);
    report("rmsnorm_fwd bf16, 131072 x 256", time_ms([&] {
             dt::cuda::rmsnorm_fwd(bf, x.ptr, bf, w.ptr, N, D, kEps, y.ptr, rstd.f32());
           }),
           nd * 4);
    report("rmsnorm_bwd bf16 (dy = y in place), dw, 131072 x 256", time_ms([&] {
             dt::cuda::rmsnorm_bwd(bf, x.ptr, bf, w.ptr, rstd.f32(), y.ptr, N, D, y.ptr, false,
                                   dw.f32());
           }),
           nd * 6);
  }
  {  // GDN: 8192 tokens x 32 value heads x 128 (gated norm), 16 key heads (l2norm), bf16
    const int64_t N = 8192 * 32, D = 128;
    DevTensor x = upload(dt_test::randn<float>(size_t(N * D), 6), bf);
    DevTensor z = upload(dt_test::randn<float>(size_t(N * D), 7), bf);
    DevTensor w = upload(std::vector<float>(size_t(D), 1.0f), bf);
    DevTensor y = poisoned(size_t(N * D), bf), rstd = poisoned(size_t(N), f32);
    DevTensor dx = poisoned(size_t(N * D), bf), dz = poisoned(size_t(N * D), bf);
    DevTensor dw = upload(std::vector<float>(size_t(D), 0.0f), f32);
    const double nd = double(N * D);
    report("rmsnorm_gated_fwd bf16, 262144 x 128", time_ms([&] {
             dt::cuda::rmsnorm_gated_fwd(bf, x.ptr, z.ptr, w.ptr, N, D, kEps, y.ptr, rstd.f32());
           }),
           nd * 6);
    report("rmsnorm_gated_bwd bf16, dw, 262144 x 128", time_ms([&] {
             dt::cuda::rmsnorm_gated_bwd(bf, x.ptr, z.ptr, w.ptr, rstd.f32(), y.ptr, N, D, dx.ptr,
                                         dz.ptr, dw.f32());
           }),
           nd * 10);
    const int64_t Nk = 8192 * 16;
    const double nk = double(Nk * D);
    report("l2norm_fwd bf16, 131072 x 128",
           time_ms([&] { dt::cuda::l2norm_fwd(bf, x.ptr, Nk, D, kEps, y.ptr, rstd.f32()); }),
           nk * 4);
    report("l2norm_bwd bf16, 131072 x 128",
           time_ms([&] { dt::cuda::l2norm_bwd(bf, y.ptr, rstd.f32(), z.ptr, Nk, D, dx.ptr); }),
           nk * 6);
  }
}
