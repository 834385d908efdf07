// GPU parity of the fused LM head + cross-entropy (cuda::linear_cross_entropy) against the CPU
// reference ops (label gpu), plus its timing on the real shape.
//
// Reference: cpu::linear_fwd, cpu::cross_entropy_fwd/bwd and cpu::linear_bwd in double on the
// inputs the device sees (bf16-rounded in bf16 mode). Outputs are NaN-poisoned before each call;
// dW (+=) and dx (+= mode) start from random values of the size of the expected increment.
// Tolerances (relative RMS): loss 5e-3 (bf16 mode) / 1e-5 (f32 mode); dx, dW 1e-2 / 1e-5.
// correct_N must equal the reference argmax rule exactly, except on rows whose reference top-2
// gap is in (0, 1e-4): those are counted and printed (the fp32 GEMM's rounding decides them).
// The real-shape cases (V = 248,320) skip under compute-sanitizer (detected through
// CUDA_INJECTION64_PATH, or DT_GPU_SMALL=1), where they would take minutes; the small cases
// cover the same code paths (odd V, chunk boundaries, ignored and invalid targets).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bf16_util.h"
#include "core/error.h"
#include "cpu/cross_entropy.h"
#include "cpu/linear.h"
#include "cuda/device.h"
#include "cuda/linear.h"
#include "cuda/lm_head_ce.h"
#include "gpu_timer.h"
#include "test_util.h"

namespace dt = deltatron;
using dt::cuda::DType;

namespace {

constexpr int32_t kIgnore = dt::cpu::kIgnoreIndex;

bool small_only() {
  const char* s = std::getenv("DT_GPU_SMALL");
  return std::getenv("CUDA_INJECTION64_PATH") || (s && std::string(s) == "1");
}

// float <-> bfloat16 bits, round to nearest even (inputs here are finite).
using dt_test::from_bf16;
using dt_test::to_bf16;

// Uniform in [-scale, scale) from a hash of (seed, i): fast and parallel for the 508M-element W.
std::vector<float> uniform_hash(size_t n, uint64_t seed, double scale) {
  std::vector<float> v(n);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < int64_t(n); ++i) {
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + uint64_t(i) + 1;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    v[i] = float(scale * (double(z >> 11) * 0x1.0p-52 - 1.0));
  }
  return v;
}

// A tensor stored on the device in `t`; `host` holds the values the device sees.
struct DevTensor {
  std::vector<float> host;
  dt::cuda::DeviceBuffer buf;
  DType t = DType::f32;
  void* ptr() const { return buf.get(); }
};

DevTensor upload(std::vector<float> v, DType t) {
  DevTensor d;
  d.t = t;
  d.buf = dt::cuda::DeviceBuffer(std::max<size_t>(v.size(), 1) * dt::cuda::dtype_size(t), "test");
  if (t == DType::bf16) {
    std::vector<uint16_t> h(v.size());
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < int64_t(v.size()); ++i) {
      h[i] = to_bf16(v[i]);
      v[i] = from_bf16(h[i]);
    }
    DT_CUDA_CHECK(cudaMemcpy(d.ptr(), h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  } else {
    DT_CUDA_CHECK(cudaMemcpy(d.ptr(), v.data(), v.size() * 4, cudaMemcpyHostToDevice));
  }
  d.host = std::move(v);
  return d;
}

// n elements stored in t, back as float.
std::vector<float> download(const void* p, size_t n, DType t) {
  std::vector<float> out(n);
  DT_CUDA_CHECK(cudaDeviceSynchronize());
  if (t == DType::bf16) {
    std::vector<uint16_t> h(n);
    DT_CUDA_CHECK(cudaMemcpy(h.data(), p, n * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; ++i) out[i] = from_bf16(h[i]);
  } else {
    DT_CUDA_CHECK(cudaMemcpy(out.data(), p, n * 4, cudaMemcpyDeviceToHost));
  }
  return out;
}

template <typename E>
std::vector<E> download_raw(const void* p, size_t n) {
  std::vector<E> out(n);
  DT_CUDA_CHECK(cudaDeviceSynchronize());
  DT_CUDA_CHECK(cudaMemcpy(out.data(), p, n * sizeof(E), cudaMemcpyDeviceToHost));
  return out;
}

template <typename E>
dt::cuda::DeviceBuffer to_device(const std::vector<E>& v) {
  dt::cuda::DeviceBuffer b(std::max<size_t>(v.size(), 1) * sizeof(E), "test");
  DT_CUDA_CHECK(cudaMemcpy(b.get(), v.data(), v.size() * sizeof(E), cudaMemcpyHostToDevice));
  return b;
}

dt::cuda::DeviceBuffer poisoned(size_t bytes) {
  dt::cuda::DeviceBuffer b(std::max<size_t>(bytes, 4), "test output");
  DT_CUDA_CHECK(cudaMemset(b.get(), 0xFF, bytes));  // all-ones bits: NaN in f32 and bf16
  return b;
}

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

double rms(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return v.empty() ? 0 : std::sqrt(s / double(v.size()));
}

// Checks got against want: finite, rel RMS <= tol; prints the measured error either way.
void check(const std::vector<float>& got, const std::vector<double>& want, double tol,
           const std::string& what) {
  size_t bad = 0;
  for (float g : got) bad += !std::isfinite(g);
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " non-finite elements (unwritten or overflow)";
  auto r = dt_test::compare(got, want);
  EXPECT_LE(r.rel_rms, tol) << what << ": " << r.str();
  std::printf("  %-52s rel_rms=%.3e max_abs=%.3e (tol %.0e)\n", what.c_str(), r.rel_rms, r.max_abs,
              tol);
}

// Reference logits [N, V] in double, their per-row first argmax and top-2 gap.
struct RefLogits {
  std::vector<double> logits;
  std::vector<int32_t> argmax;
  std::vector<double> gap;
};

RefLogits ref_logits(const std::vector<double>& x, const std::vector<double>& W, int64_t N,
                     int64_t D, int64_t V) {
  RefLogits r;
  r.logits.resize(N * V);
  r.argmax.resize(N);
  r.gap.resize(N);
  dt::cpu::linear_fwd<double>(x.data(), W.data(), N, D, V, r.logits.data());
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const double* l = &r.logits[n * V];
    const int64_t a = std::max_element(l, l + V) - l;
    double second = -INFINITY;
    for (int64_t v = 0; v < V; ++v)
      if (v != a) second = std::max(second, l[v]);
    r.argmax[n] = int32_t(a);
    r.gap[n] = l[a] - second;
  }
  return r;
}

struct Case {
  int64_t N, D, V;
  DType t;
  int64_t chunk_rows = 0;  // 0: the op's default
  int64_t group_rows = 0;  // 0: the op's default
  bool integer = false;    // integer-valued x, W in {-1, 0, 1}: exact logits, exact ties
  bool invalid = false;    // a few targets outside [0, V) and not -100
  bool backward = true;
  uint64_t seed = 1;
};

std::string name(const Case& c) {
  return std::string(dt::cuda::dtype_name(c.t)) + " N=" + std::to_string(c.N) +
         " D=" + std::to_string(c.D) + " V=" + std::to_string(c.V) +
         (c.chunk_rows ? " chunk=" + std::to_string(c.chunk_rows) : "") +
         (c.group_rows ? " group=" + std::to_string(c.group_rows) : "") +
         (c.integer ? " int" : "") + (c.invalid ? " invalid-targets" : "") +
         (c.backward ? "" : " fwd-only");
}

// Inputs, targets and the double reference of one case.
struct Problem {
  DevTensor x, W;
  std::vector<int32_t> targets;
  std::vector<float> dloss;
  RefLogits ref;
  std::vector<double> loss_ref, dx_ref, dW_ref;
};

Problem make_problem(const Case& c) {
  const auto [N, D, V, t, chunk, group, integer, invalid, backward, seed] = c;
  Problem p;
  auto ints = [](std::vector<float> v) {
    for (auto& e : v) e = std::round(e);  // uniform [-1.5, 1.5) -> {-1, 0, 1} (and -2 rarely)
    return v;
  };
  if (integer) {
    p.x = upload(ints(uniform_hash(N * D, seed + 1, 1.5)), t);
    p.W = upload(ints(uniform_hash(V * D, seed + 2, 1.5)), t);
  } else {
    // x and W of variance 1 and 1/D: logits of standard deviation ~1.
    p.x = upload(uniform_hash(N * D, seed + 1, std::sqrt(3.0)), t);
    p.W = upload(uniform_hash(V * D, seed + 2, std::sqrt(3.0 / double(D))), t);
  }
  const auto x_d = to_double(p.x.host), W_d = to_double(p.W.host);
  p.ref = ref_logits(x_d, W_d, N, D, V);

  // Targets: every third row the argmax (so correct is 1 there), some ignored, the rest random.
  std::vector<float> u = uniform_hash(N, seed + 3, 1.0);
  p.targets.resize(N);
  for (int64_t n = 0; n < N; ++n) {
    if (n % 3 == 0)
      p.targets[n] = p.ref.argmax[n];
    else if (n % 7 == 5)
      p.targets[n] = kIgnore;
    else
      p.targets[n] = int32_t(std::min<int64_t>(V - 1, int64_t((u[n] + 1) * 0.5 * V)));
  }
  p.dloss = uniform_hash(N, seed + 4, 0.5);
  for (auto& g : p.dloss) g += 1.0f;  // in [0.5, 1.5)

  // Reference over the valid targets (invalid ones are ignored rows with loss NaN on the GPU).
  std::vector<int32_t> tgt_ref = p.targets;
  if (invalid) {
    const int32_t bad[] = {int32_t(V), -1, -101, INT32_MIN, INT32_MAX};
    for (int64_t n = 1, k = 0; n < N; n += 3, ++k) {
      p.targets[n] = bad[k % 5];
      tgt_ref[n] = kIgnore;
    }
  }
  p.loss_ref.resize(N);
  std::vector<double> lse(N), dloss_d = to_double(p.dloss);
  dt::cpu::cross_entropy_fwd<double>(p.ref.logits.data(), tgt_ref.data(), N, V, p.loss_ref.data(),
                                     lse.data());
  if (backward) {
    auto& dl = p.ref.logits;  // dlogits overwrite the logits (allowed by the contract)
    dt::cpu::cross_entropy_bwd<double>(dl.data(), tgt_ref.data(), lse.data(), dloss_d.data(), N, V,
                                       dl.data());
    p.dx_ref.assign(N * D, 0.0);
    p.dW_ref.assign(V * D, 0.0);
    dt::cpu::linear_bwd<double>(x_d.data(), W_d.data(), dl.data(), N, D, V, p.dx_ref.data(), false,
                                p.dW_ref.data());
  }
  std::vector<double>().swap(p.ref.logits);
  return p;
}

// Outputs of one GPU call.
struct Result {
  std::vector<float> loss, dx, dW;
  std::vector<int32_t> correct;
};

// accumulate_dw false: dW starts NaN-poisoned (dW0 unused) and must be overwritten.
Result run_gpu(const Case& c, const Problem& p, const std::vector<float>& dW0, bool accumulate_dx,
               const std::vector<float>& dx0, bool accumulate_dw = true) {
  const auto [N, D, V, t, chunk, group, integer, invalid, backward, seed] = c;
  auto targets = to_device(p.targets);
  auto dloss = to_device(p.dloss);
  auto loss = poisoned(N * 4);
  auto correct = poisoned(N * 4);
  dt::cuda::DeviceBuffer dx, dW;
  if (backward) {
    dx = accumulate_dx ? upload(dx0, t).buf : poisoned(N * D * dt::cuda::dtype_size(t));
    dW = accumulate_dw ? to_device(dW0) : poisoned(V * D * 4);
  }
  dt::cuda::linear_cross_entropy(
      t, p.x.ptr(), p.W.ptr(), static_cast<const int32_t*>(targets.get()),
      backward ? static_cast<const float*>(dloss.get()) : nullptr, N, D, V,
      static_cast<float*>(loss.get()), static_cast<int32_t*>(correct.get()),
      backward ? dx.get() : nullptr, accumulate_dx,
      backward ? static_cast<float*>(dW.get()) : nullptr, chunk, group, accumulate_dw);
  Result r;
  r.loss = download(loss.get(), N, DType::f32);
  r.correct = download_raw<int32_t>(correct.get(), N);
  if (backward) {
    r.dx = download(dx.get(), N * D, t);
    r.dW = download(dW.get(), V * D, DType::f32);
  }
  return r;
}

void run_case(const Case& c) {
  const bool bf16 = c.t == DType::bf16;
  const double tol_fwd = bf16 ? 5e-3 : 1e-5, tol_bwd = bf16 ? 1e-2 : 1e-5;
  const auto N = c.N, D = c.D, V = c.V;
  std::printf("%s\n", name(c).c_str());
  Problem p = make_problem(c);

  // dW starts from random values of the increment's size; the reference adds the increment.
  const double inc_rms = c.backward ? std::max(rms(p.dW_ref), 1e-3) : 1.0;
  std::vector<float> dW0 = uniform_hash(V * D, c.seed + 5, inc_rms * std::sqrt(3.0));
  Result r = run_gpu(c, p, dW0, false, {});

  // loss: valid rows vs the reference; ignored rows exactly 0; invalid targets NaN.
  std::vector<float> loss_valid;
  std::vector<double> loss_valid_ref;
  int64_t ignored_bad = 0, invalid_bad = 0, correct_bad = 0, ambiguous = 0, n_correct = 0;
  for (int64_t n = 0; n < N; ++n) {
    const int32_t t = p.targets[n];
    if (t == kIgnore) {
      ignored_bad += r.loss[n] != 0.f || r.correct[n] != 0;
    } else if (t < 0 || t >= V) {
      invalid_bad += !std::isnan(r.loss[n]) || r.correct[n] != 0;
    } else {
      loss_valid.push_back(r.loss[n]);
      loss_valid_ref.push_back(p.loss_ref[n]);
      const int32_t want = p.ref.argmax[n] == t;
      n_correct += want;
      if (r.correct[n] != want) {
        if (p.ref.gap[n] > 0 && p.ref.gap[n] < 1e-4)
          ++ambiguous;
        else if (correct_bad++ < 5)
          ADD_FAILURE() << name(c) << ": correct[" << n << "] = " << r.correct[n] << ", want "
                        << want << " (reference argmax " << p.ref.argmax[n] << ", target " << t
                        << ", top-2 gap " << p.ref.gap[n] << ")";
      }
    }
  }
  EXPECT_EQ(ignored_bad, 0) << name(c) << ": ignored rows need loss 0 and correct 0";
  EXPECT_EQ(invalid_bad, 0) << name(c) << ": invalid targets need loss NaN and correct 0";
  EXPECT_EQ(correct_bad, 0) << name(c) << ": correct_N mismatches";
  std::printf("  correct: %lld of %lld label rows, mismatches %lld, near-ties skipped %lld\n",
              (long long)n_correct, (long long)loss_valid.size(), (long long)correct_bad,
              (long long)ambiguous);
  if (!loss_valid.empty()) check(loss_valid, loss_valid_ref, tol_fwd, name(c) + " loss");
  if (!c.backward) return;

  check(r.dx, p.dx_ref, tol_bwd, name(c) + " dx (=)");
  std::vector<double> dW_want(V * D);
  for (int64_t i = 0; i < V * D; ++i) dW_want[i] = double(dW0[i]) + p.dW_ref[i];
  check(r.dW, dW_want, tol_bwd, name(c) + " dW (+=)");

  // Bitwise determinism: the same call again.
  Result r2 = run_gpu(c, p, dW0, false, {});
  auto same = [](const auto& a, const auto& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])) == 0;
  };
  EXPECT_TRUE(same(r.loss, r2.loss) && same(r.correct, r2.correct) && same(r.dx, r2.dx) &&
              same(r.dW, r2.dW))
      << name(c) << ": two runs differ";

  // dx accumulated onto values of the increment's size.
  std::vector<float> dx0 = uniform_hash(N * D, c.seed + 6, std::max(rms(p.dx_ref), 1e-3) * 1.7);
  DevTensor dx0_dev = upload(dx0, c.t);  // for the rounded values the device sees
  Result r3 = run_gpu(c, p, dW0, true, dx0);
  std::vector<double> dx_want(N * D);
  for (int64_t i = 0; i < N * D; ++i) dx_want[i] = double(dx0_dev.host[i]) + p.dx_ref[i];
  check(r3.dx, dx_want, tol_bwd, name(c) + " dx (+=)");

  // accumulate_dw false (a step's first write of the head's gradient): the first group
  // overwrites the NaN-poisoned dW, the later ones add.
  Result r4 = run_gpu(c, p, dW0, false, {}, false);
  check(r4.dW, p.dW_ref, tol_bwd, name(c) + " dW (=)");
}

class CudaLmHeadCe : public ::testing::Test {
 protected:
  void SetUp() override { dt::cuda::require_hopper(); }
};

}  // namespace

TEST_F(CudaLmHeadCe, SmallOddShapes) {
  for (DType t : {DType::f32, DType::bf16}) {
    run_case({7, 13, 37, t, 0, 0, false, false, true, 10});
    run_case({7, 13, 37, t, 0, 0, false, false, false, 11});  // forward only
    run_case({1, 5, 3, t, 0, 0, false, false, true, 12});
    run_case({33, 1, 11, t, 0, 0, false, false, true, 13});
  }
}

// Chunks (C rows of logits) and, in bf16 mode, backward groups (G rows): partial last chunks
// and groups, one row per chunk, dlogits rows at offsets that are not multiples of 4 (V odd).
TEST_F(CudaLmHeadCe, ChunkBoundaries) {
  for (DType t : {DType::f32, DType::bf16}) {
    run_case({7, 13, 37, t, 3, 0, false, false, true, 20});  // chunks 3, 3, 1
    run_case({7, 13, 37, t, 3, 6, false, false, true, 21});  // groups (3, 3), (1)
    run_case({7, 13, 37, t, 1, 1, false, false, true, 22});  // one row per chunk and group
    run_case({100, 64, 1001, t, 17, 34, false, false, true, 23});
    run_case({100, 64, 1000, t, 64, 0, false, false, true, 24});   // default group: all rows
    run_case({100, 64, 1000, t, 16, 40, false, false, true, 25});  // G rounded down to 32
  }
}

// Integer-valued inputs give exact logits with many exact ties: first index of the max wins.
TEST_F(CudaLmHeadCe, ArgmaxTiesTakeFirstIndex) {
  for (DType t : {DType::f32, DType::bf16}) {
    run_case({64, 13, 37, t, 0, 0, true, false, true, 30});
    run_case({64, 3, 1003, t, 5, 0, true, false, false, 31});
  }
}

TEST_F(CudaLmHeadCe, InvalidTargetsAreNotIndexed) {
  for (DType t : {DType::f32, DType::bf16}) run_case({20, 13, 37, t, 6, 12, false, true, true, 40});
}

TEST_F(CudaLmHeadCe, EmptyBatchWritesNothing) {
  auto x = upload({}, DType::bf16), W = upload(uniform_hash(37 * 13, 1, 1.0), DType::bf16);
  auto tg = to_device(std::vector<int32_t>{}), dl = to_device(std::vector<float>{});
  auto loss = poisoned(4), dx = poisoned(4);
  auto dW = to_device(std::vector<float>(37 * 13, 0.f));
  dt::cuda::linear_cross_entropy(
      DType::bf16, x.ptr(), W.ptr(), static_cast<const int32_t*>(tg.get()),
      static_cast<const float*>(dl.get()), 0, 13, 37, static_cast<float*>(loss.get()), nullptr,
      dx.get(), false, static_cast<float*>(dW.get()));
  auto dW_h = download(dW.get(), 37 * 13, DType::f32);
  EXPECT_TRUE(std::all_of(dW_h.begin(), dW_h.end(), [](float v) { return v == 0.f; }));
  EXPECT_TRUE(std::isnan(download(loss.get(), 1, DType::f32)[0]));
}

TEST_F(CudaLmHeadCe, GradientsWithoutDlossAreRefused) {
  auto b = poisoned(64);
  dt_test::expect_error(
      [&] {
        dt::cuda::linear_cross_entropy(
            DType::f32, b.get(), b.get(), static_cast<const int32_t*>(b.get()), nullptr, 1, 1, 1,
            static_cast<float*>(b.get()), nullptr, b.get(), false, nullptr);
      },
      {"linear_cross_entropy", "dloss_N"});
}

// V = 248,320 (Qwen3.5), D = 2048: the default chunk (512 rows) splits N = 1024 in two
// (one backward group in bf16 mode).
TEST_F(CudaLmHeadCe, RealVocabulary) {
  if (small_only()) GTEST_SKIP() << "real-shape case skipped under compute-sanitizer";
  for (DType t : {DType::f32, DType::bf16})
    run_case({1024, 2048, 248320, t, 0, 0, false, false, true, 50});
}

// Timing of N = 8192, D = 2048, V = 248,320 in bf16: forward only, forward + backward, the same
// GEMMs alone on random dlogits (so the row kernel's share follows), and other chunk / group
// sizes.
TEST_F(CudaLmHeadCe, TimingRealShape) {
  if (small_only()) GTEST_SKIP() << "timing skipped under compute-sanitizer";
  const int64_t N = 8192, D = 2048, V = 248320;
  const DType t = DType::bf16;
  DevTensor x = upload(uniform_hash(N * D, 60, std::sqrt(3.0)), t);
  DevTensor W = upload(uniform_hash(V * D, 61, std::sqrt(3.0) * 0.02), t);
  std::vector<int32_t> tg_h(N);
  for (int64_t n = 0; n < N; ++n) tg_h[n] = n % 50 == 0 ? kIgnore : int32_t((n * 7919) % V);
  auto tg = to_device(tg_h);
  auto dl = to_device(std::vector<float>(N, 1.0f / N));
  auto loss = poisoned(N * 4), correct = poisoned(N * 4);
  auto dx = poisoned(N * D * 2);
  dt::cuda::DeviceBuffer dW(size_t(V * D) * 4, "dW");
  DT_CUDA_CHECK(cudaMemset(dW.get(), 0, size_t(V * D) * 4));
  auto time_ms = [](auto&& f, int reps) {
    return dt_test::gpu_time_ms(f, 1, reps);  // warm-up: workspace, cuBLASLt plans
  };
  auto call = [&](bool bwd, int64_t chunk, int64_t group) {
    dt::cuda::linear_cross_entropy(t, x.ptr(), W.ptr(), static_cast<const int32_t*>(tg.get()),
                                   bwd ? static_cast<const float*>(dl.get()) : nullptr, N, D, V,
                                   static_cast<float*>(loss.get()),
                                   static_cast<int32_t*>(correct.get()), bwd ? dx.get() : nullptr,
                                   false, bwd ? static_cast<float*>(dW.get()) : nullptr, chunk,
                                   group);
  };
  const double flop = 2.0 * N * D * V;
  const double fwd = time_ms([&] { call(false, 0, 0); }, 5);
  const double both = time_ms([&] { call(true, 0, 0); }, 5);
  const size_t ws = dt::cuda::linear_cross_entropy_workspace_bytes();
  const int64_t C = dt::cuda::linear_cross_entropy_chunk_rows(V);
  const int64_t G = dt::cuda::linear_cross_entropy_group_rows(V, C);

  // The same GEMMs alone; dlogits random (zeros would let the tensor cores clock higher).
  dt::cuda::DeviceBuffer lg(size_t(C * V) * 4, "logits");
  DevTensor dlg = upload(uniform_hash(G * V, 62, 1e-5), t);
  auto gemms = [&](bool bwd) {
    for (int64_t g0 = 0; g0 < N; g0 += G) {
      for (int64_t r0 = g0; r0 < g0 + G; r0 += C)
        dt::cuda::linear_fwd(t, static_cast<const char*>(x.ptr()) + r0 * D * 2, W.ptr(), C, D, V,
                             DType::f32, lg.get(), false);
      if (!bwd) continue;
      dt::cuda::linear_bwd_dx(t, dlg.ptr(), W.ptr(), G, D, V, t,
                              static_cast<char*>(dx.get()) + g0 * D * 2, false);
      dt::cuda::linear_bwd_dw(t, static_cast<const char*>(x.ptr()) + g0 * D * 2, dlg.ptr(), G, D, V,
                              static_cast<float*>(dW.get()));
    }
  };
  const double g_fwd = time_ms([&] { gemms(false); }, 5);
  const double g_both = time_ms([&] { gemms(true); }, 5);
  const double row_fwd = fwd - g_fwd, row_both = both - g_both;
  std::printf(
      "N=%lld D=%lld V=%lld bf16, chunk %lld rows, group %lld rows, workspace %.1f MiB "
      "(peak)\n",
      (long long)N, (long long)D, (long long)V, (long long)C, (long long)G, ws / 1048576.0);
  std::printf("  forward only     %8.3f ms (%.0f TFLOP/s)   GEMM alone  %8.3f ms\n", fwd,
              flop / fwd * 1e-9, g_fwd);
  std::printf("  forward+backward %8.3f ms (%.0f TFLOP/s)   GEMMs alone %8.3f ms\n", both,
              3 * flop / both * 1e-9, g_both);
  std::printf(
      "  row kernel (difference): fwd %.3f ms = %.0f GB/s of 4V B/row;"
      " fwd+bwd %.3f ms = %.0f GB/s of 10V B/row\n",
      row_fwd, N * V * 4.0 / row_fwd * 1e-6, row_both, N * V * 10.0 / row_both * 1e-6);
  for (auto [chunk, group] :
       {std::pair<int64_t, int64_t>{512, 512}, {256, 2048}, {512, 4096}, {2048, 2048}}) {
    const double ms = time_ms([&] { call(true, chunk, group); }, 3);
    std::printf("  fwd+bwd with chunk %4lld group %4lld rows: %8.3f ms (workspace %.0f MiB)\n",
                (long long)chunk, (long long)group, ms,
                V * (chunk * 4.0 + group * 2.0) / 1048576.0);
  }
  auto loss_h = download(loss.get(), N, DType::f32);
  size_t bad = 0;
  for (float v : loss_h) bad += !std::isfinite(v);
  EXPECT_EQ(bad, 0u);
}
