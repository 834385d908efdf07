// GPU parity of the CUDA chunked gated delta rule (cuda::gdn_chunk_*) against the CPU (label gpu).
//
// Reference: cpu::gdn_chunk_* in double on the inputs the device sees (q, k, v, do rounded to
// bf16 in bf16 mode; g, beta are fp32 in both modes). Outputs are poisoned with NaN before each
// call so unwritten elements fail. Bounds (relative RMS): bf16 forward 5e-3, backward 1e-2 (the
// bf16 outputs carry their own rounding, ~1e-3); the fp32 outputs of bf16 mode (final state,
// dg, dbeta) 1e-3; f32 debug mode 1e-5 everywhere. Every case runs every kernel layout
// (cuda::GdnKernels v4, v3, v2, v1). Also: bitwise determinism, the layouts giving the same values,
// and the fwd / bwd time of the real Qwen3.5 GDN shapes (GdnTiming.*: printed, never asserted).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "bf16_util.h"
#include "core/error.h"
#include "cpu/gdn.h"
#include "cuda/device.h"
#include "cuda/gdn.h"
#include "gpu_timer.h"
#include "test_util.h"

namespace dt = deltatron;
using dt::cuda::DType;

namespace {

using dt_test::from_bf16;
using dt_test::to_bf16;

// Host values -> device buffer in dtype t; rounds `v` in place to what the device holds.
dt::cuda::DeviceBuffer upload(std::vector<double>& v, DType t) {
  const size_t esz = dt::cuda::dtype_size(t);
  dt::cuda::DeviceBuffer b(std::max<size_t>(v.size(), 1) * esz, "test input");
  if (t == DType::bf16) {
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      h[i] = to_bf16(float(v[i]));
      v[i] = from_bf16(h[i]);
    }
    if (!h.empty())
      DT_CUDA_CHECK(cudaMemcpy(b.get(), h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  } else {
    std::vector<float> h(v.begin(), v.end());
    for (size_t i = 0; i < v.size(); ++i) v[i] = h[i];
    if (!h.empty())
      DT_CUDA_CHECK(cudaMemcpy(b.get(), h.data(), h.size() * 4, cudaMemcpyHostToDevice));
  }
  return b;
}

dt::cuda::DeviceBuffer poisoned(size_t n, size_t esz) {
  dt::cuda::DeviceBuffer b(std::max<size_t>(n, 1) * esz, "test output");
  DT_CUDA_CHECK(cudaMemset(b.get(), 0xFF, std::max<size_t>(n, 1) * esz));  // NaN in bf16 and f32
  return b;
}

std::vector<float> download(const dt::cuda::DeviceBuffer& b, size_t n, size_t esz) {
  DT_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> out(n);
  if (n == 0) return out;
  if (esz == 2) {
    std::vector<uint16_t> h(n);
    DT_CUDA_CHECK(cudaMemcpy(h.data(), b.get(), n * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; ++i) out[i] = from_bf16(h[i]);
  } else {
    DT_CUDA_CHECK(cudaMemcpy(out.data(), b.get(), n * 4, cudaMemcpyDeviceToHost));
  }
  return out;
}

std::vector<uint8_t> bytes_of(const dt::cuda::DeviceBuffer& b, size_t n) {
  DT_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<uint8_t> h(n);
  if (n) DT_CUDA_CHECK(cudaMemcpy(h.data(), b.get(), n, cudaMemcpyDeviceToHost));
  return h;
}

double check(const std::vector<float>& got, const std::vector<double>& want, double tol,
             const std::string& what) {
  size_t bad = 0;
  for (float g : got) bad += !std::isfinite(g);
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " non-finite elements (unwritten or overflow)";
  const auto r = dt_test::compare(got, want);
  EXPECT_LE(r.rel_rms, tol) << what << ": " << r.str();
  std::printf("  %-46s rel_rms=%.3e max_abs=%.3e (tol %.0e)\n", what.c_str(), r.rel_rms, r.max_abs,
              tol);
  return r.rel_rms;
}

using dt::cuda::GdnKernels;

const char* kernels_name(GdnKernels k) {
  return k == GdnKernels::v1   ? "v1"
         : k == GdnKernels::v2 ? "v2"
         : k == GdnKernels::v3 ? "v3"
                               : "v4";
}

// Selects a kernel layout for its lifetime, then restores the previous one.
struct KernelsScope {
  GdnKernels prev;
  explicit KernelsScope(GdnKernels k) : prev(dt::cuda::gdn_kernels()) {
    dt::cuda::gdn_set_kernels(k);
  }
  ~KernelsScope() { dt::cuda::gdn_set_kernels(prev); }
  KernelsScope(const KernelsScope&) = delete;
  KernelsScope& operator=(const KernelsScope&) = delete;
};

enum class Gates { mixed, mild, strong };

struct Case {
  std::vector<int> lens;
  int64_t H, G, K, V;
  Gates gates;
  uint64_t seed;
};

// Inputs on the host in double (rounded to what the device holds) and on the device.
struct Problem {
  int64_t N = 0, H = 0, G = 0, K = 0, V = 0;
  double scale = 0;
  std::vector<int32_t> cu;
  std::vector<double> q, k, v, g, beta, dout;
  dt::cuda::DeviceBuffer q_d, k_d, v_d, g_d, beta_d, dout_d, cu_d;
  int nseg() const { return int(cu.size()) - 1; }
};

void l2_rows(std::vector<double>& x, int64_t D) {
  for (size_t r = 0; r * D < x.size(); ++r) {
    double n = 0;
    for (int64_t a = 0; a < D; ++a) n += x[r * D + a] * x[r * D + a];
    n = 1.0 / std::sqrt(n + 1e-6);
    for (int64_t a = 0; a < D; ++a) x[r * D + a] *= n;
  }
}

Problem make_problem(const Case& c, DType t) {
  Problem p;
  p.H = c.H, p.G = c.G, p.K = c.K, p.V = c.V;
  p.cu = {0};
  for (int len : c.lens) p.cu.push_back(p.cu.back() + len);
  p.N = p.cu.back();
  p.scale = 1.0 / std::sqrt(double(c.K));
  p.q = dt_test::randn<double>(p.N * c.H * c.K, c.seed + 1);
  p.k = dt_test::randn<double>(p.N * c.H * c.K, c.seed + 2);
  l2_rows(p.q, c.K);
  l2_rows(p.k, c.K);
  p.v = dt_test::randn<double>(p.N * c.G * c.V, c.seed + 3);
  if (c.gates == Gates::mixed) {
    p.g = dt_test::uniform<double>(p.N * c.G, c.seed + 4, std::log(1e-3), std::log(5.0));
    for (auto& x : p.g) x = -std::exp(x);
  } else if (c.gates == Gates::mild) {
    p.g = dt_test::uniform<double>(p.N * c.G, c.seed + 4, -0.05, -0.001);
  } else {
    p.g = dt_test::uniform<double>(p.N * c.G, c.seed + 4, -50.0, -0.001);
    for (size_t i = 0; i < p.g.size(); i += 3) p.g[i] = -1e-3;
  }
  p.beta = dt_test::uniform<double>(p.N * c.G, c.seed + 5, 0.01, 0.99);
  p.dout = dt_test::randn<double>(p.N * c.G * c.V, c.seed + 6);
  p.q_d = upload(p.q, t);
  p.k_d = upload(p.k, t);
  p.v_d = upload(p.v, t);
  p.dout_d = upload(p.dout, t);
  p.g_d = upload(p.g, DType::f32);
  p.beta_d = upload(p.beta, DType::f32);
  p.cu_d = dt::cuda::DeviceBuffer(p.cu.size() * 4, "test cu");
  DT_CUDA_CHECK(cudaMemcpy(p.cu_d.get(), p.cu.data(), p.cu.size() * 4, cudaMemcpyHostToDevice));
  return p;
}

struct Outputs {
  dt::cuda::DeviceBuffer o, state, dq, dk, dv, dg, dbeta;
};

Outputs run_gpu(const Problem& p, DType t, bool bwd) {
  const size_t esz = dt::cuda::dtype_size(t);
  const int nseg = p.nseg();
  Outputs out;
  out.o = poisoned(p.N * p.G * p.V, esz);
  out.state = poisoned(size_t(nseg) * p.G * p.K * p.V, 4);
  const auto* cu_d = static_cast<const int32_t*>(p.cu_d.get());
  const auto* g = static_cast<const float*>(p.g_d.get());
  const auto* beta = static_cast<const float*>(p.beta_d.get());
  dt::cuda::gdn_chunk_fwd(t, p.q_d.get(), p.k_d.get(), p.v_d.get(), g, beta, cu_d, p.cu.data(),
                          nseg, p.N, p.H, p.G, p.K, p.V, float(p.scale), out.o.get(),
                          static_cast<float*>(out.state.get()));
  if (bwd) {
    out.dq = poisoned(p.N * p.H * p.K, esz);
    out.dk = poisoned(p.N * p.H * p.K, esz);
    out.dv = poisoned(p.N * p.G * p.V, esz);
    out.dg = poisoned(p.N * p.G, 4);
    out.dbeta = poisoned(p.N * p.G, 4);
    dt::cuda::gdn_chunk_bwd(
        t, p.q_d.get(), p.k_d.get(), p.v_d.get(), g, beta, cu_d, p.cu.data(), nseg, p.N, p.H, p.G,
        p.K, p.V, float(p.scale), p.dout_d.get(), out.dq.get(), out.dk.get(), out.dv.get(),
        static_cast<float*>(out.dg.get()), static_cast<float*>(out.dbeta.get()));
  }
  DT_CUDA_CHECK(cudaDeviceSynchronize());
  return out;
}

std::string name(const Case& c, DType t) {
  std::string s = std::string(dt::cuda::dtype_name(t)) + " H=" + std::to_string(c.H) +
                  " G=" + std::to_string(c.G) + " K=" + std::to_string(c.K) +
                  " V=" + std::to_string(c.V) + " segs{";
  for (size_t i = 0; i < c.lens.size(); ++i) s += (i ? "," : "") + std::to_string(c.lens[i]);
  return s + "}";
}

void run_case(const Case& c, DType t) {
  const std::string tag = name(c, t);
  std::printf("%s\n", tag.c_str());
  Problem p = make_problem(c, t);
  const bool bf16 = t == DType::bf16;
  const double tol_fwd = bf16 ? 5e-3 : 1e-5, tol_bwd = bf16 ? 1e-2 : 1e-5;
  const double tol_f32out = bf16 ? 1e-3 : 1e-5;  // fp32 outputs: state, dg, dbeta
  const int nseg = p.nseg();
  const dt::core::Segments seg{p.cu.data(), nseg};
  std::vector<double> o(p.N * p.G * p.V), st(size_t(nseg) * p.G * p.K * p.V);
  dt::cpu::gdn_chunk_fwd<double>(p.q.data(), p.k.data(), p.v.data(), p.g.data(), p.beta.data(), seg,
                                 p.N, p.H, p.G, p.K, p.V, p.scale, o.data(), st.data());
  std::vector<double> dq(p.N * p.H * p.K), dk(p.N * p.H * p.K), dv(p.N * p.G * p.V), dg(p.N * p.G),
      dbeta(p.N * p.G);
  dt::cpu::gdn_chunk_bwd<double>(p.q.data(), p.k.data(), p.v.data(), p.g.data(), p.beta.data(), seg,
                                 p.N, p.H, p.G, p.K, p.V, p.scale, p.dout.data(), dq.data(),
                                 dk.data(), dv.data(), dg.data(), dbeta.data());
  const size_t esz = dt::cuda::dtype_size(t);
  for (GdnKernels kv : {GdnKernels::v4, GdnKernels::v3, GdnKernels::v2, GdnKernels::v1}) {
    const KernelsScope scope(kv);
    const std::string pre = std::string(kernels_name(kv)) + " ";
    Outputs out = run_gpu(p, t, true);
    check(download(out.o, o.size(), esz), o, tol_fwd, pre + "o");
    check(download(out.state, st.size(), 4), st, tol_f32out, pre + "final state");
    check(download(out.dq, dq.size(), esz), dq, tol_bwd, pre + "dq");
    check(download(out.dk, dk.size(), esz), dk, tol_bwd, pre + "dk");
    check(download(out.dv, dv.size(), esz), dv, tol_bwd, pre + "dv");
    check(download(out.dg, dg.size(), 4), dg, tol_f32out, pre + "dg");
    check(download(out.dbeta, dbeta.size(), 4), dbeta, tol_f32out, pre + "dbeta");
  }
}

const std::vector<int> kMixed = {65, 1, 4096, 0, 63, 130, 3, 64};

class CudaGdn : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override { dt::cuda::require_hopper(); }
};

}  // namespace

// Odd head dims, H = G, short and partial chunks, an empty segment; K > 128 (the KP = 256
// kernels) with V just above one value tile; G = 3H (the 27b preset's 16 key / 48 value heads).
TEST_P(CudaGdn, SmallOddShapes) {
  run_case({{1, 3, 63, 64, 65, 130, 0}, 3, 3, 7, 5, Gates::mixed, 100}, GetParam());
  run_case({{70, 0, 5}, 2, 2, 129, 33, Gates::mild, 110}, GetParam());
  run_case({{1, 66, 0, 130}, 2, 6, 24, 40, Gates::mixed, 120}, GetParam());
}

// The mixed pack {1, 3, 63, 64, 65, 130, 4096} (+ empty) with G = 2H at the real head dims, and
// at K = 32, V = 48.
TEST_P(CudaGdn, MixedPack) {
  run_case({kMixed, 2, 4, 128, 128, Gates::mild, 200}, GetParam());
  run_case({kMixed, 2, 4, 32, 48, Gates::mixed, 210}, GetParam());
}

// The largest head dims, and decays strong enough to flush exponentials to 0.
TEST_P(CudaGdn, WideHeadsAndStrongDecay) {
  run_case({{100, 64, 1, 0, 200}, 1, 2, 256, 256, Gates::mild, 300}, GetParam());
  run_case({{130, 64, 7}, 1, 2, 64, 64, Gates::strong, 310}, GetParam());
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaGdn, ::testing::Values(DType::f32, DType::bf16),
                         [](const auto& info) {
                           return std::string(dt::cuda::dtype_name(info.param));
                         });

// No tokens: zero final states, nothing else touched; bad shapes are errors.
TEST(CudaGdnEdge, EmptyPackAndBadShapes) {
  dt::cuda::require_hopper();
  Problem p = make_problem({{0, 0}, 1, 2, 8, 8, Gates::mixed, 400}, DType::bf16);
  Outputs out = run_gpu(p, DType::bf16, true);
  for (float x : download(out.state, 2 * 2 * 8 * 8, 4)) EXPECT_EQ(x, 0.f);
  const int32_t cu[2] = {0, 4};
  dt_test::expect_error(
      [&] {
        dt::cuda::gdn_chunk_fwd(DType::bf16, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                cu, 1, 4, 2, 3, 8, 8, 1.f, nullptr, nullptr);
      },
      {"cuda::gdn_chunk_fwd", "not a multiple"});
  dt_test::expect_error(
      [&] {
        dt::cuda::gdn_chunk_bwd(DType::bf16, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                cu, 1, 4, 1, 1, 300, 8, 1.f, nullptr, nullptr, nullptr, nullptr,
                                nullptr, nullptr);
      },
      {"cuda::gdn_chunk_bwd", "K=300"});
  dt_test::expect_error(
      [&] {
        dt::cuda::gdn_chunk_fwd(DType::bf16, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                cu, 1, 5, 1, 1, 8, 8, 1.f, nullptr, nullptr);
      },
      {"cuda::gdn_chunk_fwd", "N=5"});
}

// Two runs of forward and backward give the same bytes (the default layout, v3).
TEST(CudaGdnEdge, Deterministic) {
  dt::cuda::require_hopper();
  const KernelsScope scope(GdnKernels::v3);
  for (DType t : {DType::bf16, DType::f32}) {
    Problem p = make_problem({kMixed, 2, 4, 128, 128, Gates::mild, 500}, t);
    Outputs a = run_gpu(p, t, true), b = run_gpu(p, t, true);
    const size_t esz = dt::cuda::dtype_size(t);
    auto same = [&](const dt::cuda::DeviceBuffer& x, const dt::cuda::DeviceBuffer& y, size_t n,
                    const char* what) {
      EXPECT_TRUE(bytes_of(x, n) == bytes_of(y, n))
          << dt::cuda::dtype_name(t) << " " << what << " differs between two runs";
    };
    same(a.o, b.o, p.N * p.G * p.V * esz, "o");
    same(a.state, b.state, size_t(p.nseg()) * p.G * p.K * p.V * 4, "state");
    same(a.dq, b.dq, p.N * p.H * p.K * esz, "dq");
    same(a.dk, b.dk, p.N * p.H * p.K * esz, "dk");
    same(a.dv, b.dv, p.N * p.G * p.V * esz, "dv");
    same(a.dg, b.dg, p.N * p.G * 4, "dg");
    same(a.dbeta, b.dbeta, p.N * p.G * 4, "dbeta");
  }
}

// The real shape: N = 8192 in 14 segments of lognormal-ish lengths in [64, 2048], H = 16, G = 32,
// K = V = 128, bf16. Checks it against the CPU and prints the forward / backward time.
TEST(CudaGdnEdge, RealShapeTiming) {
  dt::cuda::require_hopper();
  const std::vector<int> lens = {300, 2048, 90,   512, 64,  1024, 180,
                                 700, 68,   1536, 250, 400, 120,  900};  // sum 8192
  const Case c{lens, 16, 32, 128, 128, Gates::mixed, 600};
  std::printf("segments:");
  for (int l : lens) std::printf(" %d", l);
  std::printf("\n");
  run_case(c, DType::bf16);

  Problem p = make_problem(c, DType::bf16);
  Outputs out = run_gpu(p, DType::bf16, true);  // warm-up (workspace, attributes)
  const auto* cu_d = static_cast<const int32_t*>(p.cu_d.get());
  const auto* g = static_cast<const float*>(p.g_d.get());
  const auto* beta = static_cast<const float*>(p.beta_d.get());
  const int nseg = p.nseg();
  cudaEvent_t e0, e1, e2;
  DT_CUDA_CHECK(cudaEventCreate(&e0));
  DT_CUDA_CHECK(cudaEventCreate(&e1));
  DT_CUDA_CHECK(cudaEventCreate(&e2));
  const int iters = 10;
  float fwd_ms = 0, bwd_ms = 0;
  for (int it = 0; it < iters; ++it) {
    DT_CUDA_CHECK(cudaEventRecord(e0, 0));
    dt::cuda::gdn_chunk_fwd(DType::bf16, p.q_d.get(), p.k_d.get(), p.v_d.get(), g, beta, cu_d,
                            p.cu.data(), nseg, p.N, p.H, p.G, p.K, p.V, float(p.scale), out.o.get(),
                            nullptr);
    DT_CUDA_CHECK(cudaEventRecord(e1, 0));
    dt::cuda::gdn_chunk_bwd(
        DType::bf16, p.q_d.get(), p.k_d.get(), p.v_d.get(), g, beta, cu_d, p.cu.data(), nseg, p.N,
        p.H, p.G, p.K, p.V, float(p.scale), p.dout_d.get(), out.dq.get(), out.dk.get(),
        out.dv.get(), static_cast<float*>(out.dg.get()), static_cast<float*>(out.dbeta.get()));
    DT_CUDA_CHECK(cudaEventRecord(e2, 0));
    DT_CUDA_CHECK(cudaEventSynchronize(e2));
    float a = 0, b = 0;
    DT_CUDA_CHECK(cudaEventElapsedTime(&a, e0, e1));
    DT_CUDA_CHECK(cudaEventElapsedTime(&b, e1, e2));
    fwd_ms += a;
    bwd_ms += b;
  }
  std::printf("real shape N=8192 H=16 G=32 K=V=128 bf16: fwd %.3f ms, bwd %.3f ms (mean of %d)\n",
              fwd_ms / iters, bwd_ms / iters, iters);
  DT_CUDA_CHECK(cudaEventDestroy(e0));
  DT_CUDA_CHECK(cudaEventDestroy(e1));
  DT_CUDA_CHECK(cudaEventDestroy(e2));
}

// The v2, v3 and v4 layouts compute the same values as v1 (they move blocks, warps, outputs and
// where an operand is split into bf16 terms, not arithmetic): every output equal as a float (so +0
// and -0 match), for G == H (v2 and v3 write dq, dk directly) and G = 2H, K = V = 128 and K = 200,
// V = 96, in both precisions.
TEST(CudaGdnEdge, KernelLayoutsAgree) {
  dt::cuda::require_hopper();
  for (DType t : {DType::bf16, DType::f32})
    for (int64_t G : {2, 4})
      for (GdnKernels kv : {GdnKernels::v2, GdnKernels::v3, GdnKernels::v4}) {
        const int64_t K = G == 2 ? 200 : 128, V = G == 2 ? 96 : 128;
        Problem p = make_problem({kMixed, 2, G, K, V, Gates::mixed, 700}, t);
        Outputs a, b;
        {
          const KernelsScope scope(GdnKernels::v1);
          a = run_gpu(p, t, true);
        }
        {
          const KernelsScope scope(kv);
          b = run_gpu(p, t, true);
        }
        const size_t esz = dt::cuda::dtype_size(t);
        auto same = [&](const dt::cuda::DeviceBuffer& x, const dt::cuda::DeviceBuffer& y, size_t n,
                        size_t e, const char* what) {
          const std::vector<float> vx = download(x, n, e), vy = download(y, n, e);
          size_t diff = 0, first = n;
          for (size_t i = 0; i < n; ++i)
            if (!(vx[i] == vy[i])) {
              if (!diff) first = i;
              ++diff;
            }
          EXPECT_EQ(diff, 0u) << dt::cuda::dtype_name(t) << " G=" << G << " " << what << ": "
                              << diff << " elements differ between v1 and " << kernels_name(kv)
                              << ", first at " << first << ": " << (diff ? vx[first] : 0.f)
                              << " vs " << (diff ? vy[first] : 0.f);
        };
        same(a.o, b.o, p.N * p.G * p.V, esz, "o");
        same(a.state, b.state, size_t(p.nseg()) * p.G * p.K * p.V, 4, "state");
        same(a.dq, b.dq, p.N * p.H * p.K, esz, "dq");
        same(a.dk, b.dk, p.N * p.H * p.K, esz, "dk");
        same(a.dv, b.dv, p.N * p.G * p.V, esz, "dv");
        same(a.dg, b.dg, p.N * p.G, 4, "dg");
        same(a.dbeta, b.dbeta, p.N * p.G, 4, "dbeta");
      }
}

// Forward / backward time of the kernel layouts v1 .. v4 on the Qwen3.5 GDN shapes, bf16, K = V =
// 128, N = 8192: the 2b preset (H = G = 16) and the 35b-a3b preset (H = 16, G = 32), each as the
// 14-segment pack of RealShapeTiming and as one 8192-token sequence. Printed, never asserted;
// the layouts alternate call by call so that clocks and caches treat them alike.
TEST(GdnTiming, Layouts) {
  dt::cuda::require_hopper();
  const std::vector<int> pack = {300, 2048, 90,   512, 64,  1024, 180,
                                 700, 68,   1536, 250, 400, 120,  900};  // sum 8192
  struct Shape {
    const char* name;
    int64_t H, G;
    std::vector<int> lens;
  };
  const std::vector<Shape> shapes = {{"2b      H=16 G=16 14 segs", 16, 16, pack},
                                     {"2b      H=16 G=16 1 x 8192", 16, 16, {8192}},
                                     {"35b-a3b H=16 G=32 14 segs", 16, 32, pack},
                                     {"35b-a3b H=16 G=32 1 x 8192", 16, 32, {8192}}};
  std::printf("GdnTiming: bf16, N=8192, K=V=128, mean ms of 20 calls after 3 warm-ups\n");
  for (const Shape& sh : shapes) {
    Problem p = make_problem({sh.lens, sh.H, sh.G, 128, 128, Gates::mixed, 800}, DType::bf16);
    Outputs out = run_gpu(p, DType::bf16, true);  // buffers
    const auto* cu_d = static_cast<const int32_t*>(p.cu_d.get());
    const auto* g = static_cast<const float*>(p.g_d.get());
    const auto* beta = static_cast<const float*>(p.beta_d.get());
    const int nseg = p.nseg();
    auto fwd = [&] {
      dt::cuda::gdn_chunk_fwd(DType::bf16, p.q_d.get(), p.k_d.get(), p.v_d.get(), g, beta, cu_d,
                              p.cu.data(), nseg, p.N, p.H, p.G, p.K, p.V, float(p.scale),
                              out.o.get(), nullptr);
    };
    auto bwd = [&] {
      dt::cuda::gdn_chunk_bwd(
          DType::bf16, p.q_d.get(), p.k_d.get(), p.v_d.get(), g, beta, cu_d, p.cu.data(), nseg, p.N,
          p.H, p.G, p.K, p.V, float(p.scale), p.dout_d.get(), out.dq.get(), out.dk.get(),
          out.dv.get(), static_cast<float*>(out.dg.get()), static_cast<float*>(out.dbeta.get()));
    };
    double ms[4][2] = {};  // [layout v1 .. v4][fwd, bwd]
    const GdnKernels layouts[4] = {GdnKernels::v1, GdnKernels::v2, GdnKernels::v3, GdnKernels::v4};
    const int rounds = 4, reps = 5;
    for (int r = 0; r < rounds; ++r)
      for (int l = 0; l < 4; ++l) {
        const KernelsScope scope(layouts[l]);
        ms[l][0] += dt_test::gpu_time_ms(fwd, r == 0 ? 3 : 1, reps) / rounds;
        ms[l][1] += dt_test::gpu_time_ms(bwd, r == 0 ? 3 : 1, reps) / rounds;
      }
    std::printf(
        "  %-26s fwd v1 %6.3f v2 %6.3f v3 %6.3f v4 %6.3f | bwd v1 %6.3f v2 %6.3f v3 %6.3f v4 "
        "%6.3f ms (v3 x%.2f / x%.2f v2, v4 x%.2f / x%.2f v3)\n",
        sh.name, ms[0][0], ms[1][0], ms[2][0], ms[3][0], ms[0][1], ms[1][1], ms[2][1], ms[3][1],
        ms[1][0] / ms[2][0], ms[1][1] / ms[2][1], ms[2][0] / ms[3][0], ms[2][1] / ms[3][1]);
  }
}
