// GPU parity of the CUDA varlen GQA attention (cuda::attention_*), causal and bidirectional (the
// vision tower's), against the CPU reference (label gpu), plus determinism and timings on the
// Qwen3.5 shape.
//
// Reference: cpu::attention_* in double on the bf16-rounded inputs (both storage types get the
// same bf16-representable values, so one reference serves both); the backward reference uses
// the reference's own o and lse, so the check covers fwd + bwd end to end. Outputs are poisoned
// with NaN before each call, so unwritten elements fail. Tolerances (relative RMS): f32 mode
// 1e-5 for everything; bf16 o 5e-3, lse 1e-4 (fp32 from exact bf16 products), dq/dk/dv 1e-2.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "bf16_util.h"
#include "core/error.h"
#include "core/segments.h"
#include "cpu/attention.h"
#include "cuda/attention.h"
#include "cuda/device.h"
#include "gpu_timer.h"
#include "test_util.h"

namespace dt = deltatron;
using dt::cuda::DType;

namespace {

// float -> bfloat16 bits, round to nearest even (inputs here are finite).
using dt_test::from_bf16;
using dt_test::to_bf16;

std::vector<float> round_bf16(std::vector<float> v) {
  for (auto& x : v) x = from_bf16(to_bf16(x));
  return v;
}

size_t esize(DType t) { return t == DType::bf16 ? 2 : 4; }

// A device tensor of n elements of type t, starting `offset` elements into its allocation (to
// exercise misaligned pointers), NaN-poisoned (0xFF bytes) unless filled.
struct DevTensor {
  dt::cuda::DeviceBuffer buf;
  void* ptr = nullptr;
  size_t n = 0;
  DType t = DType::f32;
};

DevTensor alloc(size_t n, DType t, size_t offset = 0) {
  DevTensor d;
  d.buf = dt::cuda::DeviceBuffer((n + offset) * esize(t), "test tensor");
  d.ptr = n + offset ? static_cast<char*>(d.buf.get()) + offset * esize(t) : nullptr;
  d.n = n;
  d.t = t;
  if (n + offset) DT_CUDA_CHECK(cudaMemset(d.buf.get(), 0xFF, (n + offset) * esize(t)));
  return d;
}

DevTensor upload(const std::vector<float>& v, DType t, size_t offset = 0) {
  DevTensor d = alloc(v.size(), t, offset);
  if (v.empty()) return d;
  if (t == DType::bf16) {
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = to_bf16(v[i]);
    DT_CUDA_CHECK(cudaMemcpy(d.ptr, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  } else {
    DT_CUDA_CHECK(cudaMemcpy(d.ptr, v.data(), v.size() * 4, cudaMemcpyHostToDevice));
  }
  return d;
}

std::vector<float> download(const DevTensor& d) {
  std::vector<float> out(d.n);
  DT_CUDA_CHECK(cudaDeviceSynchronize());
  if (d.n == 0) return out;
  if (d.t == DType::bf16) {
    std::vector<uint16_t> h(d.n);
    DT_CUDA_CHECK(cudaMemcpy(h.data(), d.ptr, d.n * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < d.n; ++i) out[i] = from_bf16(h[i]);
  } else {
    DT_CUDA_CHECK(cudaMemcpy(out.data(), d.ptr, d.n * 4, cudaMemcpyDeviceToHost));
  }
  return out;
}

std::vector<uint8_t> download_bytes(const DevTensor& d) {
  std::vector<uint8_t> out(d.n * esize(d.t));
  DT_CUDA_CHECK(cudaDeviceSynchronize());
  if (!out.empty())
    DT_CUDA_CHECK(cudaMemcpy(out.data(), d.ptr, out.size(), cudaMemcpyDeviceToHost));
  return out;
}

// Checks got against want: no NaN/inf, rel RMS <= tol; prints the measured error either way.
void check(const std::vector<float>& got, const std::vector<double>& want, double tol,
           const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0;
  for (float g : got) bad += !std::isfinite(g);
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " non-finite elements (unwritten or overflow)";
  auto r = dt_test::compare(got, want);
  EXPECT_LE(r.rel_rms, tol) << what << ": " << r.str();
  std::printf("  %-50s rel_rms=%.3e max_abs=%.3e (tol %.0e)\n", what.c_str(), r.rel_rms, r.max_abs,
              tol);
}

std::vector<int32_t> boundaries(const std::vector<int32_t>& lens) {
  std::vector<int32_t> cu(lens.size() + 1, 0);
  for (size_t s = 0; s < lens.size(); ++s) cu[s + 1] = cu[s] + lens[s];
  return cu;
}

// Inputs of one shape, bf16-rounded, with the double reference forward and backward.
struct Problem {
  std::vector<int32_t> cu;
  int nseg = 0;
  int64_t N = 0, H = 0, J = 0, K = 0;
  float scale = 0;
  bool causal = true;
  std::vector<float> q, k, v, dout;
  std::vector<double> o, lse, dq, dk, dv;
};

Problem make_problem(const std::vector<int32_t>& lens, int64_t H, int64_t J, int64_t K,
                     uint64_t seed, bool reference = true, bool causal = true) {
  Problem p;
  p.causal = causal;
  p.cu = boundaries(lens);
  p.nseg = int(lens.size());
  p.N = p.cu.back();
  p.H = H, p.J = J, p.K = K;
  p.scale = float(1.0 / std::sqrt(double(K)));
  p.q = round_bf16(dt_test::randn<float>(p.N * H * K, seed + 1, 1.5));
  p.k = round_bf16(dt_test::randn<float>(p.N * J * K, seed + 2, 1.5));
  p.v = round_bf16(dt_test::randn<float>(p.N * J * K, seed + 3));
  p.dout = round_bf16(dt_test::randn<float>(p.N * H * K, seed + 4));
  if (!reference) return p;
  std::vector<double> q(p.q.begin(), p.q.end()), k(p.k.begin(), p.k.end()),
      v(p.v.begin(), p.v.end()), dout(p.dout.begin(), p.dout.end());
  p.o.resize(p.N * H * K);
  p.lse.resize(p.N * H);
  p.dq.resize(p.N * H * K);
  p.dk.resize(p.N * J * K);
  p.dv.resize(p.N * J * K);
  const dt::core::Segments seg{p.cu.data(), p.nseg};
  dt::cpu::attention_fwd<double>(q.data(), k.data(), v.data(), seg, p.N, H, J, K, p.scale,
                                 p.o.data(), p.lse.data(), causal);
  dt::cpu::attention_bwd<double>(q.data(), k.data(), v.data(), p.o.data(), p.lse.data(),
                                 dout.data(), seg, p.N, H, J, K, p.scale, p.dq.data(), p.dk.data(),
                                 p.dv.data(), causal);
  return p;
}

// Device copies of a problem's inputs and outputs in storage type t.
struct DevProblem {
  DevTensor q, k, v, dout, cu, o, lse, dq, dk, dv;
};

DevProblem to_device(const Problem& p, DType t, size_t offset = 0) {
  DevProblem d;
  d.q = upload(p.q, t, offset);
  d.k = upload(p.k, t, offset);
  d.v = upload(p.v, t, offset);
  d.dout = upload(p.dout, t, offset);
  d.cu = alloc(p.cu.size(), DType::f32);  // int32: same size as f32
  DT_CUDA_CHECK(cudaMemcpy(d.cu.ptr, p.cu.data(), p.cu.size() * 4, cudaMemcpyHostToDevice));
  d.o = alloc(p.N * p.H * p.K, t, offset);
  d.lse = alloc(p.N * p.H, DType::f32);
  d.dq = alloc(p.N * p.H * p.K, t, offset);
  d.dk = alloc(p.N * p.J * p.K, t, offset);
  d.dv = alloc(p.N * p.J * p.K, t, offset);
  return d;
}

void run_fwd(const Problem& p, DevProblem& d, DType t) {
  dt::cuda::attention_fwd(t, d.q.ptr, d.k.ptr, d.v.ptr, static_cast<const int32_t*>(d.cu.ptr),
                          p.cu.data(), p.nseg, p.N, p.H, p.J, p.K, p.scale, d.o.ptr,
                          static_cast<float*>(d.lse.ptr), p.causal);
}
void run_bwd(const Problem& p, DevProblem& d, DType t) {
  dt::cuda::attention_bwd(t, d.q.ptr, d.k.ptr, d.v.ptr, d.o.ptr,
                          static_cast<const float*>(d.lse.ptr), d.dout.ptr,
                          static_cast<const int32_t*>(d.cu.ptr), p.cu.data(), p.nseg, p.N, p.H, p.J,
                          p.K, p.scale, d.dq.ptr, d.dk.ptr, d.dv.ptr, p.causal);
}

std::string name(const Problem& p, DType t, size_t offset) {
  std::string s = std::string(t == DType::bf16 ? "bf16" : "f32 ") + " N=" + std::to_string(p.N) +
                  " segs=" + std::to_string(p.nseg) + " H=" + std::to_string(p.H) +
                  " J=" + std::to_string(p.J) + " K=" + std::to_string(p.K) +
                  (p.causal ? "" : " bidirectional");
  return offset ? s + " off=" + std::to_string(offset) : s;
}

void check_case(const Problem& p, DType t, size_t offset = 0) {
  const bool bf = t == DType::bf16;
  const std::string nm = name(p, t, offset);
  std::printf("%s\n", nm.c_str());
  DevProblem d = to_device(p, t, offset);
  run_fwd(p, d, t);
  check(download(d.o), p.o, bf ? 5e-3 : 1e-5, nm + " o");
  check(download(d.lse), p.lse, bf ? 1e-4 : 1e-5, nm + " lse");
  run_bwd(p, d, t);
  check(download(d.dq), p.dq, bf ? 1e-2 : 1e-5, nm + " dq");
  check(download(d.dk), p.dk, bf ? 1e-2 : 1e-5, nm + " dk");
  check(download(d.dv), p.dv, bf ? 1e-2 : 1e-5, nm + " dv");
}

void check_both(const Problem& p) {
  check_case(p, DType::bf16);
  check_case(p, DType::f32);
}

// The mixed pack of the op-parity rules: every boundary case around the 64-row tiles, an empty
// segment, and one long segment.
const std::vector<int32_t> kMixed = {1, 3, 63, 64, 65, 130, 0, 4096};
const std::vector<int32_t> kMixedShort = {1, 3, 63, 64, 65, 130, 0, 200};
// A Qwen3.5 training pack: 8192 tokens in 12 segments of 100..2048.
const std::vector<int32_t> kReal = {2048, 1531, 1024, 900, 700, 600, 500, 300, 200, 150, 139, 100};

class CudaAttention : public ::testing::Test {
 protected:
  void SetUp() override { dt::cuda::require_hopper(); }
};

}  // namespace

// Small shapes (also the compute-sanitizer cases): both load paths (K % 8 == 0 aligned: 16-byte
// cp.async; odd K or misaligned pointers: scalar), every padded head dim, GQA and H = J.
TEST_F(CudaAttention, SmallPacksMatchCpu) {
  check_both(make_problem(kMixedShort, 4, 2, 24, 100));       // Kp 64, vec
  check_both(make_problem(kMixedShort, 3, 3, 72, 110));       // Kp 128, vec, H = J
  check_both(make_problem(kMixedShort, 4, 1, 13, 120));       // Kp 64, scalar, H = 4J
  check_both(make_problem({1, 5, 70, 0, 17}, 2, 1, 1, 130));  // K = 1
  check_both(make_problem(kMixedShort, 4, 2, 130, 140));      // Kp 256, scalar
  const Problem p = make_problem(kMixedShort, 4, 2, 256, 150);
  check_both(p);                  // Kp 256, vec
  check_case(p, DType::bf16, 1);  // misaligned pointers: scalar path
  check_case(p, DType::f32, 1);
}

TEST_F(CudaAttention, MixedPackWithLongSegmentMatchesCpu) {
  check_both(make_problem(kMixed, 8, 2, 256, 200));  // H = 4J, head dim of Qwen3.5
  check_both(make_problem(kMixed, 4, 2, 24, 210));
  check_both(make_problem(kMixed, 3, 3, 72, 220));  // H = J
}

// Bidirectional (causal = false, the vision tower: every key of the image): the vision head dims
// (8 and 16 of the golden's tiny tower, 72 = 1152 / 16 of Qwen3.5's, 80), odd K on the scalar
// path, every boundary around the 64-row tiles, an empty segment, a long segment (all key tiles
// for every query tile), GQA (not used by the tower, but the same kernels), a misaligned pointer.
TEST_F(CudaAttention, BidirectionalMatchesCpu) {
  const std::vector<int32_t> vis = {4, 0, 7, 1, 63, 64, 65, 130, 200};
  for (int64_t K : {8, 16, 72, 80})
    check_both(make_problem(vis, 2, 2, K, 800 + uint64_t(K), true, false));
  check_both(make_problem(vis, 3, 3, 13, 830, true, false));                // scalar path
  check_both(make_problem({1024, 16, 256}, 16, 16, 72, 840, true, false));  // Qwen3.5 tower
  check_both(make_problem(vis, 4, 2, 24, 850, true, false));                // GQA
  check_both(make_problem({2048, 64}, 4, 1, 128, 855, true, false));  // dK/dV in 4 head splits
  const Problem p = make_problem(vis, 2, 2, 72, 860, true, false);
  check_case(p, DType::bf16, 1);  // misaligned pointers: scalar path
  check_case(p, DType::f32, 1);
  // Bitwise repeatable.
  for (DType t : {DType::bf16, DType::f32}) {
    DevProblem a = to_device(p, t), b = to_device(p, t);
    run_fwd(p, a, t);
    run_bwd(p, a, t);
    run_fwd(p, b, t);
    run_bwd(p, b, t);
    EXPECT_EQ(download_bytes(a.o), download_bytes(b.o)) << "o " << dt::cuda::dtype_name(t);
    EXPECT_EQ(download_bytes(a.dq), download_bytes(b.dq)) << "dq " << dt::cuda::dtype_name(t);
    EXPECT_EQ(download_bytes(a.dk), download_bytes(b.dk)) << "dk " << dt::cuda::dtype_name(t);
    EXPECT_EQ(download_bytes(a.dv), download_bytes(b.dv)) << "dv " << dt::cuda::dtype_name(t);
  }
}

// Qwen3.5 shape: dK/dV split over 2 head groups (fp32 partials summed in order).
TEST_F(CudaAttention, RealShapeMatchesCpu) { check_both(make_problem(kReal, 16, 2, 256, 300)); }

// Many short segments: dK/dV sums all 4 heads of a group inside one block (no split).
TEST_F(CudaAttention, ManyShortSegmentsMatchCpu) {
  check_both(make_problem(std::vector<int32_t>(64, 128), 8, 2, 128, 400));
}

TEST_F(CudaAttention, EmptyPackIsNoOp) {
  for (const auto& lens : {std::vector<int32_t>{}, std::vector<int32_t>{0, 0}}) {
    const Problem p = make_problem(lens, 4, 2, 256, 500);
    for (DType t : {DType::bf16, DType::f32}) {
      DevProblem d = to_device(p, t);
      run_fwd(p, d, t);
      run_bwd(p, d, t);
      DT_CUDA_CHECK(cudaDeviceSynchronize());
    }
  }
}

TEST_F(CudaAttention, BadArgumentsAreOneLineErrors) {
  const std::vector<int32_t> cu = {0, 4};
  dt_test::expect_error(
      [&] {
        dt::cuda::attention_fwd(DType::bf16, nullptr, nullptr, nullptr, nullptr, cu.data(), 1, 4, 4,
                                2, 257, 1.f, nullptr, nullptr);
      },
      {"cuda::attention_fwd", "K=257"});
  dt_test::expect_error(
      [&] {
        dt::cuda::attention_fwd(DType::bf16, nullptr, nullptr, nullptr, nullptr, cu.data(), 1, 4, 3,
                                2, 64, 1.f, nullptr, nullptr);
      },
      {"cuda::attention_fwd", "H=3", "J=2"});
  dt_test::expect_error(
      [&] {
        dt::cuda::attention_bwd(DType::bf16, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                nullptr, cu.data(), 1, 5, 4, 2, 64, 1.f, nullptr, nullptr, nullptr);
      },
      {"cuda::attention_bwd", "N=5"});
  std::vector<float> host(64);
  dt_test::expect_error(
      [&] {
        dt::cuda::attention_fwd(DType::f32, host.data(), host.data(), host.data(), cu.data(),
                                cu.data(), 1, 4, 1, 1, 4, 1.f, host.data(), host.data());
      },
      {"cuda::attention_fwd", "q_NHK", "not device memory"});
}

// Same inputs -> bitwise the same outputs (fwd and bwd), on the real shape.
TEST_F(CudaAttention, RepeatedRunsAreBitwiseEqual) {
  for (DType t : {DType::bf16, DType::f32}) {
    const Problem p = make_problem(kReal, 16, 2, 256, 600, false);
    DevProblem d = to_device(p, t);
    run_fwd(p, d, t);
    run_bwd(p, d, t);
    const auto o1 = download_bytes(d.o), l1 = download_bytes(d.lse), q1 = download_bytes(d.dq),
               k1 = download_bytes(d.dk), v1 = download_bytes(d.dv);
    DevProblem e = to_device(p, t);
    run_fwd(p, e, t);
    run_bwd(p, e, t);
    EXPECT_TRUE(o1 == download_bytes(e.o)) << dt::cuda::dtype_name(t) << " o differs";
    EXPECT_TRUE(l1 == download_bytes(e.lse)) << dt::cuda::dtype_name(t) << " lse differs";
    EXPECT_TRUE(q1 == download_bytes(e.dq)) << dt::cuda::dtype_name(t) << " dq differs";
    EXPECT_TRUE(k1 == download_bytes(e.dk)) << dt::cuda::dtype_name(t) << " dk differs";
    EXPECT_TRUE(v1 == download_bytes(e.dv)) << dt::cuda::dtype_name(t) << " dv differs";
  }
}

// Timings on the Qwen3.5 pack (compare with PyTorch SDPA / flash-attention on the same GPU).
// FLOPs counted as flash attention does: fwd 4 * (causal pairs) * H * K, bwd 2.5 x fwd.
TEST_F(CudaAttention, RealShapeTimings) {
  for (int64_t H : {16, 8}) {
    const Problem p = make_problem(kReal, H, 2, 256, 700, false);
    DevProblem d = to_device(p, DType::bf16);
    double pairs = 0;
    for (int32_t L : kReal) pairs += 0.5 * double(L) * double(L + 1);
    const double fwd_flops = 4.0 * pairs * double(H) * 256.0;
    auto time_ms = [](auto&& fn) { return dt_test::gpu_time_ms(fn, 3, 20); };
    const double fwd_ms = time_ms([&] { run_fwd(p, d, DType::bf16); });
    const double bwd_ms = time_ms([&] { run_bwd(p, d, DType::bf16); });
    std::printf(
        "timing bf16 N=8192 segs=12 (100..2048) H=%lld J=2 K=256: fwd %.3f ms (%.0f "
        "TFLOP/s), bwd %.3f ms (%.0f TFLOP/s)\n",
        (long long)H, fwd_ms, fwd_flops / fwd_ms * 1e-9, bwd_ms, 2.5 * fwd_flops / bwd_ms * 1e-9);
  }
}
