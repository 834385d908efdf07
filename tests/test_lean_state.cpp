// The lean training state (training.master = "remainder", training.moments = "bf16"): the bit
// scheme of core/bf16.h (the pair rebuilds every fp32 pattern; its weight is the nearest bf16 with
// ties away from zero; stochastic rounding is unbiased), the AdamW op's CPU branch on every
// storage against a plain scalar loop, the engine (remainder = fp32 bitwise over 200 steps), the
// trainer on the bundled example (remainder = fp32 bitwise; bf16 moments resume bitwise and are
// saved as BF16), the config errors and `deltatron bench`'s state report.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "core/bf16.h"
#include "engine_run.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "model/params.h"
#include "model_fixture.h"
#include "ops/adamw.h"
#include "test_util.h"
#include "train/bench.h"
#include "train/checkpoint_dir.h"
#include "train/engine.h"
#include "train/optimizer.h"
#include "train/train_config.h"
#include "train/trainer.h"

using namespace deltatron;
namespace fs = std::filesystem;

namespace {

const fs::path kExamples = fs::path(DT_TEST_DATA) / ".." / ".." / "examples";

uint32_t bits(float x) { return core::f32_bits(x); }

// ---- the bit scheme ------------------------------------------------------------------------

// Every high half with low halves at and around the tie and random ones: the pair rebuilds the
// pattern exactly, and its weight is the nearest bf16 (ties away from zero), which equals RNE
// except on ties.
TEST(LeanBits, SplitJoinIsExactAndWeightIsNearestTiesAway) {
  std::mt19937 rng(5);
  int64_t checked = 0, ties_differing_from_rne = 0;
  for (uint32_t hi = 0; hi < 65536; ++hi) {
    std::vector<uint32_t> los = {0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF};
    for (int k = 0; k < 4; ++k) los.push_back(rng() & 0xFFFF);
    for (uint32_t lo : los) {
      const uint32_t P = (hi << 16) | lo;
      const float x = core::f32_from_bits(P);
      uint16_t w = 0, r = 0;
      core::master_split(x, w, r);
      ASSERT_EQ(bits(core::master_join(w, r)), P) << "pattern " << P;
      ASSERT_EQ(r, lo);
      ASSERT_EQ(w, core::bf16_round_ties_away(x));
      ++checked;
      if (!std::isfinite(x) || !std::isfinite(core::bf16_to_f32(w))) continue;
      // nearest, ties away from zero, judged in double
      const double xd = x, wd = core::bf16_to_f32(w);
      const double down = core::bf16_to_f32(uint16_t(hi));
      const double up = core::bf16_to_f32(uint16_t(hi + 1));
      const double best = std::min(std::abs(xd - down), std::abs(xd - up));
      ASSERT_EQ(std::abs(xd - wd), best) << "pattern " << P;
      if (std::abs(xd - down) == std::abs(xd - up) && lo != 0) {
        ASSERT_GE(std::abs(wd), std::abs(xd)) << "tie not away from zero, pattern " << P;
      }
      if (lo != 0x8000) {
        ASSERT_EQ(w, core::bf16_round_nearest_even(x)) << "pattern " << P;
      } else if (w != core::bf16_round_nearest_even(x)) {
        ++ties_differing_from_rne;
      }
    }
  }
  EXPECT_GT(ties_differing_from_rne, 0);
  std::printf("  %lld patterns; %lld ties round away from zero where RNE rounds to even\n",
              (long long)checked, (long long)ties_differing_from_rne);
}

// Averaged over all 2^16 random inputs the stochastic rounding returns x exactly (the sum of
// 65536 values of two adjacent bf16s is exact in double); bf16 values and zeros never move.
TEST(LeanBits, StochasticRoundingIsUnbiasedAndKeepsBf16Values) {
  const std::vector<float> xs = dt_test::randn<float>(64, 9, 1.0);
  for (size_t k = 0; k < xs.size(); ++k) {
    const float x = xs[k] * std::ldexp(1.0f, int(k % 40) - 20);
    double sum = 0;
    for (uint32_t r = 0; r < 65536; ++r)
      sum += core::bf16_to_f32(core::bf16_round_stochastic(x, r));
    EXPECT_EQ(sum / 65536.0, double(x)) << "x = " << x;
    const float b = core::bf16_to_f32(core::bf16_round_nearest_even(x));
    for (uint32_t r : {0u, 1u, 0x7FFFu, 0x8000u, 0xFFFFu}) {
      EXPECT_EQ(bits(core::bf16_to_f32(core::bf16_round_stochastic(b, r))), bits(b));
      EXPECT_EQ(core::bf16_round_stochastic(0.0f, r), 0u);
    }
  }
}

// ---- the AdamW op's CPU branch against a plain scalar loop ---------------------------------

// Stochastic rounding written out: up (in magnitude) when the dropped low half plus r carries.
float reference_stochastic(float x, uint32_t r) {
  const uint32_t u = bits(x);
  const uint32_t down = u & 0xFFFF0000u;
  return core::f32_from_bits((u & 0xFFFFu) + (r & 0xFFFFu) >= 0x10000u ? down + 0x10000u : down);
}

struct RefTensor {  // the scalar loop's state: fp32 master, moments held as floats
  std::vector<float> p, m, v;
};

// One step of the plain loop (torch.optim.AdamW's order, float32), moments rounded
// stochastically when bf16 with the contract's bits.
void reference_step(RefTensor& t, const std::vector<float>& g, const ops::AdamWArgs& a, double wd,
                    bool bf16_moments, int64_t index) {
  const double bc1 = 1.0 - std::pow(a.beta1, double(a.step));
  const double bc2 = 1.0 - std::pow(a.beta2, double(a.step));
  const uint64_t key = core::random_key(a.seed, uint64_t(a.step));
  for (size_t i = 0; i < t.p.size(); ++i) {
    const float gi = a.grad_scale == 1.0f ? g[i] : g[i] * a.grad_scale;
    float p = t.p[i] * float(1.0 - a.lr * wd);
    const float m = float(a.beta1) * t.m[i] + float(1.0 - a.beta1) * gi;
    const float v = float(a.beta2) * t.v[i] + float(1.0 - a.beta2) * (gi * gi);
    p -= float(a.lr / bc1) * (m / (std::sqrt(v) / float(std::sqrt(bc2)) + float(a.eps)));
    t.p[i] = p;
    if (bf16_moments) {
      const uint64_t b = core::random_bits(key, uint64_t(index) + i);
      t.m[i] = reference_stochastic(m, uint32_t(b));
      t.v[i] = reference_stochastic(v, uint32_t(b >> 16));
    } else {
      t.m[i] = m;
      t.v[i] = v;
    }
  }
}

core::View host_view(void* p, core::DType dt, int64_t n) {
  return core::View(p, dt, core::Device::cpu, {n});
}

// Every storage (fp32 / remainder master x fp32 / bf16 moments) on tensors of odd sizes, with
// clipping and weight decay, 12 steps: bitwise the scalar loop; the pair rebuilds its master.
TEST(LeanAdamW, CpuBranchMatchesScalarLoopOnEveryStorage) {
  const std::vector<int64_t> sizes = {1, 7, 2049, 40000};
  for (bool remainder : {false, true})
    for (bool bf16_moments : {false, true}) {
      SCOPED_TRACE(std::string("master ") + (remainder ? "remainder" : "fp32") + ", moments " +
                   (bf16_moments ? "bf16" : "fp32"));
      std::vector<RefTensor> ref;
      // the op's storage
      std::vector<std::vector<float>> master, out, mf, vf;
      std::vector<std::vector<uint16_t>> weight, rem, mb, vb;
      int64_t index = 0;
      std::vector<int64_t> indices;
      for (size_t k = 0; k < sizes.size(); ++k) {
        const int64_t n = sizes[k];
        RefTensor r{dt_test::randn<float>(n, 10 + k, 0.05), std::vector<float>(n, 0.f),
                    std::vector<float>(n, 0.f)};
        ref.push_back(r);
        master.push_back(r.p);
        out.push_back(std::vector<float>(n, NAN));
        mf.push_back(std::vector<float>(n, 0.f));
        vf.push_back(std::vector<float>(n, 0.f));
        weight.push_back(std::vector<uint16_t>(n));
        rem.push_back(std::vector<uint16_t>(n));
        for (int64_t i = 0; i < n; ++i) core::master_split(r.p[i], weight[k][i], rem[k][i]);
        mb.push_back(std::vector<uint16_t>(n, 0));
        vb.push_back(std::vector<uint16_t>(n, 0));
        indices.push_back(index);
        index += n + 64;
      }
      for (int step = 1; step <= 12; ++step) {
        ops::AdamWArgs a;
        a.lr = 1e-3 * (1 + step % 3);
        a.beta1 = 0.9;
        a.beta2 = 0.95;
        a.step = step;
        a.grad_scale = step % 4 == 0 ? 0.37f : 1.0f;
        a.seed = 77;
        std::vector<ops::AdamWTensor> ts;
        std::vector<std::vector<float>> grads;
        for (size_t k = 0; k < sizes.size(); ++k) {
          const int64_t n = sizes[k];
          grads.push_back(dt_test::randn<float>(n, 1000 * step + k, k == 2 ? 1e-3 : 1.0));
          const double wd = k % 2 ? 0.1 : 0.0;
          reference_step(ref[k], grads[k], a, wd, bf16_moments, indices[k]);
          ops::AdamWTensor t;
          t.grad = host_view(grads[k].data(), core::DType::f32, n);
          if (remainder) {
            t.compute_copy = host_view(weight[k].data(), core::DType::bf16, n);
            t.remainder = host_view(rem[k].data(), core::DType::u16, n);
            if (k % 2) t.master = host_view(out[k].data(), core::DType::f32, n);
          } else {
            t.master = host_view(master[k].data(), core::DType::f32, n);
            if (k % 2) t.compute_copy = host_view(out[k].data(), core::DType::f32, n);
          }
          if (bf16_moments) {
            t.m = host_view(mb[k].data(), core::DType::bf16, n);
            t.v = host_view(vb[k].data(), core::DType::bf16, n);
          } else {
            t.m = host_view(mf[k].data(), core::DType::f32, n);
            t.v = host_view(vf[k].data(), core::DType::f32, n);
          }
          t.weight_decay = wd;
          t.index = indices[k];
          ts.push_back(t);
        }
        ops::adamw_step_multi(ts, a);
        for (size_t k = 0; k < sizes.size(); ++k) {
          const int64_t n = sizes[k];
          int64_t p_bad = 0, m_bad = 0, copy_bad = 0;
          for (int64_t i = 0; i < n; ++i) {
            const float p = remainder ? core::master_join(weight[k][i], rem[k][i]) : master[k][i];
            p_bad += bits(p) != bits(ref[k].p[i]);
            if (remainder) p_bad += weight[k][i] != core::bf16_round_ties_away(ref[k].p[i]);
            const float m = bf16_moments ? core::bf16_to_f32(mb[k][i]) : mf[k][i];
            const float v = bf16_moments ? core::bf16_to_f32(vb[k][i]) : vf[k][i];
            m_bad += (bits(m) != bits(ref[k].m[i])) + (bits(v) != bits(ref[k].v[i]));
            if (k % 2) copy_bad += bits(out[k][i]) != bits(ref[k].p[i]);
          }
          ASSERT_EQ(p_bad, 0) << "master, tensor " << k << " step " << step;
          ASSERT_EQ(m_bad, 0) << "moments, tensor " << k << " step " << step;
          ASSERT_EQ(copy_bad, 0) << "f32 copy / master out, tensor " << k << " step " << step;
        }
      }
    }
}

// The bf16 copy of an f32 master rounds as the pair's weight.
TEST(LeanAdamW, ComputeCopyRoundsTiesAway) {
  std::vector<float> x = dt_test::randn<float>(1000, 3);
  x[0] = core::f32_from_bits(0x3F808000u);  // a tie with an even high half: RNE keeps it
  std::vector<uint16_t> copy(x.size());
  ops::adamw_compute_copy(host_view(x.data(), core::DType::f32, 1000),
                          host_view(copy.data(), core::DType::bf16, 1000), 1000);
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(copy[i], core::bf16_round_ties_away(x[i]));
  EXPECT_EQ(copy[0], 0x3F81u);
}

TEST(LeanAdamW, Errors) {
  std::vector<float> p(5), m(5), v(5), g(5);
  std::vector<uint16_t> w(5), r(5), r4(4);
  ops::AdamWArgs a;
  ops::AdamWTensor t;
  t.m = host_view(m.data(), core::DType::f32, 5);
  t.v = host_view(v.data(), core::DType::f32, 5);
  t.grad = host_view(g.data(), core::DType::f32, 5);
  t.remainder = host_view(r.data(), core::DType::u16, 5);
  std::vector<ops::AdamWTensor> ts = {t};
  dt_test::expect_error([&] { ops::adamw_step_multi(ts, a); },
                        {"ops::adamw_step_multi", "tensor 0", "remainder but no compute_copy"});
  ts[0].compute_copy = host_view(p.data(), core::DType::f32, 5);
  dt_test::expect_error([&] { ops::adamw_step_multi(ts, a); },
                        {"ops::adamw_step_multi", "tensor 0 compute_copy", "expected bf16"});
  ts[0].compute_copy = host_view(w.data(), core::DType::bf16, 5);
  ts[0].remainder = host_view(r4.data(), core::DType::u16, 4);
  dt_test::expect_error([&] { ops::adamw_step_multi(ts, a); },
                        {"ops::adamw_step_multi", "tensor 0 m", "with 4 elements"});
  ts[0].remainder = host_view(r.data(), core::DType::u16, 5);
  ts[0].v = host_view(w.data(), core::DType::bf16, 5);  // m f32, v bf16
  dt_test::expect_error([&] { ops::adamw_step_multi(ts, a); },
                        {"ops::adamw_step_multi", "tensor 0 v", "expected f32"});
}

// ---- the engine: remainder = fp32, bitwise, over 200 steps ---------------------------------

void expect_bitwise(const model::TensorMap& a, const model::TensorMap& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    const auto& u = b.at(name);
    ASSERT_EQ(t.numel(), u.numel());
    EXPECT_EQ(std::memcmp(t.ptr(), u.ptr(), size_t(t.numel()) * 4), 0) << what << ": " << name;
  }
}

// A tiny MoE + MTP model (the router weights are read in f32), 200 AdamW steps on the CPU engine
// with fp32 and with bf16 moments: training with the lean pair is bitwise training with fp32
// masters.
TEST(LeanEngine, RemainderIsBitwiseFp32Over200Steps) {
  const model::Config c = dt_test::tiny_moe_mtp_config();
  const model::TensorMap init = dt_test::random_params(c, 11);
  const auto samples = dt_test::make_samples({9, 23, 5, 17, 30, 12}, c.vocab_size, 4, 3);
  const std::vector<data::Pack> packs = {dt_test::pack_of(samples, {0, 1}, 1),
                                         dt_test::pack_of(samples, {2, 3, 4}, 1),
                                         dt_test::pack_of(samples, {5}, 1)};
  for (bool bf16_moments : {false, true}) {
    SCOPED_TRACE(bf16_moments ? "bf16 moments" : "fp32 moments");
    const int steps = 200;
    const char* moments = bf16_moments ? "bf16" : "fp32";
    const dt_test::EngineRun a = dt_test::run_engine(
        c, init, packs, steps, model::parse_state_options("fp32", moments, "none", "test"));
    const dt_test::EngineRun b = dt_test::run_engine(
        c, init, packs, steps, model::parse_state_options("remainder", moments, "none", "test"));
    ASSERT_EQ(a.losses.size(), size_t(steps));
    for (size_t s = 0; s < a.losses.size(); ++s)
      ASSERT_EQ(a.losses[s], b.losses[s]) << "step " << s + 1;
    expect_bitwise(a.params, b.params, "weights");
    expect_bitwise(a.m, b.m, "exp_avg");
    expect_bitwise(a.v, b.v, "exp_avg_sq");
    EXPECT_LT(a.losses.back(), a.losses.front());
    if (bf16_moments)  // the moments the engine kept are bf16 values
      for (const auto& [name, t] : a.v)
        for (int64_t i = 0; i < t.numel(); ++i)
          ASSERT_EQ(core::bf16_to_f32(core::bf16_round_nearest_even(t.ptr()[i])), t.ptr()[i]);
  }
}

// ---- the trainer on the bundled example ----------------------------------------------------

class LeanTrainer : public ::testing::Test {
 protected:
  const dt_test::TempDir tmp_{"lean"};
  const fs::path dir_ = tmp_.path;

  train::TrainConfig config(const std::string& toml, const std::string& out,
                            std::vector<std::string> extra) {
    std::vector<std::string> ov = {"training.out_dir=\"" + (dir_ / out).string() + "\"",
                                   "training.micro_batch_tokens=256",
                                   "training.eval_every=0",
                                   "data.eval=\"\"",  // no held-out set: no evaluation
                                   "training.log_every=1",
                                   "training.keep_last=5",
                                   "data.cache_dir=\"" + (dir_ / "cache").string() + "\""};
    ov.insert(ov.end(), extra.begin(), extra.end());
    return train::load_train_config((kExamples / "addition" / toml).string(), ov);
  }
};

// Per step: every number of metrics.jsonl but the timings.
std::vector<nlohmann::json> step_records(const fs::path& metrics) {
  std::vector<nlohmann::json> out;
  std::istringstream in(dt_test::read_file(metrics));
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (!j.contains("loss")) continue;
    for (const char* k : {"tokens_per_s", "elapsed_s", "eta_s", "step_s"}) j.erase(k);
    out.push_back(j);
  }
  return out;
}

// examples/addition (dense) for 12 steps with fp32 masters and with the lean pair: the same
// metrics every step and byte-identical checkpoints (HF weights and fp32 master weights).
TEST_F(LeanTrainer, RemainderRunIsBitwiseFp32Run) {
  const std::vector<std::string> ov = {"training.steps=12", "training.warmup_steps=3",
                                       "training.save_every=0"};
  auto with = [&](std::vector<std::string> v, const std::string& x) {
    v.push_back(x);
    return v;
  };
  train::run_train(config("train.toml", "fp32", ov), false);
  train::run_train(config("train.toml", "rem", with(ov, "training.master=\"remainder\"")), false);
  const auto a = step_records(dir_ / "fp32" / "metrics.jsonl");
  const auto b = step_records(dir_ / "rem" / "metrics.jsonl");
  ASSERT_EQ(a.size(), 12u);
  ASSERT_EQ(a.size(), b.size());
  for (size_t s = 0; s < a.size(); ++s) EXPECT_EQ(a[s], b[s]) << "step " << s + 1;
  const fs::path ca = dir_ / "fp32" / train::checkpoint_dir_name(12);
  const fs::path cb = dir_ / "rem" / train::checkpoint_dir_name(12);
  for (const char* f : {"model.safetensors", "training_state/master_weights.safetensors",
                        "training_state/optimizer.safetensors"})
    EXPECT_EQ(dt_test::read_file(ca / f), dt_test::read_file(cb / f)) << f;
}

// bf16 moments (with the lean pair too): 6 steps straight vs 3 + resume are bitwise; the
// checkpoint keeps the moments as BF16 tensors and the HF weights in the dtypes an fp32-moment
// run saves.
TEST_F(LeanTrainer, Bf16MomentsResumeBitwiseAndSaveAsBf16) {
  const std::vector<std::string> ov = {"training.steps=6", "training.warmup_steps=2",
                                       "training.save_every=3", "training.moments=\"bf16\"",
                                       "training.master=\"remainder\""};
  train::run_train(config("train_moe.toml", "straight", ov), false);
  train::run_train(config("train_moe.toml", "resumed", ov), false);
  fs::remove_all(dir_ / "resumed" / train::checkpoint_dir_name(6));
  train::run_train(config("train_moe.toml", "resumed", ov), true);
  const auto a = step_records(dir_ / "straight" / "metrics.jsonl");
  const auto b = step_records(dir_ / "resumed" / "metrics.jsonl");
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), 9u);  // steps 4-6 logged twice
  for (int s = 3; s < 6; ++s) EXPECT_EQ(b[size_t(6 + s - 3)], a[size_t(s)]) << "step " << s + 1;
  const fs::path ca = dir_ / "straight" / train::checkpoint_dir_name(6);
  const fs::path cb = dir_ / "resumed" / train::checkpoint_dir_name(6);
  for (const char* f : {"model.safetensors", "training_state/master_weights.safetensors",
                        "training_state/optimizer.safetensors"})
    EXPECT_EQ(dt_test::read_file(ca / f), dt_test::read_file(cb / f)) << f;

  const io::SafetensorsFile opt((ca / "training_state" / "optimizer.safetensors").string());
  EXPECT_EQ(opt.metadata().at("moments"), "bf16");
  for (const auto& name : opt.names()) EXPECT_EQ(opt.info(name).dtype, "BF16") << name;
  // The HF files and master weights as an fp32-moment run writes them.
  train::run_train(config("train_moe.toml", "fp32",
                          {"training.steps=3", "training.warmup_steps=2", "training.save_every=3"}),
                   false);
  const fs::path cf = dir_ / "fp32" / train::checkpoint_dir_name(3);
  for (const char* f : {"model.safetensors", "training_state/master_weights.safetensors"}) {
    const io::SafetensorsFile x((ca / f).string()), y((cf / f).string());
    ASSERT_EQ(x.names(), y.names()) << f;
    for (const auto& name : x.names()) EXPECT_EQ(x.info(name).dtype, y.info(name).dtype) << name;
  }
  const io::SafetensorsFile fopt((cf / "training_state" / "optimizer.safetensors").string());
  EXPECT_EQ(fopt.metadata().at("moments"), "fp32");
  for (const auto& name : fopt.names()) EXPECT_EQ(fopt.info(name).dtype, "F32") << name;
  // A bf16-moment checkpoint resumes with fp32 moments (exact widening).
  train::run_train(config("train_moe.toml", "straight",
                          {"training.steps=7", "training.warmup_steps=2", "training.save_every=3"}),
                   true);
}

TEST(LeanConfig, BadValuesAreNamed) {
  const dt_test::TempDir tmp("leancfg");
  const std::string toml = (kExamples / "addition" / "train.toml").string();
  const std::string out = "training.out_dir=\"" + (tmp.path / "o").string() + "\"";
  dt_test::expect_error(
      [&] {
        train::load_train_config(toml, {out, "training.master=\"bf16\""});
      },
      {"training.master must be fp32 or remainder", "'bf16'"});
  dt_test::expect_error(
      [&] {
        train::load_train_config(toml, {out, "training.moments=\"fp8\""});
      },
      {"training.moments must be fp32 or bf16", "'fp8'"});
  dt_test::expect_error(
      [&] {
        train::load_train_config(toml, {out, "training.moments=16"});
      },
      {"training.moments must be a string"});
  const auto c = train::load_train_config(
      toml, {out, "training.master=\"remainder\"", "training.moments=\"bf16\""});
  EXPECT_EQ(c.master, "remainder");
  EXPECT_EQ(c.moments, "bf16");
}

// The host-tensor AdamW::step keeps fp32 moments: with bf16_moments it refuses to run.
TEST(LeanConfig, HostStepRefusesBf16Moments) {
  model::TensorMap p;
  p.emplace("w", core::Tensor({3}));
  train::AdamWOptions o;
  o.bf16_moments = true;
  train::AdamW opt(p, o);
  model::TensorMap g = model::zeros_like(p);
  dt_test::expect_error([&] { opt.step(p, g, 1e-3); }, {"bf16 moments are the engine's"});
}

// Bytes per parameter for the options, and what bench reports.
TEST(LeanBench, StateBytesAndBenchReport) {
  model::StateOptions s;
  EXPECT_EQ(model::state_bytes(core::DType::bf16, s).train, 18);
  s.master_remainder = true;
  EXPECT_EQ(model::state_bytes(core::DType::bf16, s).train, 16);
  s.moments = core::DType::bf16;
  EXPECT_EQ(model::state_bytes(core::DType::bf16, s).train, 12);
  EXPECT_EQ(model::state_bytes(core::DType::bf16, s).held, 8);
  EXPECT_EQ(model::state_bytes(core::DType::f32, s).train, 16);
  EXPECT_EQ(model::state_bytes(core::DType::f32, model::StateOptions{}).train, 16);

  const dt_test::TempDir tmp("leanbench");
  train::BenchOptions o;
  o.device = "cpu";
  o.preset = "tiny-moe";
  o.micro_batch_tokens = 256;
  o.median_len = 64;
  o.min_len = 16;
  o.max_len = 128;
  o.warmup = 1;
  o.steps = 1;
  o.master = "remainder";
  o.moments = "bf16";
  o.json_out = (tmp.path / "b.json").string();
  train::run_bench(o);
  const auto j = nlohmann::json::parse(dt_test::read_file(tmp.path / "b.json"));
  EXPECT_EQ(j["master"], "remainder");
  EXPECT_EQ(j["moments"], "bf16");
  EXPECT_EQ(j["state_bytes_per_param"].get<double>(), 16.0);  // f32 weights + pair on the CPU
}

}  // namespace
