// GPU parity of the vision tower's CUDA ops (LayerNorm, GELU, bias, position-embedding bag, 2-D
// RoPE, row gather/scatter) against the CPU references (label gpu). The bidirectional attention
// is in test_cuda_attention.cpp (BidirectionalMatchesCpu).
//
// Reference: cpu::<op><double> on the values the device sees (bf16-rounded in bf16 mode); the
// LayerNorm backward reference takes the device's saved mean and rstd, so it checks the backward
// alone. Outputs are NaN-poisoned so unwritten elements fail; accumulated outputs (dw, db,
// dtable, an accumulated dx or x) start from random values. Bounds (relative RMS,
// docs/tolerances.md): outputs stored in bf16 5e-3 forward, 1e-2 backward; outputs stored in fp32
// (statistics, parameter gradients, the residual stream and its gradient) 1e-5 in every mode.
// Row moves are exact copies (bytes). Shapes: odd (7 x 13), N = 0, the golden's tiny tower
// (D = 16, head dim 8), Qwen3.5's tower (D = 1152, 16 heads of 72, a 48 x 48 position grid),
// long runs of one table row (the sorted backward's block path). Also bitwise determinism.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "cpu/activation.h"
#include "cpu/embedding.h"
#include "cpu/layernorm.h"
#include "cpu/linear.h"
#include "cpu/rope.h"
#include "cuda/device.h"
#include "cuda/embedding.h"
#include "cuda/layernorm.h"
#include "cuda/pointwise.h"
#include "dev_tensor.h"
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

const char* nm(DType t) { return dt::cuda::dtype_name(t); }
std::string shape(int64_t N, int64_t D) {
  return "N=" + std::to_string(N) + " D=" + std::to_string(D);
}

DevTensor upload_i32(const std::vector<int32_t>& v) {
  DevTensor d = dt_test::alloc(v.size(), DType::f32, 0);  // int32: the size of f32
  if (!v.empty()) DT_CUDA_CHECK(cudaMemcpy(d.ptr, v.data(), v.size() * 4, cudaMemcpyHostToDevice));
  return d;
}
const int32_t* i32(const DevTensor& d) { return static_cast<const int32_t*>(d.ptr); }

class CudaVision : public ::testing::Test {
 protected:
  void SetUp() override { dt::cuda::require_hopper(); }
};

// ---- LayerNorm -----------------------------------------------------------------------------

void run_layernorm(int64_t N, int64_t D, DType xt, DType t, uint64_t seed) {
  const std::string mode = std::string("x:") + nm(xt) + "/" + nm(t), where = shape(N, D);
  auto xh = dt_test::randn<float>(size_t(N * D), seed, 2.0);
  for (int64_t n = 0; n < N; ++n)  // row offsets: the mean matters
    for (int64_t d = 0; d < D; ++d) xh[size_t(n * D + d)] += float(n % 5) - 2.f;
  DevTensor x = upload(xh, xt);
  auto wh = dt_test::randn<float>(size_t(D), seed + 1, 0.3);
  for (auto& v : wh) v += 1.f;
  DevTensor w = upload(wh, t), b = upload(dt_test::randn<float>(size_t(D), seed + 2, 0.5), t);
  DevTensor dy = upload(dt_test::randn<float>(size_t(N * D), seed + 3), t);
  const auto x_d = to_double(x.host), w_d = to_double(w.host), b_d = to_double(b.host),
             dy_d = to_double(dy.host);
  const double eps = 1e-6;

  DevTensor y = poisoned(size_t(N * D), t), mean = poisoned(size_t(N), DType::f32),
            rstd = poisoned(size_t(N), DType::f32);
  dt::cuda::layernorm_fwd(xt, x.ptr, t, w.ptr, b.ptr, N, D, eps, y.ptr, mean.f32(), rstd.f32());
  std::vector<double> y_ref(size_t(N * D)), mean_ref(static_cast<size_t>(N)),
      rstd_ref(static_cast<size_t>(N));
  dt::cpu::layernorm_fwd<double>(x_d.data(), w_d.data(), b_d.data(), N, D, eps, y_ref.data(),
                                 mean_ref.data(), rstd_ref.data());
  check(download(y), y_ref, tol_for(t, false), "layernorm y " + mode, where);
  check(download(mean), mean_ref, 1e-5, "layernorm mean " + mode, where);
  check(download(rstd), rstd_ref, 1e-5, "layernorm rstd " + mode, where);

  // Backward from the device's statistics: dx overwritten, dw and db accumulated.
  const auto mean_d = to_double(download(mean)), rstd_d = to_double(download(rstd));
  const auto dw0 = dt_test::randn<float>(size_t(D), seed + 4),
             db0 = dt_test::randn<float>(size_t(D), seed + 5);
  DevTensor dx = poisoned(size_t(N * D), xt), dw = upload(dw0, DType::f32),
            db = upload(db0, DType::f32);
  dt::cuda::layernorm_bwd(xt, x.ptr, t, w.ptr, mean.f32(), rstd.f32(), dy.ptr, N, D, dx.ptr, false,
                          dw.f32(), db.f32());
  std::vector<double> dx_ref(size_t(N * D)), dw_ref = to_double(dw0), db_ref = to_double(db0);
  dt::cpu::layernorm_bwd<double>(x_d.data(), w_d.data(), mean_d.data(), rstd_d.data(), dy_d.data(),
                                 N, D, dx_ref.data(), false, dw_ref.data(), db_ref.data());
  check(download(dx), dx_ref, tol_for(xt, true), "layernorm dx " + mode, where);
  check(download(dw), dw_ref, 1e-5, "layernorm dw(+=) " + mode, where);
  check(download(db), db_ref, 1e-5, "layernorm db(+=) " + mode, where);

  // dx accumulated (the residual gradient), dw and db skipped.
  DevTensor dx_acc = upload(dt_test::randn<float>(size_t(N * D), seed + 6), xt);
  std::vector<double> dx_acc_ref = to_double(dx_acc.host);
  for (size_t i = 0; i < dx_acc_ref.size(); ++i) dx_acc_ref[i] += dx_ref[i];
  dt::cuda::layernorm_bwd(xt, x.ptr, t, w.ptr, mean.f32(), rstd.f32(), dy.ptr, N, D, dx_acc.ptr,
                          true, nullptr, nullptr);
  check(download(dx_acc), dx_acc_ref, tol_for(xt, true), "layernorm dx(+=) " + mode, where);

  // Bitwise repeatable.
  DevTensor dx2 = poisoned(size_t(N * D), xt), dw2 = upload(dw0, DType::f32),
            db2 = upload(db0, DType::f32);
  dt::cuda::layernorm_bwd(xt, x.ptr, t, w.ptr, mean.f32(), rstd.f32(), dy.ptr, N, D, dx2.ptr, false,
                          dw2.f32(), db2.f32());
  EXPECT_EQ(bytes_of(dx), bytes_of(dx2)) << "layernorm dx not repeatable " << where;
  EXPECT_EQ(bytes_of(dw), bytes_of(dw2)) << "layernorm dw not repeatable " << where;
  EXPECT_EQ(bytes_of(db), bytes_of(db2)) << "layernorm db not repeatable " << where;
}

TEST_F(CudaVision, LayerNormMatchesCpu) {
  for (DType t : {DType::f32, DType::bf16}) {
    // The tower's combinations: an f32 residual stream x with dt weights and outputs; also x in dt.
    for (DType xt : {DType::f32, t}) {
      run_layernorm(7, 13, xt, t, 10);
      run_layernorm(0, 16, xt, t, 20);
      run_layernorm(130, 16, xt, t, 30);     // the golden's tower
      run_layernorm(1000, 1152, xt, t, 40);  // Qwen3.5's tower
      run_layernorm(3, 5000, xt, t, 50);     // wide rows (157 columns per lane)
    }
  }
}

// ---- GELU ----------------------------------------------------------------------------------

TEST_F(CudaVision, GeluMatchesCpu) {
  for (DType t : {DType::f32, DType::bf16})
    for (bool tanh_approx : {false, true})
      for (int64_t n : {int64_t(0), int64_t(1), int64_t(1001), int64_t(1) << 20}) {
        const std::string key = std::string("gelu ") + (tanh_approx ? "tanh " : "erf ") + nm(t);
        const std::string where = "n=" + std::to_string(n);
        DevTensor x = upload(dt_test::randn<float>(size_t(n), 60 + uint64_t(n), 3.0), t);
        DevTensor dy = upload(dt_test::randn<float>(size_t(n), 61 + uint64_t(n)), t);
        const auto x_d = to_double(x.host), dy_d = to_double(dy.host);
        DevTensor y = poisoned(size_t(n), t), dx = poisoned(size_t(n), t);
        dt::cuda::gelu_fwd(t, x.ptr, n, y.ptr, tanh_approx);
        dt::cuda::gelu_bwd(t, x.ptr, dy.ptr, n, dx.ptr, tanh_approx);
        std::vector<double> y_ref(static_cast<size_t>(n)), dx_ref(static_cast<size_t>(n));
        dt::cpu::gelu_fwd<double>(x_d.data(), n, y_ref.data(), tanh_approx);
        dt::cpu::gelu_bwd<double>(x_d.data(), dy_d.data(), n, dx_ref.data(), tanh_approx);
        check(download(y), y_ref, tol_for(t, false), key + " y", where);
        check(download(dx), dx_ref, tol_for(t, true), key + " dx", where);
        // In place (y = x, dx = dy), as the tower calls the backward.
        dt::cuda::gelu_bwd(t, x.ptr, dy.ptr, n, dy.ptr, tanh_approx);
        EXPECT_EQ(bytes_of(dy), bytes_of(dx)) << key << " in place differs " << where;
      }
}

// ---- bias ----------------------------------------------------------------------------------

TEST_F(CudaVision, BiasAddAndGradientMatchCpu) {
  const int64_t shapes[][2] = {{7, 13}, {0, 16}, {130, 48}, {4096, 1152}, {2, 3456}};
  for (DType t : {DType::f32, DType::bf16})
    for (const auto& s : shapes) {
      const int64_t N = s[0], O = s[1];
      const std::string where = shape(N, O);
      DevTensor b = upload(dt_test::randn<float>(size_t(O), 70), t);
      const auto b_d = to_double(b.host);
      for (DType yt : {DType::f32, t}) {  // the residual stream (f32) or an activation (dt)
        DevTensor y = upload(dt_test::randn<float>(size_t(N * O), 71), yt);
        std::vector<double> y_ref = to_double(y.host);
        dt::cuda::bias_add(yt, y.ptr, t, b.ptr, N, O);
        dt::cpu::bias_add<double>(y_ref.data(), b_d.data(), N, O);
        check(download(y), y_ref, tol_for(yt, false),
              std::string("bias_add y:") + nm(yt) + " b:" + nm(t), where);
      }
      DevTensor dy = upload(dt_test::randn<float>(size_t(N * O), 72), t);
      const auto db0 = dt_test::randn<float>(size_t(O), 73);
      DevTensor db = upload(db0, DType::f32), db2 = upload(db0, DType::f32);
      std::vector<double> db_ref = to_double(db0);
      dt::cuda::bias_bwd(t, dy.ptr, N, O, db.f32());
      dt::cpu::bias_bwd<double>(to_double(dy.host).data(), N, O, db_ref.data());
      check(download(db), db_ref, 1e-5, std::string("bias_bwd db(+=) ") + nm(t), where);
      dt::cuda::bias_bwd(t, dy.ptr, N, O, db2.f32());
      EXPECT_EQ(bytes_of(db), bytes_of(db2)) << "bias_bwd not repeatable " << where;
    }
}

// ---- position-embedding bag ----------------------------------------------------------------

void run_bag(int64_t N, int64_t G, int64_t D, DType t, uint64_t seed) {
  const int64_t B = 4, V = G * G;
  const std::string where =
      "N=" + std::to_string(N) + " V=" + std::to_string(V) + " D=" + std::to_string(D);
  // Bilinear-like taps: 4 rows near a random grid point, weights summing to 1.
  const auto u = dt_test::uniform<float>(size_t(2 * N), seed, 0.0, double(G - 1));
  std::vector<int32_t> idx(size_t(N * B));
  std::vector<float> wts(size_t(N * B));
  for (int64_t n = 0; n < N; ++n) {
    const int64_t r0 = int64_t(u[size_t(2 * n)]), c0 = int64_t(u[size_t(2 * n + 1)]);
    const int64_t r1 = std::min(r0 + 1, G - 1), c1 = std::min(c0 + 1, G - 1);
    const float dr = u[size_t(2 * n)] - float(r0), dc = u[size_t(2 * n + 1)] - float(c0);
    const int64_t taps[4] = {r0 * G + c0, r0 * G + c1, r1 * G + c0, r1 * G + c1};
    const float ws[4] = {(1 - dr) * (1 - dc), (1 - dr) * dc, dr * (1 - dc), dr * dc};
    for (int b = 0; b < 4; ++b) {
      idx[size_t(n * B + b)] = int32_t(taps[b]);
      wts[size_t(n * B + b)] = ws[b];
    }
  }
  DevTensor di = upload_i32(idx), dwt = upload(wts, DType::f32);
  DevTensor table = upload(dt_test::randn<float>(size_t(V * D), seed + 1), t);
  const auto w_d = to_double(wts), table_d = to_double(table.host);
  for (bool acc : {false, true}) {
    DevTensor x = acc ? upload(dt_test::randn<float>(size_t(N * D), seed + 2), DType::f32)
                      : poisoned(size_t(N * D), DType::f32);
    std::vector<double> x_ref = acc ? to_double(x.host) : std::vector<double>(size_t(N * D));
    dt::cuda::embedding_bag_fwd(t, i32(di), dwt.f32(), table.ptr, N, B, V, D, x.f32(), acc);
    dt::cpu::embedding_bag_fwd<double>(idx.data(), w_d.data(), table_d.data(), N, B, V, D,
                                       x_ref.data(), acc);
    check(download(x), x_ref, 1e-5,
          std::string("embedding_bag x") + (acc ? "(+=) table:" : " table:") + nm(t), where);
  }
  DevTensor dx = upload(dt_test::randn<float>(size_t(N * D), seed + 3), DType::f32);
  const auto dt0 = dt_test::randn<float>(size_t(V * D), seed + 4);
  DevTensor dtab = upload(dt0, DType::f32), dtab2 = upload(dt0, DType::f32);
  std::vector<double> dtab_ref = to_double(dt0);
  dt::cuda::embedding_bag_bwd(i32(di), dwt.f32(), dx.f32(), N, B, V, D, dtab.f32());
  dt::cpu::embedding_bag_bwd<double>(idx.data(), w_d.data(), to_double(dx.host).data(), N, B, V, D,
                                     dtab_ref.data());
  check(download(dtab), dtab_ref, 1e-5, "embedding_bag dtable(+=)", where);
  dt::cuda::embedding_bag_bwd(i32(di), dwt.f32(), dx.f32(), N, B, V, D, dtab2.f32());
  EXPECT_EQ(bytes_of(dtab), bytes_of(dtab2)) << "embedding_bag_bwd not repeatable " << where;
}

TEST_F(CudaVision, EmbeddingBagMatchesCpu) {
  for (DType t : {DType::f32, DType::bf16}) {
    run_bag(7, 4, 13, t, 80);
    run_bag(0, 4, 16, t, 81);
    run_bag(40, 4, 16, t, 82);       // the golden's 4 x 4 grid
    run_bag(2000, 2, 130, t, 83);    // 4 table rows: runs of ~2000 entries (block path)
    run_bag(4096, 48, 1152, t, 84);  // Qwen3.5: 48 x 48 grid, D = 1152
  }
}

// ---- 2-D RoPE ------------------------------------------------------------------------------

TEST_F(CudaVision, RopeVisionMatchesCpu) {
  const int64_t shapes[][3] = {{7, 3, 12}, {0, 2, 8}, {130, 2, 8}, {1000, 16, 72}, {5, 1, 256}};
  for (DType t : {DType::f32, DType::bf16})
    for (const auto& s : shapes) {
      const int64_t N = s[0], H = s[1], K = s[2];
      const std::string where =
          "N=" + std::to_string(N) + " H=" + std::to_string(H) + " K=" + std::to_string(K);
      std::vector<int32_t> pos(size_t(2 * N));
      for (int64_t n = 0; n < N; ++n) {
        pos[size_t(n)] = int32_t((n * 7) % 97);        // rows up to 96
        pos[size_t(N + n)] = int32_t((n * 13) % 101);  // columns up to 100
      }
      DevTensor dp = upload_i32(pos);
      for (int sign : {+1, -1}) {
        DevTensor x = upload(dt_test::randn<float>(size_t(N * H * K), 90 + uint64_t(K)), t);
        std::vector<double> ref = to_double(x.host);
        dt::cuda::rope_vision(t, x.ptr, i32(dp), N, H, K, 10000.0, sign);
        dt::cpu::rope_vision<double>(ref.data(), pos.data(), N, H, K, 10000.0, sign);
        check(download(x), ref, tol_for(t, sign < 0),
              std::string("rope_vision ") + (sign > 0 ? "fwd " : "bwd ") + nm(t), where);
      }
    }
}

// ---- row moves -----------------------------------------------------------------------------

TEST_F(CudaVision, GatherScatterRowsCopyExactly) {
  for (DType t : {DType::f32, DType::bf16}) {
    const int64_t R = 300, M = 77, D = 1152;
    std::vector<int32_t> idx(static_cast<size_t>(M));
    for (int64_t m = 0; m < M; ++m) idx[size_t(m)] = int32_t((m * 37 + 5) % R);  // distinct
    DevTensor di = upload_i32(idx);
    DevTensor src = upload(dt_test::randn<float>(size_t(R * D), 100), t);
    DevTensor got = poisoned(size_t(M * D), t);
    dt::cuda::gather_rows(t, src.ptr, i32(di), R, M, D, got.ptr);
    std::vector<float> want(size_t(M * D));
    for (int64_t m = 0; m < M; ++m)
      for (int64_t d = 0; d < D; ++d)
        want[size_t(m * D + d)] = src.host[size_t(idx[size_t(m)] * D + d)];
    EXPECT_EQ(download(got), want) << "gather_rows " << nm(t);

    DevTensor dst = upload(dt_test::randn<float>(size_t(R * D), 101), t);
    std::vector<float> want2 = dst.host;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t d = 0; d < D; ++d)
        want2[size_t(idx[size_t(m)] * D + d)] = want[size_t(m * D + d)];
    dt::cuda::scatter_rows(t, got.ptr, i32(di), R, M, D, dst.ptr);
    EXPECT_EQ(download(dst), want2) << "scatter_rows " << nm(t);
  }
}

}  // namespace
