// LoRA in the model (model/adapters.h, model/proj.h): the adapted model is the merged model.
// With W' = W + s B A for every adapted module, the adapted model's loss equals the merged
// model's, and the chain rule gives the adapters' exact gradients from the merged model's weight
// gradient G = dL/dW': dA = s B^T G, dB = s G A^T. This holds for every block type, the MoE
// router (adapted in f32) and the MTP loss's share. Also: the base gets no gradient, a pack
// equals its samples alone, the training step moves only the adapters, and bad set-ups fail.
#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <random>

#include "bf16_bound.h"
#include "model/adapters.h"
#include "model/init.h"
#include "model/model.h"
#include "model_fixture.h"
#include "ops/tensor.h"
#include "test_device.h"
#include "test_util.h"
#include "train/engine.h"
#include "train/optimizer.h"

using namespace deltatron;

namespace {

double rel_rms(const std::vector<double>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// Options adapting every linear layer of the decoder (and, for MoE, the router and the shared
// expert's gate), with random non-zero B so that every gradient is non-zero.
model::LoraSetup random_setup(const model::Config& c, int64_t r, double alpha, bool rslora) {
  model::LoraSetup s;
  s.options.r = r;
  s.options.alpha = alpha;
  s.options.rslora = rslora;
  s.options.targets = {"all-linear"};
  if (c.is_moe()) {
    s.options.targets = {"all-linear", "gate", "shared_expert_gate"};
    s.options.experts = true;
  }
  const auto mods = model::lora_modules(c, s.options, "test");
  s.adapters = model::lora_init(mods, r, 5);
  std::mt19937_64 rng(9);
  std::normal_distribution<double> nd(0.0, 0.3);
  for (const auto& m : mods)
    for (float& v : s.adapters.at(model::lora_b_key(m.name)).data) v = float(nd(rng));
  return s;
}

// W + s B A in double, rounded once.
model::TensorMap merged(const model::Config& c, const model::TensorMap& base,
                        const model::LoraSetup& s) {
  model::TensorMap out = base;
  const double sc = s.options.scale();
  const int64_t r = s.options.r;
  for (const auto& m : model::lora_modules(c, s.options, "test")) {
    const float* A0 = s.adapters.at(model::lora_a_key(m.name)).ptr();
    const float* B0 = s.adapters.at(model::lora_b_key(m.name)).ptr();
    float* W0 = out.at(m.weight).ptr();
    for (int64_t e = 0; e < std::max<int64_t>(m.experts, 1); ++e) {  // expert e's slices
      const float *A = A0 + e * r * m.in, *B = B0 + e * m.out * r;
      float* W = W0 + e * m.out * m.in;
      for (int64_t o = 0; o < m.out; ++o)
        for (int64_t i = 0; i < m.in; ++i) {
          double acc = 0;
          for (int64_t k = 0; k < r; ++k) acc += double(B[o * r + k]) * A[k * m.in + i];
          W[o * m.in + i] = float(double(W[o * m.in + i]) + sc * acc);
        }
    }
  }
  return out;
}

void check_merged_identity(const model::Config& c, bool rslora) {
  const model::TensorMap base = dt_test::random_params(c, 3);
  const model::LoraSetup s = random_setup(c, 3, 5.0, rslora);
  const auto samples = dt_test::make_samples({5, 40, 70}, c.vocab_size, 17, 4);
  const data::Pack pack = dt_test::pack_of(samples, {0, 1, 2}, 8);
  model::ModelOptions mo;
  mo.mtp_ce_scale = 0.3f;

  model::Model lora(dt_test::test_device(), core::DType::f32, c, base, {}, &s);
  const model::PackLoss got = lora.fwd_bwd(pack, true, mo);
  model::TensorMap g_ad = model::zeros_like(s.adapters);
  lora.trainable().download_grads(g_ad);
  EXPECT_TRUE(lora.params().frozen());
  EXPECT_TRUE(lora.params().g(c.name("embed_tokens.weight")).empty());

  const model::TensorMap mp = merged(c, base, s);
  model::Model full(dt_test::test_device(), core::DType::f32, c, mp);
  const model::PackLoss want = full.fwd_bwd(pack, true, mo);
  model::TensorMap g_full = model::zeros_like(mp);
  full.params().download_grads(g_full);

  for (size_t i = 0; i < want.loss_sum.size(); ++i)
    EXPECT_NEAR(got.loss_sum[i], want.loss_sum[i], 2e-5 * std::abs(want.loss_sum[i])) << i;
  for (size_t i = 0; i < want.mtp_loss_sum.size(); ++i)
    EXPECT_NEAR(got.mtp_loss_sum[i], want.mtp_loss_sum[i], 2e-5 * std::abs(want.mtp_loss_sum[i]));

  const double sc = s.options.scale();
  const int64_t r = s.options.r;
  int checked = 0;
  for (const auto& m : model::lora_modules(c, s.options, "test")) {
    const int64_t E = std::max<int64_t>(m.experts, 1);
    const float* A0 = s.adapters.at(model::lora_a_key(m.name)).ptr();
    const float* B0 = s.adapters.at(model::lora_b_key(m.name)).ptr();
    const float* G0 = g_full.at(m.weight).ptr();
    std::vector<double> wa(size_t(E * r * m.in), 0.0), wb(size_t(E * m.out * r), 0.0), ga, gb;
    for (int64_t e = 0; e < E; ++e) {
      const float *A = A0 + e * r * m.in, *B = B0 + e * m.out * r, *G = G0 + e * m.out * m.in;
      double *a = wa.data() + e * r * m.in, *b = wb.data() + e * m.out * r;
      for (int64_t o = 0; o < m.out; ++o)
        for (int64_t i = 0; i < m.in; ++i)
          for (int64_t k = 0; k < r; ++k) {
            a[k * m.in + i] += sc * B[o * r + k] * G[o * m.in + i];
            b[o * r + k] += sc * G[o * m.in + i] * A[k * m.in + i];
          }
    }
    for (float v : g_ad.at(model::lora_a_key(m.name)).data) ga.push_back(v);
    for (float v : g_ad.at(model::lora_b_key(m.name)).data) gb.push_back(v);
    EXPECT_LT(rel_rms(ga, wa), dt_test::grad_tol(2e-4)) << m.name << " lora_A";
    EXPECT_LT(rel_rms(gb, wb), dt_test::grad_tol(2e-4)) << m.name << " lora_B";
    ++checked;
  }
  EXPECT_EQ(checked * 2, static_cast<int>(s.adapters.size()));
}

bool same(const model::TensorMap& a, const model::TensorMap& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [name, t] : a)
    if (!b.count(name) || b.at(name).data != t.data) return false;
  return true;
}

model::Config dense() { return model::parse_config(dt_test::tiny_config_json(), "tiny"); }

}  // namespace

TEST(LoraModel, DenseEqualsMergedModel) { check_merged_identity(dense(), false); }
TEST(LoraModel, MoeMtpRouterExpertsEqualsMergedModel) {
  check_merged_identity(dt_test::tiny_moe_mtp_config(), true);
}

TEST(LoraModel, PackEqualsSamplesAlone) {
  const model::Config c = dt_test::tiny_moe_mtp_config();
  const model::TensorMap base = dt_test::random_params(c, 4);
  const model::LoraSetup s = random_setup(c, 2, 4.0, false);
  const auto samples = dt_test::make_samples({3, 64, 66}, c.vocab_size, 21, 3);
  model::Model m(dt_test::test_device(), core::DType::f32, c, base, {}, &s);
  model::ModelOptions mo;
  const model::PackLoss packed = m.fwd_bwd(dt_test::pack_of(samples, {2, 0, 1}, 16), true, mo);
  model::TensorMap g_pack = model::zeros_like(s.adapters);
  m.trainable().download_grads(g_pack);
  m.trainable().zero_grads();
  std::vector<double> alone;
  for (int64_t i = 0; i < 3; ++i)
    alone.push_back(m.fwd_bwd(dt_test::pack_of(samples, {i}, 1), true, mo).loss_sum[0]);
  model::TensorMap g_alone = model::zeros_like(s.adapters);
  m.trainable().download_grads(g_alone);
  EXPECT_NEAR(packed.loss_sum[1], alone[0], 1e-5 * std::abs(alone[0]));
  EXPECT_NEAR(packed.loss_sum[2], alone[1], 1e-5 * std::abs(alone[1]));
  EXPECT_NEAR(packed.loss_sum[0], alone[2], 1e-5 * std::abs(alone[2]));
  for (const auto& [name, t] : g_pack) {
    std::vector<double> a(t.data.begin(), t.data.end());
    std::vector<double> b(g_alone.at(name).data.begin(), g_alone.at(name).data.end());
    EXPECT_LT(rel_rms(a, b), dt_test::grad_tol(1e-5)) << name;
  }
}

TEST(LoraModel, StepMovesOnlyTheAdapters) {
  const model::Config c = dense();
  model::TensorMap base = dt_test::random_params(c, 5);
  model::LoraSetup s;
  s.options.r = 4;
  s.adapters = model::lora_init(model::lora_modules(c, s.options, "test"), 4, 1);
  const model::TensorMap base0 = base, ad0 = s.adapters;
  model::TensorMap ad = s.adapters;
  train::AdamW opt(ad, train::AdamWOptions{});
  auto e =
      train::make_engine(dt_test::kOnCuda ? "cuda" : "cpu", "bf16", c, base, &opt, false, {}, &s);
  const auto samples = dt_test::make_samples({30, 50}, c.vocab_size, 2, 4);
  for (int step = 0; step < 2; ++step) {
    e->zero_grads();
    e->fwd_bwd(dt_test::pack_of(samples, {0, 1}, 1), true, {});
    EXPECT_TRUE(std::isfinite(e->clip(1.0)));
    e->step(opt, 1e-2);
  }
  e->sync_to_host(ad, opt);
  EXPECT_EQ(opt.step_count(), 2);
  // B starts at zero (PEFT's init) and moves; A moves from the second step on.
  for (const auto& [name, t] : ad) EXPECT_NE(t.data, ad0.at(name).data) << name;
  EXPECT_TRUE(same(base, base0));
}

TEST(LoraModel, BadSetupsFailClearly) {
  const model::Config c = dense();
  const model::TensorMap base = dt_test::random_params(c, 6);
  model::LoraSetup s;
  s.options.r = 2;
  const auto mods = model::lora_modules(c, s.options, "test");
  s.adapters = model::lora_init(mods, 2, 1);
  const auto make = [&](const model::LoraSetup& x, const model::StateOptions& st = {}) {
    model::Model m(core::Device::cpu, core::DType::f32, c, base, st, &x);
  };
  model::LoraSetup drop = s;
  drop.options.dropout = 1.0;
  EXPECT_NE(dt_test::error_of([&] { make(drop); }).find("lora.dropout"), std::string::npos);
  model::LoraSetup head = s;
  head.options.targets = {"lm_head"};
  head.adapters = model::lora_init(model::lora_modules(c, head.options, "test"), 2, 1);
  EXPECT_NE(dt_test::error_of([&] { make(head); }).find("lm_head"), std::string::npos);
  model::LoraSetup shape = s;
  shape.adapters.at(model::lora_a_key(mods[0].name)) = core::Tensor({3, mods[0].in});
  EXPECT_NE(dt_test::error_of([&] { make(shape); }).find(model::lora_a_key(mods[0].name)),
            std::string::npos);
  model::LoraSetup missing = s;
  missing.adapters.erase(model::lora_b_key(mods[1].name));
  EXPECT_NE(dt_test::error_of([&] { make(missing); }).find("missing"), std::string::npos);
  model::StateOptions off;
  off.offload_moments = true;
  EXPECT_NE(dt_test::error_of([&] { make(s, off); }).find("LoRA"), std::string::npos);
}

TEST(LoraModel, InitIsPeftKaimingUniformAndZeroB) {
  const model::Config c = dense();
  model::LoraOptions o;
  o.r = 8;
  const auto mods = model::lora_modules(c, o, "test");
  const model::TensorMap a = model::lora_init(mods, 8, 3);
  EXPECT_TRUE(same(a, model::lora_init(mods, 8, 3)));
  EXPECT_FALSE(same(a, model::lora_init(mods, 8, 4)));
  for (const auto& m : mods) {
    const auto& A = a.at(model::lora_a_key(m.name)).data;
    const double bound = 1.0 / std::sqrt(double(m.in));
    double mx = 0;
    for (float v : A) {
      EXPECT_LE(std::abs(v), bound);
      mx = std::max(mx, double(std::abs(v)));
    }
    EXPECT_GT(mx, 0.8 * bound) << m.name;
    for (float v : a.at(model::lora_b_key(m.name)).data) EXPECT_EQ(v, 0.f);
  }
}

// lora.dropout (PEFT's: the adapter sees dropout(x), the base x): with a fixed mask key the loss is
// a deterministic function of the adapters, and the backward's gradient (the mask regenerated from
// its key on the input and the input gradient) matches its central differences along a random
// direction. Same key: bitwise the same; no gradients (evaluation): no dropout.
TEST(LoraModel, DropoutGradientMatchesFiniteDifferences) {
  const model::Config c = dense();
  const model::TensorMap base = model::init_params(c, 12, 0.1);  // smooth enough for differences
  model::LoraSetup s = random_setup(c, 3, 6.0, false);
  s.options.dropout = 0.3;
  for (auto& [name, t] : s.adapters)  // a gentle adapter: the loss stays smooth at eps
    if (name.ends_with("lora_B.weight"))
      for (float& v : t.data) v *= 0.1f;
  const auto samples = dt_test::make_samples({17, 70}, c.vocab_size, 3, 4);
  const data::Pack pack = dt_test::pack_of(samples, {0, 1}, 8);
  model::ModelOptions mo;
  mo.dropout_key = 0x1234567;
  const auto loss_of = [&](const model::LoraSetup& x, bool grads, model::TensorMap* g) {
    model::Model m(dt_test::test_device(), core::DType::f32, c, base, {}, &x);
    const auto pl = m.fwd_bwd(pack, grads, mo);
    if (g) m.trainable().download_grads(*g);
    double sum = 0;
    for (double v : pl.loss_sum) sum += v;
    return sum;
  };
  model::TensorMap g = model::zeros_like(s.adapters);
  const double l0 = loss_of(s, true, &g);
  EXPECT_EQ(loss_of(s, true, nullptr), l0);  // the same key, the same masks
  model::LoraSetup plain = s;
  plain.options.dropout = 0;
  const double l_plain = loss_of(plain, true, nullptr);
  EXPECT_NE(l0, l_plain);
  EXPECT_EQ(loss_of(s, false, nullptr), loss_of(plain, false, nullptr));  // evaluation

  std::mt19937_64 rng(4);
  std::normal_distribution<double> nd(0.0, 1.0);
  model::TensorMap dir = model::zeros_like(s.adapters);
  double want = 0;
  for (auto& [name, t] : dir)
    for (size_t i = 0; i < t.data.size(); ++i) {
      t.data[i] = float(nd(rng));
      want += double(t.data[i]) * g.at(name).data[i];
    }
  const double eps = 1e-4;  // the tiny model is strongly curved along a random direction
  model::LoraSetup plus = s, minus = s;
  for (auto& [name, t] : dir)
    for (size_t i = 0; i < t.data.size(); ++i) {
      plus.adapters.at(name).data[i] += float(eps * t.data[i]);
      minus.adapters.at(name).data[i] -= float(eps * t.data[i]);
    }
  const double fd = (loss_of(plus, true, nullptr) - loss_of(minus, true, nullptr)) / (2 * eps);
  EXPECT_NEAR(fd, want, 5e-3 * std::abs(want)) << "fd " << fd << " backward " << want;
}

TEST(LoraModel, DropoutMaskKeepsOneMinusPScaled) {
  const int64_t n = 200000;
  core::Tensor x({n});
  std::fill(x.data.begin(), x.data.end(), 1.f);
  core::Tensor y({n});
  ops::dropout(core::View::of(x), core::View::of(y), 0.25, 99, n);
  int64_t kept = 0;
  for (float v : y.data) {
    EXPECT_TRUE(v == 0.f || v == float(1.0 / 0.75));
    kept += v != 0.f;
  }
  EXPECT_NEAR(double(kept) / double(n), 0.75, 5e-3);
  core::Tensor z({n});
  ops::dropout(core::View::of(x), core::View::of(z), 0.25, 100, n);
  EXPECT_NE(y.data, z.data);
}

// A window (tensor parallelism: a row-parallel adapter's input is a rank's columns): the pieces
// of [7, 12] taken as 3 windows of 4 columns are the whole input's masks, column for column; the
// window covering every column is the whole mask (one rank's, bitwise).
TEST(LoraModel, DropoutWindowTakesTheWholeMasksColumns) {
  const int64_t rows = 7, ld = 12, P = 3, cols = ld / P;
  core::Tensor x({rows * ld}), whole({rows * ld}), same({rows * ld});
  for (int64_t i = 0; i < rows * ld; ++i) x.data[size_t(i)] = 1.f + float(i);
  ops::dropout(core::View::of(x), core::View::of(whole), 0.5, 7, rows * ld);
  ops::dropout(core::View::of(x), core::View::of(same), 0.5, 7, rows * ld,
               ops::MaskWindow{ld, ld, 0});
  EXPECT_EQ(same.data, whole.data);
  int64_t kept = 0, mismatches = 0;
  for (int64_t q = 0; q < P; ++q) {
    core::Tensor xq({rows * cols}), yq({rows * cols});
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < cols; ++j)
        xq.data[size_t(r * cols + j)] = x.data[size_t(r * ld + q * cols + j)];
    ops::dropout(core::View::of(xq), core::View::of(yq), 0.5, 7, rows * cols,
                 ops::MaskWindow{cols, ld, q * cols});
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < cols; ++j) {
        const float got = yq.data[size_t(r * cols + j)];
        const float want = whole.data[size_t(r * ld + q * cols + j)];
        if (got != want && mismatches++ == 0)
          ADD_FAILURE() << "rank " << q << " row " << r << " column " << j << ": " << got
                        << " vs the whole input's " << want;
        kept += got != 0.f;
      }
  }
  EXPECT_EQ(mismatches, 0);
  EXPECT_GT(kept, 0);
  EXPECT_LT(kept, rows * ld);  // some of each: the comparison sees the masks
  core::Tensor bad({rows * cols});
  EXPECT_NE(dt_test::error_of([&] {
              ops::dropout(core::View::of(bad), core::View::of(bad), 0.5, 7, rows * cols,
                           ops::MaskWindow{cols, ld, ld - 1});
            }).find("does not fit"),
            std::string::npos);
}

// On CUDA in bf16 (the adapters' bf16 compute copies feed the GEMMs): close to the f32 model. This
// random tiny model is badly conditioned for bf16: the same pack's FULL fine-tune gradients differ
// between bf16 and f32 by up to 9x their size in the first layers (measured on an H100), so the
// conditioned bound of docs/tolerances.md (max(5e-2, 3 x the fp32 gradient's change when the base
// weights are rounded to bf16)) does not describe it. An adapter's gradient is the base weight's
// gradient projected (dB = s dW A^T, dA = s B^T dW), so here the bound per adapter tensor also
// admits 1.5 x the engine's own full fine-tune bf16 error on its base weight: LoRA in bf16 no
// worse than full fine-tuning in bf16. The well-conditioned check with the plain conditioned bound
// is GoldenLora.Bf16TracksFp32OnCuda (PEFT's adapters on HF-initialised weights).
TEST(LoraModel, Bf16TracksFp32) {
  if (!dt_test::kOnCuda) GTEST_SKIP() << "bf16 compute is CUDA's";
  const model::Config c = dense();
  const model::TensorMap base = dt_test::random_params(c, 8);
  const model::TensorMap rounded = dt_test::rounded_to_bf16(base);
  const model::LoraSetup s = random_setup(c, 8, 16.0, false);
  const auto samples = dt_test::make_samples({20, 90}, c.vocab_size, 5, 4);
  const data::Pack pack = dt_test::pack_of(samples, {0, 1}, 8);
  struct Run {
    std::vector<double> loss;
    model::TensorMap g;
  };
  const auto run = [&](core::DType dt, const model::TensorMap& w) {
    Run r{{}, model::zeros_like(s.adapters)};
    model::Model m(core::Device::cuda, dt, c, w, {}, &s);
    r.loss = m.fwd_bwd(pack, true, {}).loss_sum;
    m.trainable().download_grads(r.g);
    return r;
  };
  const Run f32 = run(core::DType::f32, base), f32r = run(core::DType::f32, rounded),
            bf16 = run(core::DType::bf16, base);
  for (size_t i = 0; i < f32.loss.size(); ++i)
    EXPECT_NEAR(bf16.loss[i], f32.loss[i], 2e-2 * std::abs(f32.loss[i]));
  const auto vec = [](const core::Tensor& t) {
    return std::vector<double>(t.data.begin(), t.data.end());
  };
  std::map<std::string, double> full_err;  // base weight -> its full fine-tune bf16 error
  {  // the same pack's full fine-tune, bf16 vs f32, per base weight
    const auto full = [&](core::DType dt) {
      model::TensorMap g = model::zeros_like(base);
      model::Model m(core::Device::cuda, dt, c, base);
      m.fwd_bwd(pack, true, {});
      m.trainable().download_grads(g);
      return g;
    };
    const model::TensorMap g32 = full(core::DType::f32), g16 = full(core::DType::bf16);
    for (const auto& [name, t] : g32) full_err[name] = rel_rms(vec(g16.at(name)), vec(t));
  }
  for (const auto& [name, t] : f32.g) {
    const double sens = rel_rms(vec(f32r.g.at(name)), vec(t)),
                 err = rel_rms(vec(bf16.g.at(name)), vec(t));
    // "<module>.lora_A.weight" adapts "<module>.weight"
    const std::string base_name = name.substr(0, name.rfind(".lora_")) + ".weight";
    ASSERT_TRUE(full_err.count(base_name)) << base_name;
    const double full = full_err.at(base_name);
    std::printf("  %-56s bf16 %.3e  f32 with bf16-rounded base %.3e  full fine-tune %.3e\n",
                name.c_str(), err, sens, full);
    EXPECT_LT(err, std::max({5e-2, 3 * sens, 1.5 * full})) << name;
  }
}
