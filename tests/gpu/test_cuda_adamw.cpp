// GPU parity of the AdamW step and the gradient sum of squares (cuda::adamw_*, sum_squares*)
// against the CPU optimizer (train::AdamW, train::grad_norm, train::clip_grad_norm).
//
// Several steps with a changing learning rate, both weight-decay groups and clipping active on
// some steps run on the CPU optimizer and on the GPU from the same values. Bounds: master, exp_avg
// and exp_avg_sq within 1e-6 relative per element (the kernel repeats the CPU's fp32 operations
// one by one, so the measured difference is expected to be 0; the number of bitwise differences
// is printed); the bf16 compute copy equals the GPU master rounded to nearest with ties away from
// zero exactly (core::bf16_round_ties_away, the rounding of the lean pair's weight); the fp64 sum
// of squares within 1e-12 relative of the CPU's and bitwise reproducible. Every storage of the
// state (fp32 master or the lean bf16 weight + remainder, fp32 or bf16 moments) steps bitwise as
// the CPU branch of ops::adamw_step_multi (the reference) does.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "bf16_util.h"
#include "core/bf16.h"
#include "core/error.h"
#include "cuda/adamw.h"
#include "cuda/device.h"
#include "ops/adamw.h"
#include "test_util.h"
#include "train/optimizer.h"

namespace dt = deltatron;
using dt::cuda::DType;
using dt::train::TensorMap;

namespace {

dt::cuda::DeviceBuffer upload(const std::vector<float>& v) {
  dt::cuda::DeviceBuffer b(std::max<size_t>(v.size(), 1) * 4, "tensor");
  DT_CUDA_CHECK(cudaMemcpy(b.get(), v.data(), v.size() * 4, cudaMemcpyHostToDevice));
  return b;
}

template <typename T>
std::vector<T> download(const dt::cuda::DeviceBuffer& b, size_t n) {
  std::vector<T> h(n);
  DT_CUDA_CHECK(cudaDeviceSynchronize());
  DT_CUDA_CHECK(cudaMemcpy(h.data(), b.get(), n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

// Worst relative difference |a - b| / max(|b|, 1e-30) and the number of bitwise differences.
struct Diff {
  double max_rel = 0;
  int64_t bitwise = 0;
  size_t worst = 0;
  float got = 0, want = 0;
  void add(const std::vector<float>& a, const std::vector<float>& b) {
    for (size_t i = 0; i < a.size(); ++i) {
      bitwise += std::memcmp(&a[i], &b[i], 4) != 0;
      const double rel = std::abs(double(a[i]) - b[i]) / std::max(std::abs(double(b[i])), 1e-30);
      if (!(rel <= max_rel)) {  // NaN counts as worst
        max_rel = std::isnan(rel) ? INFINITY : rel;
        worst = i;
        got = a[i];
        want = b[i];
      }
    }
  }
  std::string str() const {
    return "max_rel=" + std::to_string(max_rel) + " bitwise_diffs=" + std::to_string(bitwise) +
           " worst[" + std::to_string(worst) + "]: got " + std::to_string(got) + " expected " +
           std::to_string(want);
  }
};

// A parameter set on both sides: CPU TensorMap and device master/m/v/grad/bf16 copy.
struct DevParam {
  dt::cuda::DeviceBuffer master, m, v, grad, copy;
  int64_t n = 0;
};

TensorMap make_params(const std::vector<std::pair<std::string, dt::core::Shape>>& spec,
                      uint64_t seed) {
  TensorMap p;
  for (const auto& [name, shape] : spec) {
    dt::core::Tensor t(shape);
    t.data = dt_test::randn<float>(t.numel(), seed++, 0.05);
    p.emplace(name, std::move(t));
  }
  return p;
}

// Gradients for one step: normal values at three scales, with exact zeros sprinkled in.
TensorMap make_grads(const TensorMap& params, uint64_t seed) {
  TensorMap g;
  for (const auto& [name, p] : params) {
    dt::core::Tensor t(p.shape);
    t.data = dt_test::randn<float>(t.numel(), seed++, 1.0);
    for (size_t i = 0; i < t.data.size(); ++i) {
      if (i % 7 == 3) t.data[i] = 0.f;
      if (i % 5 == 1) t.data[i] *= 1e-4f;
      if (i % 11 == 2) t.data[i] *= 30.f;
    }
    g.emplace(name, std::move(t));
  }
  return g;
}

// Runs `steps` AdamW steps on the CPU and the GPU (multi-tensor path, bf16 copies), comparing
// after every step. max_norm per step (0: no clipping).
void run_steps(const std::vector<std::pair<std::string, dt::core::Shape>>& spec,
               const std::vector<double>& max_norms, uint64_t seed) {
  dt::train::AdamWOptions opt;
  opt.beta1 = 0.9;
  opt.beta2 = 0.95;
  opt.eps = 1e-8;
  opt.weight_decay = 0.1;
  TensorMap params = make_params(spec, seed);
  dt::train::AdamW cpu(params, opt);

  std::map<std::string, DevParam> dev;
  for (const auto& [name, p] : params) {
    DevParam d;
    d.n = p.numel();
    d.master = upload(p.data);
    d.m = upload(std::vector<float>(d.n, 0.f));
    d.v = upload(std::vector<float>(d.n, 0.f));
    d.copy = dt::cuda::DeviceBuffer(std::max<int64_t>(d.n, 1) * 2, "copy");
    dev.emplace(name, std::move(d));
  }

  Diff total;
  for (size_t s = 0; s < max_norms.size(); ++s) {
    const double lr = 1e-3 * double(s + 1) / double(max_norms.size());
    TensorMap grads = make_grads(params, seed + 1000 * (s + 1));
    std::vector<const float*> xs;
    std::vector<int64_t> ns;
    for (const auto& [name, g] : grads) {
      dev.at(name).grad = upload(g.data);  // the unclipped gradient
      xs.push_back(static_cast<const float*>(dev.at(name).grad.get()));
      ns.push_back(g.numel());
    }
    // global norm: GPU fp64 sum of squares vs the CPU's, then the same clip factor
    const double gpu_norm = std::sqrt(dt::cuda::sum_squares_multi(xs, ns));
    const double cpu_norm = dt::train::clip_grad_norm(grads, max_norms[s]);  // scales grads
    EXPECT_LE(std::abs(gpu_norm - cpu_norm), 1e-12 * cpu_norm) << "step " << s + 1;
    const float scale = dt::cuda::grad_clip_scale(gpu_norm, max_norms[s]);
    EXPECT_EQ(scale, dt::cuda::grad_clip_scale(cpu_norm, max_norms[s])) << "step " << s + 1;

    cpu.step(params, grads, lr);
    std::vector<dt::cuda::AdamWTensor> table;
    for (auto& [name, d] : dev)
      table.push_back({static_cast<float*>(d.master.get()), static_cast<float*>(d.m.get()),
                       static_cast<float*>(d.v.get()), static_cast<const float*>(d.grad.get()),
                       d.copy.get(), d.n, cpu.decays(name) ? opt.weight_decay : 0.0});
    dt::cuda::AdamWStepArgs args;
    args.lr = lr;
    args.beta1 = opt.beta1;
    args.beta2 = opt.beta2;
    args.eps = opt.eps;
    args.step = cpu.step_count();
    args.grad_scale = scale;
    dt::cuda::adamw_step_multi(table, args, DType::bf16);

    Diff step_diff;
    int64_t copy_wrong = 0;
    for (auto& [name, d] : dev) {
      const auto master = download<float>(d.master, d.n);
      step_diff.add(master, params.at(name).data);
      step_diff.add(download<float>(d.m, d.n), cpu.exp_avg().at(name).data);
      step_diff.add(download<float>(d.v, d.n), cpu.exp_avg_sq().at(name).data);
      const auto copy = download<uint16_t>(d.copy, d.n);
      for (int64_t i = 0; i < d.n; ++i)
        copy_wrong += copy[i] != dt::core::bf16_round_ties_away(master[i]);
    }
    EXPECT_LE(step_diff.max_rel, 1e-6) << "step " << s + 1 << ": " << step_diff.str();
    EXPECT_EQ(copy_wrong, 0) << "step " << s + 1 << ": bf16 copy is not the rounded master";
    std::printf("  step %zu lr=%.2e clip=%.6f: master/m/v %s\n", s + 1, lr, scale,
                step_diff.str().c_str());
    total.max_rel = std::max(total.max_rel, step_diff.max_rel);
    total.bitwise += step_diff.bitwise;
  }
  std::printf("  all steps: max_rel=%.3e, %lld bitwise differences\n", total.max_rel,
              (long long)total.bitwise);
}

class CudaAdamW : public ::testing::Test {
 protected:
  void SetUp() override { dt::cuda::require_hopper(); }
};

}  // namespace

// A model-like parameter set: both decay groups, a 2M-element matrix over many blocks, sizes that
// are not multiples of the 2048-element chunk; clipping on steps 2 and 4.
TEST_F(CudaAdamW, StepsMatchCpuOptimizer) {
  run_steps({{"model.embed_tokens.weight", {300, 16}},
             {"model.layers.0.input_layernorm.weight", {101}},
             {"model.layers.0.linear_attn.A_log", {7}},
             {"model.layers.0.linear_attn.conv1d.weight", {37, 1, 4}},
             {"model.layers.0.mlp.down_proj.weight", {1000, 2051}},
             {"model.norm.weight", {2048}}},
            {0.0, 50.0, 0.0, 10.0, 1e9, 0.0}, 1);
}

// More tensors than one launch's table holds (48 AdamW, 128 norm), empty ones included.
TEST_F(CudaAdamW, ManyTensorsSplitIntoLaunches) {
  std::vector<std::pair<std::string, dt::core::Shape>> spec;
  std::mt19937_64 rng(7);
  for (int k = 0; k < 150; ++k) {
    const int64_t rows = int64_t(rng() % 40), cols = int64_t(1 + rng() % 300);
    spec.push_back({"model.layers." + std::to_string(k) + ".w", {rows, cols}});
  }
  run_steps(spec, {0.0, 5.0, 0.0}, 2);
}

// Single-tensor entry point with an f32 copy and with no copy.
TEST_F(CudaAdamW, SingleTensorCopies) {
  const int64_t n = 5000;
  const std::vector<float> p0 = dt_test::randn<float>(n, 30, 0.1), g = dt_test::randn<float>(n, 31);
  TensorMap params, grads;
  params.emplace("w.weight", dt::core::Tensor({n}));
  params.at("w.weight").data = p0;
  grads.emplace("w.weight", dt::core::Tensor({n}));
  grads.at("w.weight").data = g;
  dt::train::AdamWOptions opt;
  opt.weight_decay = 0.01;
  opt.decay_predicate = [](const std::string&, const dt::core::Shape&) { return true; };
  dt::train::AdamW cpu(params, opt);
  cpu.step(params, grads, 3e-4);

  for (bool with_copy : {true, false}) {
    auto master = upload(p0), m = upload(std::vector<float>(n, 0.f)),
         v = upload(std::vector<float>(n, 0.f)), gd = upload(g);
    auto copy = upload(std::vector<float>(n, -1.f));
    dt::cuda::AdamWStepArgs args;
    args.lr = 3e-4;
    args.step = 1;
    dt::cuda::adamw_step(static_cast<float*>(master.get()), static_cast<float*>(m.get()),
                         static_cast<float*>(v.get()), static_cast<const float*>(gd.get()), n, args,
                         0.01, DType::f32, with_copy ? copy.get() : nullptr);
    Diff d;
    const auto mh = download<float>(master, n);
    d.add(mh, params.at("w.weight").data);
    EXPECT_LE(d.max_rel, 1e-6) << d.str();
    std::printf("  single tensor, %s: %s\n", with_copy ? "f32 copy" : "no copy", d.str().c_str());
    const auto ch = download<float>(copy, n);
    EXPECT_EQ(ch, with_copy ? mh : std::vector<float>(n, -1.f));
  }
}

namespace {

// host state (the CPU reference) and the same on the device
struct LeanState {
  std::vector<float> master, out, mf, vf;
  std::vector<uint16_t> weight, rem, mb, vb;
  dt::cuda::DeviceBuffer d_master, d_out, d_m, d_v, d_weight, d_rem, d_grad;
  int64_t n = 0, index = 0, off = 0;  // off: elements before the arrays' start
  template <typename T>
  T* at(dt::cuda::DeviceBuffer& b) const {
    return static_cast<T*>(b.get()) + off;
  }
  template <typename T>
  std::vector<T> down(const dt::cuda::DeviceBuffer& b) const {
    std::vector<T> h = download<T>(b, size_t(off + n));
    h.erase(h.begin(), h.begin() + off);
    return h;
  }
  dt::cuda::DeviceBuffer up(std::vector<float> v) const {
    v.insert(v.begin(), size_t(off), 0.f);
    return upload(v);
  }
};

}  // namespace

// Every storage of the state: fp32 master (bf16 copy) or the lean pair (with and without an f32
// master out), fp32 or bf16 moments. The CUDA step and the CPU branch of ops::adamw_step_multi
// (cpu::adamw_step, the reference) run from the same bits for 8 steps with clipping, both decay
// groups and stochastic counters offset per tensor; every stored bit must agree. The sizes cover
// the kernel's 16-byte groups of 8 (whole chunks, a last chunk's whole groups and its partial
// group, a tensor smaller than a group); the last tensor's arrays start 3 elements past an
// aligned address, so it takes the element-by-element path.
TEST_F(CudaAdamW, LeanStoragesMatchCpuReferenceBitwise) {
  using dt::core::View;
  const std::vector<int64_t> sizes = {1, 2047, 2049, 300000, 7, 5003};
  for (bool pair : {false, true})
    for (bool bf16_moments : {false, true}) {
      SCOPED_TRACE(std::string(pair ? "remainder" : "fp32") + " master, " +
                   (bf16_moments ? "bf16" : "fp32") + " moments");
      std::vector<LeanState> st(sizes.size());
      int64_t index = 0;
      for (size_t k = 0; k < sizes.size(); ++k) {
        LeanState& s = st[k];
        s.n = sizes[k];
        s.off = k + 1 == sizes.size() ? 3 : 0;
        s.index = index;
        index += s.n + 64;
        s.master = dt_test::randn<float>(s.n, 50 + k, 0.05);
        s.out.assign(s.n, 0.f);
        s.mf.assign(s.n, 0.f);
        s.vf.assign(s.n, 0.f);
        s.weight.resize(s.n);
        s.rem.resize(s.n);
        for (int64_t i = 0; i < s.n; ++i)
          dt::core::master_split(s.master[i], s.weight[i], s.rem[i]);
        s.mb.assign(s.n, 0);
        s.vb.assign(s.n, 0);
        s.d_master = s.up(s.master);
        s.d_out = s.up(s.out);
        s.d_m = s.up(std::vector<float>(s.n, 0.f));  // zero bytes: fp32 or bf16 zeros
        s.d_v = s.up(std::vector<float>(s.n, 0.f));
        s.d_weight = dt::cuda::DeviceBuffer(std::max<int64_t>(s.off + s.n, 1) * 2, "weight");
        s.d_rem = dt::cuda::DeviceBuffer(std::max<int64_t>(s.off + s.n, 1) * 2, "remainder");
        DT_CUDA_CHECK(cudaMemcpy(s.at<uint16_t>(s.d_weight), s.weight.data(), s.n * 2,
                                 cudaMemcpyHostToDevice));
        DT_CUDA_CHECK(
            cudaMemcpy(s.at<uint16_t>(s.d_rem), s.rem.data(), s.n * 2, cudaMemcpyHostToDevice));
      }
      for (int step = 1; step <= 8; ++step) {
        dt::ops::AdamWArgs a;
        a.lr = 1e-3 * (1 + step % 3);
        a.beta1 = 0.9;
        a.beta2 = 0.95;
        a.step = step;
        a.grad_scale = step % 3 == 0 ? 0.25f : 1.0f;
        a.seed = 12345;
        std::vector<dt::ops::AdamWTensor> host;
        std::vector<dt::cuda::AdamWTensor> dev;
        std::vector<std::vector<float>> grads;
        for (size_t k = 0; k < st.size(); ++k) {
          LeanState& s = st[k];
          grads.push_back(dt_test::randn<float>(s.n, 700 * step + k, k == 3 ? 1e-3 : 1.0));
          s.d_grad = s.up(grads.back());
          const double wd = k % 2 ? 0.1 : 0.0;
          const bool out = pair && k % 2;  // the lean pair with an f32 master out
          dt::ops::AdamWTensor h;
          h.grad = View(grads.back().data(), DType::f32, dt::core::Device::cpu, {s.n});
          if (pair) {
            h.compute_copy = View(s.weight.data(), DType::bf16, dt::core::Device::cpu, {s.n});
            h.remainder = View(s.rem.data(), DType::u16, dt::core::Device::cpu, {s.n});
            if (out) h.master = View(s.out.data(), DType::f32, dt::core::Device::cpu, {s.n});
          } else {
            h.master = View(s.master.data(), DType::f32, dt::core::Device::cpu, {s.n});
          }
          if (bf16_moments) {
            h.m = View(s.mb.data(), DType::bf16, dt::core::Device::cpu, {s.n});
            h.v = View(s.vb.data(), DType::bf16, dt::core::Device::cpu, {s.n});
          } else {
            h.m = View(s.mf.data(), DType::f32, dt::core::Device::cpu, {s.n});
            h.v = View(s.vf.data(), DType::f32, dt::core::Device::cpu, {s.n});
          }
          h.weight_decay = wd;
          h.index = s.index;
          host.push_back(h);
          dt::cuda::AdamWTensor d;
          const bool bm = bf16_moments;  // the moments' element size sets their offset
          d.master = pair ? (out ? s.at<float>(s.d_out) : nullptr) : s.at<float>(s.d_master);
          d.m = bm ? static_cast<void*>(s.at<uint16_t>(s.d_m)) : s.at<float>(s.d_m);
          d.v = bm ? static_cast<void*>(s.at<uint16_t>(s.d_v)) : s.at<float>(s.d_v);
          d.grad = s.at<float>(s.d_grad);
          d.compute_copy = s.at<uint16_t>(s.d_weight);  // the pair's weight, or the bf16 copy
          d.n = s.n;
          d.weight_decay = wd;
          d.remainder = pair ? s.at<uint16_t>(s.d_rem) : nullptr;
          d.index = s.index;
          dev.push_back(d);
        }
        dt::ops::adamw_step_multi(host, a);  // the CPU reference
        dt::cuda::adamw_step_multi(dev, a, DType::bf16, bf16_moments ? DType::bf16 : DType::f32);
        for (size_t k = 0; k < st.size(); ++k) {
          LeanState& s = st[k];
          int64_t bad_master = 0, bad_weight = 0, bad_m = 0;
          if (pair) {
            const auto rem = s.down<uint16_t>(s.d_rem);
            bad_master += rem != s.rem;
            if (k % 2) bad_master += s.down<float>(s.d_out) != s.out;
          } else {
            const auto m = s.down<float>(s.d_master);
            bad_master += std::memcmp(m.data(), s.master.data(), s.n * 4) != 0;
          }
          const auto w = s.down<uint16_t>(s.d_weight);
          for (int64_t i = 0; i < s.n; ++i)
            bad_weight +=
                w[i] != (pair ? s.weight[i] : dt::core::bf16_round_ties_away(s.master[i]));
          if (bf16_moments) {
            bad_m += s.down<uint16_t>(s.d_m) != s.mb;
            bad_m += s.down<uint16_t>(s.d_v) != s.vb;
          } else {
            const auto m = s.down<float>(s.d_m), v = s.down<float>(s.d_v);
            bad_m += std::memcmp(m.data(), s.mf.data(), s.n * 4) != 0;
            bad_m += std::memcmp(v.data(), s.vf.data(), s.n * 4) != 0;
          }
          EXPECT_EQ(bad_master, 0)
              << "master (or remainder / f32 out), tensor " << k << " step " << step;
          EXPECT_EQ(bad_weight, 0) << "bf16 weight, tensor " << k << " step " << step;
          EXPECT_EQ(bad_m, 0) << "moments, tensor " << k << " step " << step;
        }
      }
    }
}

TEST_F(CudaAdamW, SumSquaresMatchesDoubleAndIsDeterministic) {
  for (int64_t n :
       {int64_t(0), int64_t(1), int64_t(255), int64_t(65536 * 3 + 17), int64_t(50'000'000)}) {
    const std::vector<float> x = dt_test::randn<float>(n, 40 + n);
    auto xd = upload(x);
    const float* xp = static_cast<const float*>(xd.get());
    const double a = dt::cuda::sum_squares(xp, n), b = dt::cuda::sum_squares(xp, n);
    TensorMap m;
    m.emplace("g", dt::core::Tensor({n}));
    m.at("g").data = x;
    const double norm = dt::train::grad_norm(m);
    const double want = norm * norm;
    EXPECT_EQ(std::memcmp(&a, &b, 8), 0) << "n=" << n << ": two runs differ";
    if (n > 1) {  // the same values one element past an aligned address: the same bits
      const std::vector<float> tail(x.begin() + 1, x.end());
      auto td = upload(tail);
      const double at = dt::cuda::sum_squares(static_cast<const float*>(td.get()), n - 1);
      const double un = dt::cuda::sum_squares(xp + 1, n - 1);
      EXPECT_EQ(std::memcmp(&at, &un, 8), 0)
          << "n=" << n << ": aligned " << at << " vs unaligned " << un;
    }
    EXPECT_LE(std::abs(a - want), 1e-12 * want) << "n=" << n << ": " << a << " vs " << want;
    std::printf("  sum_squares n=%lld: rel diff vs CPU %.3e\n", (long long)n,
                want > 0 ? std::abs(a - want) / want : std::abs(a));
  }
}

// Informative: one step over 64M parameters with a bf16 copy, and its sum of squares.
TEST_F(CudaAdamW, Timing) {
  const int64_t n = int64_t(64) << 20;
  dt::cuda::DeviceBuffer master(n * 4, "p"), m(n * 4, "m"), v(n * 4, "v"), g(n * 4, "g"),
      copy(n * 2, "copy");
  for (auto* b : {&master, &m, &v, &g}) DT_CUDA_CHECK(cudaMemset(b->get(), 0, n * 4));
  dt::cuda::AdamWStepArgs args;
  args.lr = 1e-4;
  auto step = [&] {
    dt::cuda::adamw_step(static_cast<float*>(master.get()), static_cast<float*>(m.get()),
                         static_cast<float*>(v.get()), static_cast<const float*>(g.get()), n, args,
                         0.1, DType::bf16, copy.get());
  };
  step();
  DT_CUDA_CHECK(cudaDeviceSynchronize());
  const int reps = 10;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) step();
  DT_CUDA_CHECK(cudaDeviceSynchronize());
  const double us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() /
      reps;
  t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) (void)dt::cuda::sum_squares(static_cast<float*>(g.get()), n);
  const double us_norm =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() /
      reps;
  std::printf(
      "  adamw 64M params + bf16 copy: %.1f us (%.0f GB/s); sum_squares: %.1f us (%.0f GB/s)\n", us,
      double(n) * 30 / us * 1e-3, us_norm, double(n) * 4 / us_norm * 1e-3);
  // The lean state: bf16 weight + remainder, bf16 moments (20 bytes an element: 12 read, 8
  // written).
  dt::cuda::AdamWTensor lean;
  lean.m = m.get();
  lean.v = v.get();
  lean.grad = static_cast<const float*>(g.get());
  lean.compute_copy = copy.get();
  lean.remainder = static_cast<uint16_t*>(master.get());
  lean.n = n;
  lean.weight_decay = 0.1;
  auto lean_step = [&] {
    dt::cuda::adamw_step_multi(std::span<const dt::cuda::AdamWTensor>(&lean, 1), args, DType::bf16,
                               DType::bf16);
  };
  lean_step();
  DT_CUDA_CHECK(cudaDeviceSynchronize());
  t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) lean_step();
  DT_CUDA_CHECK(cudaDeviceSynchronize());
  const double us_lean =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() /
      reps;
  std::printf("  adamw 64M params, lean pair + bf16 moments: %.1f us (%.0f GB/s)\n", us_lean,
              double(n) * 20 / us_lean * 1e-3);
}
