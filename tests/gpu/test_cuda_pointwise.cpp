// GPU parity of the CUDA elementwise ops (SwiGLU, sigmoid gate, GDN gates, RoPE) vs cpu::*, and
// exact checks of the plain helpers (cast, add_inplace, copy_cols, fill, col_sum_add).
//
// Reference: cpu::<op><double> on the values the device sees (bf16-rounded in bf16 mode).
// Outputs are NaN-poisoned so unwritten elements fail; parameter gradients start from random
// values. Bounds (relative RMS): outputs stored in bf16: forward 5e-3, backward 1e-2; outputs
// stored in fp32 (GDN beta/g, dA_log, ddt_bias, everything in f32 mode): 1e-5. Helpers are exact
// (cast rounds to nearest even, as the host reference does). RoPE runs the real Qwen3.5 setting
// (head_dim 256, R = 64, theta 1e7, mrope_section {11, 11, 10}) on a pack whose positions restart
// per segment (lengths {1, 3, 63, 64, 65, 130, 4096}), distinct T/H/W rows, positions up to
// 262143, and a small odd setting. Also bitwise determinism and aliasing.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"
#include "cpu/activation.h"
#include "cpu/gdn_gates.h"
#include "cpu/rope.h"
#include "cuda/device.h"
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
using dt_test::from_bf16;
using dt_test::poisoned;
using dt_test::to_bf16;
using dt_test::to_double;
using dt_test::tol_for;
using dt_test::upload;

[[maybe_unused]] auto* const kPrintWorst =
    ::testing::AddGlobalTestEnvironment(new dt_test::PrintWorst);

std::string nstr(int64_t n, size_t off) {
  return "n=" + std::to_string(n) + (off ? " off=" + std::to_string(off) : "");
}

class CudaPointwise : public ::testing::Test {
 protected:
  void SetUp() override { dt::cuda::require_hopper(); }
};

// ---- activations ---------------------------------------------------------------------------

void run_swiglu(int64_t n, DType t, size_t off, uint64_t seed) {
  const std::string mode = dt::cuda::dtype_name(t), where = nstr(n, off);
  auto gate_h = dt_test::randn<float>(size_t(n), seed, 3.0);
  if (n > 2) gate_h[0] = 100.0f, gate_h[1] = -100.0f;  // saturated sigmoid, no NaN
  DevTensor gate = upload(gate_h, t, off);
  DevTensor up = upload(dt_test::randn<float>(size_t(n), seed + 1), t, off);
  DevTensor dh = upload(dt_test::randn<float>(size_t(n), seed + 2), t, off);
  const auto g_d = to_double(gate.host), u_d = to_double(up.host), dh_d = to_double(dh.host);

  DevTensor h = poisoned(size_t(n), t, off);
  dt::cuda::swiglu_fwd(t, gate.ptr, up.ptr, n, h.ptr);
  std::vector<double> h_ref(static_cast<size_t>(n));
  dt::cpu::swiglu_fwd<double>(g_d.data(), u_d.data(), n, h_ref.data());
  check(download(h), h_ref, tol_for(t, false), "swiglu h " + mode, where);

  DevTensor dgate = poisoned(size_t(n), t, off), dup = poisoned(size_t(n), t, off);
  dt::cuda::swiglu_bwd(t, gate.ptr, up.ptr, dh.ptr, n, dgate.ptr, dup.ptr);
  std::vector<double> dgate_ref(static_cast<size_t>(n)), dup_ref(static_cast<size_t>(n));
  dt::cpu::swiglu_bwd<double>(g_d.data(), u_d.data(), dh_d.data(), n, dgate_ref.data(),
                              dup_ref.data());
  check(download(dgate), dgate_ref, tol_for(t, true), "swiglu dgate " + mode, where);
  check(download(dup), dup_ref, tol_for(t, true), "swiglu dup " + mode, where);

  // dh may alias dgate: same bits as out of place; and repeat runs are bitwise equal
  DevTensor alias = upload(dh.host, t, off), dup2 = poisoned(size_t(n), t, off);
  dt::cuda::swiglu_bwd(t, gate.ptr, up.ptr, alias.ptr, n, alias.ptr, dup2.ptr);
  EXPECT_EQ(bytes_of(alias), bytes_of(dgate)) << "swiglu_bwd dh aliasing dgate differs " << where;
  EXPECT_EQ(bytes_of(dup2), bytes_of(dup)) << "swiglu_bwd not repeatable " << where;

  // With h (selective recomputation fused into the backward): the same gradients, and h bitwise
  // swiglu_fwd's
  DevTensor dgate3 = poisoned(size_t(n), t, off), dup3 = poisoned(size_t(n), t, off);
  DevTensor h3 = poisoned(size_t(n), t, off);
  dt::cuda::swiglu_bwd(t, gate.ptr, up.ptr, dh.ptr, n, dgate3.ptr, dup3.ptr, h3.ptr);
  EXPECT_EQ(bytes_of(dgate3), bytes_of(dgate)) << "swiglu_bwd with h: dgate differs " << where;
  EXPECT_EQ(bytes_of(dup3), bytes_of(dup)) << "swiglu_bwd with h: dup differs " << where;
  EXPECT_EQ(bytes_of(h3), bytes_of(h)) << "swiglu_bwd's h differs from swiglu_fwd's " << where;
}

void run_sigmoid_mul(int64_t n, DType t, size_t off, uint64_t seed) {
  const std::string mode = dt::cuda::dtype_name(t), where = nstr(n, off);
  DevTensor a = upload(dt_test::randn<float>(size_t(n), seed), t, off);
  auto g_h = dt_test::randn<float>(size_t(n), seed + 1, 3.0);
  if (n > 2) g_h[0] = 100.0f, g_h[1] = -100.0f;
  DevTensor g = upload(g_h, t, off);
  DevTensor dout = upload(dt_test::randn<float>(size_t(n), seed + 2), t, off);
  const auto a_d = to_double(a.host), g_d = to_double(g.host), do_d = to_double(dout.host);

  DevTensor out = poisoned(size_t(n), t, off);
  dt::cuda::sigmoid_mul_fwd(t, a.ptr, g.ptr, n, out.ptr);
  std::vector<double> out_ref(static_cast<size_t>(n));
  dt::cpu::sigmoid_mul_fwd<double>(a_d.data(), g_d.data(), n, out_ref.data());
  check(download(out), out_ref, tol_for(t, false), "sigmoid_mul out " + mode, where);

  DevTensor da = poisoned(size_t(n), t, off), dg = poisoned(size_t(n), t, off);
  dt::cuda::sigmoid_mul_bwd(t, a.ptr, g.ptr, dout.ptr, n, da.ptr, dg.ptr);
  std::vector<double> da_ref(static_cast<size_t>(n)), dg_ref(static_cast<size_t>(n));
  dt::cpu::sigmoid_mul_bwd<double>(a_d.data(), g_d.data(), do_d.data(), n, da_ref.data(),
                                   dg_ref.data());
  check(download(da), da_ref, tol_for(t, true), "sigmoid_mul da " + mode, where);
  check(download(dg), dg_ref, tol_for(t, true), "sigmoid_mul dg " + mode, where);

  DevTensor alias = upload(dout.host, t, off), da2 = poisoned(size_t(n), t, off);
  dt::cuda::sigmoid_mul_bwd(t, a.ptr, g.ptr, alias.ptr, n, da2.ptr, alias.ptr);
  EXPECT_EQ(bytes_of(alias), bytes_of(dg)) << "sigmoid_mul_bwd dout aliasing dg differs " << where;
  EXPECT_EQ(bytes_of(da2), bytes_of(da)) << "sigmoid_mul_bwd not repeatable " << where;
}

// n: empty, tiny, odd (vector tail), a real FFN size; offsets force the scalar path.
// (small enough for compute-sanitizer, then real sizes)
using Sizes = std::vector<std::pair<int64_t, size_t>>;
const Sizes kSmallSizes = {{0, 0}, {1, 0}, {7, 0}, {13, 1}, {1003, 0}, {1003, 3}};
const Sizes kRealSizes = {{1000003, 0}, {1000003, 3}, {4096 * 6144, 0}};

// ---- GDN gates -----------------------------------------------------------------------------

void run_gates(int64_t N, int64_t G, DType t, uint64_t seed) {
  const std::string mode = dt::cuda::dtype_name(t);
  const std::string where = "N=" + std::to_string(N) + " G=" + std::to_string(G);
  DevTensor b = upload(dt_test::randn<float>(size_t(N * G), seed, 2.0), t);
  auto a_h = dt_test::randn<float>(size_t(N * G), seed + 1, 3.0);
  for (size_t i = 0; i < a_h.size(); i += 17) a_h[i] = 22.0f + float(i % 5);  // softplus > 20
  DevTensor a = upload(a_h, t);
  auto A_log_h = dt_test::uniform<float>(size_t(G), seed + 2, 0.0, 2.8);  // A in [1, 16]
  DevTensor A_log = upload(A_log_h, t);
  DevTensor dt_bias = upload(dt_test::randn<float>(size_t(G), seed + 3, 0.5), t);
  DevTensor dbeta = upload(dt_test::randn<float>(size_t(N * G), seed + 4), DType::f32);
  DevTensor dg = upload(dt_test::randn<float>(size_t(N * G), seed + 5), DType::f32);
  const auto b_d = to_double(b.host), a_d = to_double(a.host), Al_d = to_double(A_log.host);
  const auto bias_d = to_double(dt_bias.host), dbeta_d = to_double(dbeta.host);
  const auto dg_d = to_double(dg.host);

  DevTensor beta = poisoned(size_t(N * G), DType::f32), g = poisoned(size_t(N * G), DType::f32);
  dt::cuda::gdn_gates_fwd(t, b.ptr, a.ptr, A_log.ptr, dt_bias.ptr, N, G, beta.f32(), g.f32());
  std::vector<double> beta_ref(size_t(N * G)), g_ref(size_t(N * G));
  dt::cpu::gdn_gates_fwd<double>(b_d.data(), a_d.data(), Al_d.data(), bias_d.data(), N, G,
                                 beta_ref.data(), g_ref.data());
  check(download(beta), beta_ref, 1e-5, "gdn_gates beta(f32) " + mode, where);
  check(download(g), g_ref, 1e-5, "gdn_gates g(f32) " + mode, where);

  const auto dA0 = dt_test::randn<float>(size_t(G), seed + 6);
  const auto dbias0 = dt_test::randn<float>(size_t(G), seed + 7);
  DevTensor db = poisoned(size_t(N * G), t), da = poisoned(size_t(N * G), t);
  DevTensor dA = upload(dA0, DType::f32), dbias = upload(dbias0, DType::f32);
  dt::cuda::gdn_gates_bwd(t, b.ptr, a.ptr, A_log.ptr, dt_bias.ptr, dbeta.f32(), dg.f32(), N, G,
                          db.ptr, da.ptr, dA.f32(), dbias.f32());
  std::vector<double> db_ref(size_t(N * G)), da_ref(size_t(N * G));
  std::vector<double> dA_ref = to_double(dA0), dbias_ref = to_double(dbias0);
  dt::cpu::gdn_gates_bwd<double>(b_d.data(), a_d.data(), Al_d.data(), bias_d.data(), dbeta_d.data(),
                                 dg_d.data(), N, G, db_ref.data(), da_ref.data(), dA_ref.data(),
                                 dbias_ref.data());
  check(download(db), db_ref, tol_for(t, true), "gdn_gates db " + mode, where);
  check(download(da), da_ref, tol_for(t, true), "gdn_gates da " + mode, where);
  check(download(dA), dA_ref, 1e-5, "gdn_gates dA_log(+=) " + mode, where);
  check(download(dbias), dbias_ref, 1e-5, "gdn_gates ddt_bias(+=) " + mode, where);

  DevTensor db2 = poisoned(size_t(N * G), t), da2 = poisoned(size_t(N * G), t);
  DevTensor dA2 = upload(dA0, DType::f32), dbias2 = upload(dbias0, DType::f32);
  dt::cuda::gdn_gates_bwd(t, b.ptr, a.ptr, A_log.ptr, dt_bias.ptr, dbeta.f32(), dg.f32(), N, G,
                          db2.ptr, da2.ptr, dA2.f32(), dbias2.f32());
  EXPECT_EQ(bytes_of(db), bytes_of(db2)) << "gdn_gates db not repeatable " << where;
  EXPECT_EQ(bytes_of(da), bytes_of(da2)) << "gdn_gates da not repeatable " << where;
  EXPECT_EQ(bytes_of(dA), bytes_of(dA2)) << "gdn_gates dA_log not repeatable " << where;
  EXPECT_EQ(bytes_of(dbias), bytes_of(dbias2)) << "gdn_gates ddt_bias not repeatable " << where;
}

// ---- RoPE ----------------------------------------------------------------------------------

struct RopeCase {
  int64_t H, K, R;
  double theta;
  int sec[3];
};

// Positions [3, N]: restart at 0 in every segment; T/H/W rows differ inside the segment given by
// `vision` (an image-like grid); `far` adds an offset so positions reach 262143.
std::vector<int32_t> pack_positions(const std::vector<int64_t>& lens, bool vision, bool far) {
  int64_t N = 0;
  for (auto l : lens) N += l;
  std::vector<int32_t> pos(size_t(3 * N));
  int64_t n = 0;
  for (size_t s = 0; s < lens.size(); ++s) {
    for (int64_t i = 0; i < lens[s]; ++i, ++n) {
      int32_t p = int32_t(i), ph = p, pw = p;
      if (vision && s == 3) ph = int32_t(i / 8), pw = int32_t(i % 8);  // 8-wide grid
      if (far && s + 1 == lens.size()) p += 262144 - int32_t(lens[s]), ph = p, pw = p;
      pos[size_t(n)] = p;
      pos[size_t(N + n)] = ph;
      pos[size_t(2 * N + n)] = pw;
    }
  }
  return pos;
}

void run_rope(const RopeCase& c, const std::vector<int32_t>& pos_h, int64_t N, DType t, size_t off,
              uint64_t seed) {
  const std::string mode = dt::cuda::dtype_name(t);
  const std::string where = "N=" + std::to_string(N) + " H=" + std::to_string(c.H) +
                            " K=" + std::to_string(c.K) + " R=" + std::to_string(c.R) +
                            (off ? " off=" + std::to_string(off) : "");
  dt::cuda::DeviceBuffer pos(std::max<size_t>(pos_h.size(), 1) * 4, "positions");
  if (!pos_h.empty())
    DT_CUDA_CHECK(cudaMemcpy(pos.get(), pos_h.data(), pos_h.size() * 4, cudaMemcpyHostToDevice));
  const auto* pos_d = static_cast<const int32_t*>(pos.get());
  const size_t n = size_t(N * c.H * c.K);
  DevTensor x = upload(dt_test::randn<float>(n, seed), t, off);
  const std::vector<float> x0 = x.host;

  dt::cuda::rope_fwd(t, x.ptr, pos_d, N, c.H, c.K, c.R, c.theta, c.sec);
  std::vector<double> ref = to_double(x0);
  dt::cpu::rope_fwd<double>(ref.data(), pos_h.data(), N, c.H, c.K, c.R, c.theta, c.sec);
  const auto y = download(x);
  check(y, ref, tol_for(t, false), "rope fwd " + mode, where);
  // dims [R, K) of every head pass through bitwise
  size_t changed = 0;
  for (size_t r = 0; r < size_t(N * c.H); ++r)
    for (int64_t k = c.R; k < c.K; ++k) changed += y[r * c.K + k] != x0[r * c.K + k];
  EXPECT_EQ(changed, 0u) << "rope fwd changed non-rotary dims " << where;

  // backward: in place on a random gradient
  DevTensor dx = upload(dt_test::randn<float>(n, seed + 1), t, off);
  std::vector<double> dref = to_double(dx.host);
  dt::cuda::rope_bwd(t, dx.ptr, pos_d, N, c.H, c.K, c.R, c.theta, c.sec);
  dt::cpu::rope_bwd<double>(dref.data(), pos_h.data(), N, c.H, c.K, c.R, c.theta, c.sec);
  const auto dxv = download(dx);
  check(dxv, dref, tol_for(t, true), "rope bwd " + mode, where);

  // determinism
  DevTensor dx2 = upload(dx.host, t, off);
  dt::cuda::rope_bwd(t, dx2.ptr, pos_d, N, c.H, c.K, c.R, c.theta, c.sec);
  EXPECT_EQ(download(dx2), dxv) << "rope_bwd not repeatable " << where;
}

}  // namespace

TEST_F(CudaPointwise, ActivationsSmall) {
  uint64_t seed = 50;
  for (DType t : {DType::f32, DType::bf16})
    for (auto [n, off] : kSmallSizes) {
      run_swiglu(n, t, off, seed += 10);
      run_sigmoid_mul(n, t, off, seed += 10);
    }
}

TEST_F(CudaPointwise, Swiglu) {
  uint64_t seed = 100;
  for (DType t : {DType::f32, DType::bf16})
    for (auto [n, off] : kRealSizes) run_swiglu(n, t, off, seed += 10);
}

TEST_F(CudaPointwise, SigmoidMul) {
  uint64_t seed = 200;
  for (DType t : {DType::f32, DType::bf16})
    for (auto [n, off] : kRealSizes) run_sigmoid_mul(n, t, off, seed += 10);
}

TEST_F(CudaPointwise, GdnGatesSmall) {
  uint64_t seed = 250;
  for (DType t : {DType::f32, DType::bf16}) {
    run_gates(7, 5, t, seed += 10);
    run_gates(1, 3, t, seed += 10);
    run_gates(0, 4, t, seed += 10);
    run_gates(1000, 48, t, seed += 10);
  }
}

TEST_F(CudaPointwise, GdnGates) {
  uint64_t seed = 300;
  for (DType t : {DType::f32, DType::bf16}) {
    run_gates(8192, 16, t, seed += 10);
    run_gates(8192, 32, t, seed += 10);
    run_gates(100003, 64, t, seed += 10);
  }
}

TEST_F(CudaPointwise, RopeQwen35) {
  const RopeCase q{16, 256, 64, 1e7, {11, 11, 10}}, k{2, 256, 64, 1e7, {11, 11, 10}};
  const std::vector<int64_t> lens = {1, 3, 63, 64, 65, 130, 4096, 0, 700};
  int64_t N = 0;
  for (auto l : lens) N += l;
  const auto pos = pack_positions(lens, true, true);
  uint64_t seed = 400;
  for (DType t : {DType::f32, DType::bf16}) {
    run_rope(q, pos, N, t, 0, seed += 10);
    run_rope(k, pos, N, t, 0, seed += 10);
    run_rope(k, pos, N, t, 1, seed += 10);  // misaligned: scalar path
  }
}

TEST_F(CudaPointwise, RopeSmallOdd) {
  const RopeCase a{3, 10, 6, 10000.0, {1, 1, 1}}, b{5, 13, 8, 1e6, {2, 1, 0}};
  const RopeCase full{1, 8, 8, 500.0, {0, 0, 0}}, none{2, 7, 0, 1e4, {1, 1, 1}};
  const std::vector<int64_t> lens = {1, 3, 2, 1};
  const auto pos = pack_positions(lens, true, false);
  uint64_t seed = 500;
  for (DType t : {DType::f32, DType::bf16}) {
    for (const RopeCase* c : {&a, &b, &full, &none}) run_rope(*c, pos, 7, t, 0, seed += 10);
    run_rope(a, {}, 0, t, 0, seed += 10);  // N = 0
  }
}

TEST_F(CudaPointwise, RopeFwdThenBwdIsIdentity) {
  const RopeCase q{16, 256, 64, 1e7, {11, 11, 10}};
  const auto pos = pack_positions({4096, 1000}, false, true);
  const int64_t N = 5096;
  dt::cuda::DeviceBuffer pos_d(pos.size() * 4, "positions");
  DT_CUDA_CHECK(cudaMemcpy(pos_d.get(), pos.data(), pos.size() * 4, cudaMemcpyHostToDevice));
  DevTensor x = upload(dt_test::randn<float>(size_t(N * q.H * q.K), 600), DType::f32);
  dt::cuda::rope_fwd(DType::f32, x.ptr, static_cast<const int32_t*>(pos_d.get()), N, q.H, q.K, q.R,
                     q.theta, q.sec);
  dt::cuda::rope_bwd(DType::f32, x.ptr, static_cast<const int32_t*>(pos_d.get()), N, q.H, q.K, q.R,
                     q.theta, q.sec);
  check(download(x), to_double(x.host), 1e-6, "rope bwd(fwd(x)) f32", "N=5096 H=16");
}

// ---- plain helpers (exact) -----------------------------------------------------------------

namespace {

void check_cast(const Sizes& sizes) {
  for (auto [n, off] : sizes) {
    auto v = dt_test::randn<float>(size_t(n), 700 + n, 10.0);
    // ties: 1 + 2^-8 -> 1 (even), 1 + 3 * 2^-8 -> 1 + 2^-6; bf16 max-ish and tiny values
    const float special[] = {
        1.0f + 1.0f / 256, 1.0f + 3.0f / 256, -1.0f - 1.0f / 256, 3.0e38f, 1.0e-30f, 0.0f, -0.0f};
    for (size_t i = 0; i < std::size(special) && i < v.size(); ++i) v[i] = special[i];
    DevTensor src = upload(v, DType::f32, off);
    DevTensor dst = poisoned(size_t(n), DType::bf16, off);
    dt::cuda::cast(DType::f32, src.ptr, DType::bf16, dst.ptr, n);
    const auto b = bytes_of(dst);
    size_t wrong = 0;
    for (size_t i = 0; i < size_t(n); ++i) {
      uint16_t h;
      std::memcpy(&h, b.data() + 2 * i, 2);
      wrong += h != to_bf16(v[i]);
    }
    EXPECT_EQ(wrong, 0u) << "cast f32->bf16 " << nstr(n, off);
    // bf16 -> f32 is exact; same-type casts copy
    DevTensor back = poisoned(size_t(n), DType::f32, off);
    dt::cuda::cast(DType::bf16, dst.ptr, DType::f32, back.ptr, n);
    std::vector<float> want(static_cast<size_t>(n));
    for (size_t i = 0; i < size_t(n); ++i) want[i] = from_bf16(to_bf16(v[i]));
    EXPECT_EQ(download(back), want) << "cast bf16->f32 " << nstr(n, off);
    DevTensor copy = poisoned(size_t(n), DType::bf16, off + 1);
    dt::cuda::cast(DType::bf16, dst.ptr, DType::bf16, copy.ptr, n);
    EXPECT_EQ(bytes_of(copy), b) << "cast bf16->bf16 " << nstr(n, off);
    DevTensor copy32 = poisoned(size_t(n), DType::f32, off);
    dt::cuda::cast(DType::f32, src.ptr, DType::f32, copy32.ptr, n);
    EXPECT_EQ(bytes_of(copy32), bytes_of(src)) << "cast f32->f32 " << nstr(n, off);
  }
}

void check_add(const Sizes& sizes) {
  for (auto [n, off] : sizes) {
    const auto y0 = dt_test::randn<float>(size_t(n), 800 + n);
    const auto x0 = dt_test::randn<float>(size_t(n), 900 + n);
    DevTensor y = upload(y0, DType::f32, off), x = upload(x0, DType::f32, off);
    dt::cuda::add_inplace(y.f32(), x.f32(), n);
    std::vector<float> want(static_cast<size_t>(n));
    for (size_t i = 0; i < size_t(n); ++i) want[i] = y0[i] + x0[i];
    EXPECT_EQ(download(y), want) << "add_inplace " << nstr(n, off);

    DevTensor y2 = upload(y0, DType::f32, off), xb = upload(x0, DType::bf16, off ? off + 1 : 0);
    dt::cuda::add_inplace_dt(y2.f32(), DType::bf16, xb.ptr, n);
    for (size_t i = 0; i < size_t(n); ++i) want[i] = y0[i] + xb.host[i];
    EXPECT_EQ(download(y2), want) << "add_inplace_dt bf16 " << nstr(n, off);
  }
}

void check_copy_cols() {
  struct C {
    int64_t rows, src_ld, src_col0, dst_ld, dst_col0, cols;
    DType t;
  };
  const C cases[] = {
      {100, 4096, 2048, 2048, 0, 2048, DType::bf16},  // split the second half of q_proj rows
      {100, 2048, 0, 4096, 2048, 2048, DType::bf16},  // and put it back
      {7, 13, 3, 7, 1, 5, DType::bf16},               // odd: scalar
      {7, 13, 3, 7, 1, 5, DType::f32},
      {33, 12, 4, 20, 8, 4, DType::bf16},      // 8-byte aligned: V = 4
      {70000, 64, 32, 16, 0, 16, DType::f32},  // many narrow rows
      {0, 8, 0, 8, 0, 8, DType::f32},
  };
  for (const C& c : cases) {
    const std::string where = "rows=" + std::to_string(c.rows) + " cols=" + std::to_string(c.cols) +
                              " " + dt::cuda::dtype_name(c.t);
    DevTensor src = upload(dt_test::randn<float>(size_t(c.rows * c.src_ld), 1000), c.t);
    DevTensor dst = upload(dt_test::randn<float>(size_t(c.rows * c.dst_ld), 1001), c.t);
    std::vector<float> want = dst.host;
    for (int64_t r = 0; r < c.rows; ++r)
      for (int64_t k = 0; k < c.cols; ++k)
        want[size_t(r * c.dst_ld + c.dst_col0 + k)] =
            src.host[size_t(r * c.src_ld + c.src_col0 + k)];
    dt::cuda::copy_cols(c.t, src.ptr, c.src_ld, c.src_col0, dst.ptr, c.dst_ld, c.dst_col0, c.rows,
                        c.cols);
    EXPECT_EQ(download(dst), want) << "copy_cols " << where;
  }
}

void check_fill(const Sizes& sizes) {
  for (DType t : {DType::f32, DType::bf16})
    for (auto [n, off] : sizes) {
      DevTensor x = poisoned(size_t(n), t, off);
      dt::cuda::fill(t, x.ptr, -1.25f, n);
      EXPECT_EQ(download(x), std::vector<float>(size_t(n), -1.25f)) << "fill " << nstr(n, off);
    }
}

void check_col_sum_add() {
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {17, 5}, {512, 2048}, {1000, 77}}) {
    const auto x = dt_test::randn<float>(size_t(rows * cols), 1100);
    const auto y0 = dt_test::randn<float>(size_t(cols), 1101);
    DevTensor xd = upload(x, DType::f32), y = upload(y0, DType::f32);
    dt::cuda::col_sum_add(xd.f32(), rows, cols, y.f32());
    std::vector<double> want = to_double(y0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) want[size_t(c)] += x[size_t(r * cols + c)];
    check(download(y), want, 1e-6, "col_sum_add f32",
          "rows=" + std::to_string(rows) + " cols=" + std::to_string(cols));
  }
}

}  // namespace

TEST_F(CudaPointwise, HelpersSmall) {
  check_cast(kSmallSizes);
  check_add(kSmallSizes);
  check_fill(kSmallSizes);
  check_copy_cols();
  check_col_sum_add();
}

TEST_F(CudaPointwise, Helpers) {
  check_cast(kRealSizes);
  check_add(kRealSizes);
  check_fill(kRealSizes);
}

// Achieved bandwidth at real sizes (information only: printed, not asserted).
TEST_F(CudaPointwise, Bandwidth) {
  auto time_ms = [](auto&& f) { return dt_test::gpu_time_ms(f, 3, 20); };
  auto report = [](const char* what, double ms, double bytes) {
    std::printf("  %-52s %8.1f us %7.0f GB/s\n", what, ms * 1e3, bytes / (ms * 1e-3) / 1e9);
  };
  const DType bf = DType::bf16, f32 = DType::f32;
  const int64_t n = 8192 * 6144;  // one pack's FFN activations (2B dense)
  DevTensor g = upload(dt_test::randn<float>(size_t(n), 1), bf);
  DevTensor u = upload(dt_test::randn<float>(size_t(n), 2), bf);
  DevTensor h = poisoned(size_t(n), bf), h2 = poisoned(size_t(n), bf);
  DevTensor y32 = upload(std::vector<float>(size_t(n), 0.0f), f32);
  report("swiglu_fwd bf16, 8192 x 6144",
         time_ms([&] { dt::cuda::swiglu_fwd(bf, g.ptr, u.ptr, n, h.ptr); }), 6.0 * n);
  report("swiglu_bwd bf16 (dh = dgate), 8192 x 6144",
         time_ms([&] { dt::cuda::swiglu_bwd(bf, g.ptr, u.ptr, h.ptr, n, h.ptr, h2.ptr); }),
         10.0 * n);
  report("sigmoid_mul_fwd bf16, 8192 x 6144",
         time_ms([&] { dt::cuda::sigmoid_mul_fwd(bf, g.ptr, u.ptr, n, h.ptr); }), 6.0 * n);
  report("cast f32 -> bf16, 8192 x 6144",
         time_ms([&] { dt::cuda::cast(f32, y32.ptr, bf, h.ptr, n); }), 6.0 * n);
  report("add_inplace_dt f32 += bf16, 8192 x 6144",
         time_ms([&] { dt::cuda::add_inplace_dt(y32.f32(), bf, g.ptr, n); }), 10.0 * n);
  report("fill bf16, 8192 x 6144", time_ms([&] { dt::cuda::fill(bf, h.ptr, 0.0f, n); }), 2.0 * n);
  report("copy_cols bf16 8192 x [2048 of 6144]",
         time_ms([&] { dt::cuda::copy_cols(bf, g.ptr, 6144, 2048, h.ptr, 2048, 0, 8192, 2048); }),
         2.0 * 2 * 8192 * 2048);
  {
    const int64_t N = 8192, H = 16, K = 256, R = 64;
    const int sec[3] = {11, 11, 10};
    const auto pos = pack_positions({8192}, false, false);
    dt::cuda::DeviceBuffer pos_d(pos.size() * 4, "positions");
    DT_CUDA_CHECK(cudaMemcpy(pos_d.get(), pos.data(), pos.size() * 4, cudaMemcpyHostToDevice));
    report("rope_fwd bf16 q, 8192 x 16 x 256 (R 64: bytes of the rotary dims)", time_ms([&] {
             dt::cuda::rope_fwd(bf, g.ptr, static_cast<const int32_t*>(pos_d.get()), N, H, K, R,
                                1e7, sec);
           }),
           2.0 * 2 * N * H * R);
  }
  {
    const int64_t N = 8192, G = 32;
    DevTensor dA = upload(std::vector<float>(G, 0.0f), f32),
              db = upload(std::vector<float>(G, 0.0f), f32);
    report("gdn_gates_bwd bf16, 8192 x 32", time_ms([&] {
             dt::cuda::gdn_gates_bwd(bf, g.ptr, u.ptr, g.ptr, u.ptr, y32.f32(), y32.f32(), N, G,
                                     h.ptr, h2.ptr, dA.f32(), db.f32());
           }),
           double(N * G) * (2 + 2 + 4 + 4 + 2 + 2));
  }
}
