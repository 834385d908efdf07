// AdamW vs a double-precision reference, weight-decay groups, gradient clipping, LR schedule.
#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <numbers>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/config.h"
#include "test_util.h"
#include "train/optimizer.h"
#include "train/schedule.h"

using namespace deltatron;
using train::TensorMap;

namespace {

using dt_test::expect_error;

// A small parameter set with every kind of name the grouping distinguishes.
TensorMap make_params(uint64_t seed) {
  const std::vector<std::pair<std::string, core::Shape>> specs = {
      {"lm_head.weight", {11, 8}},
      {"model.embed_tokens.weight", {11, 8}},
      {"model.layers.0.input_layernorm.weight", {8}},
      {"model.layers.0.linear_attn.A_log", {3}},
      {"model.layers.0.linear_attn.conv1d.weight", {7, 1, 4}},
      {"model.layers.0.linear_attn.dt_bias", {3}},
      {"model.layers.0.linear_attn.norm.weight", {5}},
      {"model.layers.1.self_attn.q_proj.weight", {13, 8}},
      {"model.norm.weight", {8}},
  };
  TensorMap p;
  uint64_t s = seed;
  for (const auto& [name, shape] : specs) {
    core::Tensor t(shape);
    t.data = dt_test::randn<float>(t.data.size(), ++s);
    p.emplace(name, std::move(t));
  }
  return p;
}

TensorMap make_grads(const TensorMap& params, uint64_t seed, double scale) {
  TensorMap g;
  uint64_t s = seed;
  for (const auto& [name, t] : params) {
    core::Tensor x(t.shape);
    x.data = dt_test::randn<float>(x.data.size(), ++s, scale);
    g.emplace(name, std::move(x));
  }
  return g;
}

// torch.optim.AdamW written out in double, one parameter at a time.
struct RefAdamW {
  double beta1, beta2, eps;
  std::map<std::string, std::vector<double>> p, m, v;
  std::map<std::string, double> wd;
  int64_t t = 0;

  void step(const TensorMap& grads, double lr) {
    ++t;
    const double bc1 = 1 - std::pow(beta1, double(t)), bc2 = 1 - std::pow(beta2, double(t));
    for (auto& [name, pv] : p) {
      const std::vector<float>& g = grads.at(name).data;
      for (size_t i = 0; i < pv.size(); ++i) {
        pv[i] *= 1 - lr * wd.at(name);
        m[name][i] = beta1 * m[name][i] + (1 - beta1) * g[i];
        v[name][i] = beta2 * v[name][i] + (1 - beta2) * double(g[i]) * g[i];
        const double m_hat = m[name][i] / bc1, v_hat = v[name][i] / bc2;
        pv[i] -= lr * m_hat / (std::sqrt(v_hat) + eps);
      }
    }
  }
};

// Runs `steps` AdamW steps against the reference; compares parameters, the total update and
// both moments after every step.
void check_against_reference(const train::AdamWOptions& opt, double lr0, int steps,
                             const std::set<std::string>& expect_decay) {
  TensorMap params = make_params(100);
  const TensorMap p0 = params;
  train::AdamW adam(params, opt);
  RefAdamW ref{opt.beta1, opt.beta2, opt.eps, {}, {}, {}, {}, 0};
  for (const auto& [name, t] : params) {
    ref.p[name].assign(t.data.begin(), t.data.end());
    ref.m[name].assign(t.data.size(), 0.0);
    ref.v[name].assign(t.data.size(), 0.0);
    ref.wd[name] = expect_decay.count(name) ? opt.weight_decay : 0.0;
    EXPECT_EQ(adam.decays(name), expect_decay.count(name) != 0) << name;
  }
  for (int s = 0; s < steps; ++s) {
    // Gradient scales change from step to step so that the moments do not settle.
    const TensorMap grads = make_grads(params, 1000 + 17 * s, 0.5 + 0.7 * s);
    const double lr = lr0 * (1.0 + 0.25 * s);
    adam.step(params, grads, lr);
    ref.step(grads, lr);
    ASSERT_EQ(adam.step_count(), s + 1);
    for (const auto& [name, t] : params) {
      const std::string where = name + " after step " + std::to_string(s + 1);
      DT_EXPECT_CLOSE(t.data, ref.p.at(name), 1e-6, "param " + where);
      DT_EXPECT_CLOSE(adam.exp_avg().at(name).data, ref.m.at(name), 1e-6, "exp_avg " + where);
      DT_EXPECT_CLOSE(adam.exp_avg_sq().at(name).data, ref.v.at(name), 1e-6, "exp_avg_sq " + where);
      // The update alone (p - p0): two float32 roundings of p per step (decay, update; |p| ~ 1,
      // so ~4e-8 absolute, measured up to 4.7e-8) against an update of ~lr per step; 2e-7 / lr
      // leaves a 4x margin while catching any wrong term (a missing bias correction or decay
      // is a relative error of 1e-2 or more).
      std::vector<double> got(t.data.size()), want(t.data.size());
      for (size_t i = 0; i < got.size(); ++i) {
        got[i] = double(t.data[i]) - p0.at(name).data[i];
        want[i] = ref.p.at(name)[i] - p0.at(name).data[i];
      }
      DT_EXPECT_CLOSE(got, want, 2e-7 / lr0, "update " + where);
    }
  }
}

const std::set<std::string> kMatrices = {"lm_head.weight",
                                         "model.layers.0.linear_attn.conv1d.weight",
                                         "model.layers.1.self_attn.q_proj.weight"};

}  // namespace

TEST(AdamW, MatchesDoubleReferenceWithDecay) {
  train::AdamWOptions opt;
  opt.beta1 = 0.9;
  opt.beta2 = 0.95;
  opt.eps = 1e-8;
  opt.weight_decay = 0.1;
  check_against_reference(opt, 1e-2, 6, kMatrices);
}

TEST(AdamW, MatchesDoubleReferenceDecayingEmbeddings) {
  train::AdamWOptions opt;
  opt.weight_decay = 0.3;
  opt.eps = 1e-6;
  opt.decay_embeddings = true;
  std::set<std::string> decay = kMatrices;
  decay.insert("model.embed_tokens.weight");
  check_against_reference(opt, 3e-3, 5, decay);
}

TEST(AdamW, MatchesDoubleReferenceWithoutDecay) {
  train::AdamWOptions opt;
  opt.weight_decay = 0.0;
  check_against_reference(opt, 1e-2, 5, kMatrices);
}

TEST(AdamW, CustomPredicate) {
  train::AdamWOptions opt;
  opt.weight_decay = 0.05;
  opt.decay_predicate = [](const std::string& name, const core::Shape&) {
    return name.find("norm") != std::string::npos;
  };
  check_against_reference(opt, 1e-2, 3,
                          {"model.layers.0.input_layernorm.weight",
                           "model.layers.0.linear_attn.norm.weight", "model.norm.weight"});
}

TEST(AdamW, FirstStepIsSignedLr) {
  // Step 1 without decay: m_hat = g and v_hat = g^2, so the update is -lr * g / (|g| + eps).
  TensorMap p, g;
  p.emplace("w", core::Tensor({2, 3}));
  g.emplace("w", core::Tensor({2, 3}));
  g.at("w").data = {1.f, -2.f, 0.5f, 0.f, 4.f, -0.25f};
  train::AdamWOptions opt;
  opt.eps = 1e-30;  // keeps 0 / 0 away from the zero gradient, too small to change the others
  train::AdamW adam(p, opt);
  adam.step(p, g, 0.01);
  const std::vector<float> want = {-0.01f, 0.01f, -0.01f, 0.f, -0.01f, 0.01f};
  for (size_t i = 0; i < want.size(); ++i) EXPECT_FLOAT_EQ(p.at("w").data[i], want[i]) << i;
}

TEST(AdamW, DecayAloneShrinksByLrTimesWd) {
  // A zero gradient leaves only the decoupled decay: p *= 1 - lr * wd (matrices only).
  TensorMap p, g;
  p.emplace("m.weight", core::Tensor({2, 2}));
  p.emplace("m.norm.weight", core::Tensor({2}));
  for (auto& [n, t] : p) std::fill(t.data.begin(), t.data.end(), 2.f);
  g = model::zeros_like(p);
  train::AdamWOptions opt;
  opt.weight_decay = 0.5;
  train::AdamW adam(p, opt);
  adam.step(p, g, 0.1);
  for (float x : p.at("m.weight").data) EXPECT_FLOAT_EQ(x, 2.f * 0.95f);
  for (float x : p.at("m.norm.weight").data) EXPECT_EQ(x, 2.f);
}

TEST(AdamW, LayoutErrorsNameTheParameter) {
  TensorMap p = make_params(1);
  train::AdamW adam(p, {});
  TensorMap g = make_grads(p, 2, 1.0);
  TensorMap g_missing = g;
  g_missing.erase("model.norm.weight");
  expect_error([&] { adam.step(p, g_missing, 1e-3); },
               {"gradients", "model.norm.weight", "missing"});
  TensorMap g_extra = g;
  g_extra.emplace("model.extra.weight", core::Tensor({2}));
  expect_error([&] { adam.step(p, g_extra, 1e-3); }, {"unexpected", "model.extra.weight"});
  TensorMap g_shape = g;
  g_shape.at("model.layers.0.linear_attn.A_log") = core::Tensor({4});
  expect_error([&] { adam.step(p, g_shape, 1e-3); },
               {"model.layers.0.linear_attn.A_log", "[4]", "[3]"});
  EXPECT_EQ(adam.step_count(), 0);  // failed steps do not count
  expect_error([&] { (void)adam.decays("nope"); }, {"nope"});
}

TEST(AdamW, UpdateIndependentOfThreadCount) {
  // A tensor large enough for the parallel loop: 1 and 2 threads give identical bits.
  TensorMap p0;
  core::Tensor w({300, 257});
  w.data = dt_test::randn<float>(w.data.size(), 5);
  p0.emplace("big.weight", std::move(w));
  const TensorMap g = make_grads(p0, 6, 1.0);
  std::vector<TensorMap> results;
  for (int threads : {1, 2, 3}) {
    TensorMap p = p0;
    train::AdamWOptions opt;
    opt.weight_decay = 0.1;
    train::AdamW adam(p, opt);
    omp_set_num_threads(threads);
    for (int s = 0; s < 3; ++s) adam.step(p, g, 1e-3);
    results.push_back(p);
  }
  omp_set_num_threads(omp_get_num_procs());
  for (size_t r = 1; r < results.size(); ++r)
    EXPECT_EQ(std::memcmp(results[r].at("big.weight").ptr(), results[0].at("big.weight").ptr(),
                          results[0].at("big.weight").data.size() * sizeof(float)),
              0);
}

TEST(WeightDecayGroups, EveryQwen35ParameterName) {
  // A multimodal MoE config with MTP: the grouping sees every kind of name the model has.
  const nlohmann::json cfg = nlohmann::json::parse(R"({
    "model_type": "qwen3_5_moe", "tie_word_embeddings": false,
    "text_config": {
      "model_type": "qwen3_5_moe_text",
      "vocab_size": 11, "hidden_size": 8, "num_hidden_layers": 2,
      "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
      "layer_types": ["linear_attention", "full_attention"],
      "linear_conv_kernel_dim": 3, "linear_key_head_dim": 3, "linear_value_head_dim": 4,
      "linear_num_key_heads": 1, "linear_num_value_heads": 2,
      "num_experts": 3, "num_experts_per_tok": 2, "moe_intermediate_size": 5,
      "shared_expert_intermediate_size": 6, "mtp_num_hidden_layers": 1,
      "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0,
                          "partial_rotary_factor": 0.5}
    }
  })");
  model::Config c = model::parse_config(cfg, "test");
  c.mtp_enabled = true;
  const auto specs = model::param_specs(c);
  // The oracle, by name only: norms, A_log, dt_bias and the embeddings do not decay.
  auto ends = [](const std::string& s, const std::string& suf) {
    return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
  };
  auto expect_no_decay = [&](const std::string& n) {
    return ends(n, "norm.weight") || ends(n, "pre_fc_norm_embedding.weight") ||
           ends(n, "pre_fc_norm_hidden.weight") || ends(n, "A_log") || ends(n, "dt_bias") ||
           ends(n, "embed_tokens.weight");
  };
  int n_decay = 0, n_no = 0;
  bool saw_embed = false, saw_lm_head = false, saw_q_norm = false, saw_gdn_norm = false;
  for (const auto& s : specs) {
    const bool decays = train::default_weight_decay(s.name, s.shape, false);
    EXPECT_EQ(decays, !expect_no_decay(s.name)) << s.name << " " << core::shape_str(s.shape);
    (decays ? n_decay : n_no)++;
    saw_embed |= s.name == "model.language_model.embed_tokens.weight";
    saw_lm_head |= s.name == "lm_head.weight" && decays;
    saw_q_norm |= ends(s.name, "self_attn.q_norm.weight") && !decays;
    saw_gdn_norm |= ends(s.name, "linear_attn.norm.weight") && !decays;
  }
  EXPECT_TRUE(saw_embed && saw_lm_head && saw_q_norm && saw_gdn_norm);
  EXPECT_GT(n_decay, 10);
  EXPECT_GT(n_no, 10);
  EXPECT_FALSE(
      train::default_weight_decay("model.language_model.embed_tokens.weight", {11, 8}, false));
  EXPECT_TRUE(
      train::default_weight_decay("model.language_model.embed_tokens.weight", {11, 8}, true));
  // Router, experts, shared-expert gate [1, D] and MTP fc are matrices: they decay.
  EXPECT_TRUE(
      train::default_weight_decay("model.language_model.layers.0.mlp.shared_expert_gate"
                                  ".weight",
                                  {1, 8}, false));
  EXPECT_TRUE(train::default_weight_decay("mtp.fc.weight", {8, 16}, false));
  // A_log / dt_bias by name even when not 1-D.
  EXPECT_FALSE(train::default_weight_decay("x.linear_attn.A_log", {2, 2}, false));
}

TEST(WeightDecayGroups, TiedEmbeddingsHaveNoLmHead) {
  const nlohmann::json cfg = nlohmann::json::parse(R"({
    "model_type": "qwen3_5_text", "tie_word_embeddings": true,
    "vocab_size": 11, "hidden_size": 8, "num_hidden_layers": 1, "intermediate_size": 6,
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
    "layer_types": ["full_attention"],
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0,
                        "partial_rotary_factor": 0.5}
  })");
  const model::Config c = model::parse_config(cfg, "test");
  TensorMap params;
  for (const auto& s : model::param_specs(c)) params.emplace(s.name, core::Tensor(s.shape));
  EXPECT_EQ(params.count("lm_head.weight"), 0u);
  train::AdamW adam(params, {});
  EXPECT_FALSE(adam.decays("model.embed_tokens.weight"));  // the output projection too
}

TEST(ClipGradNorm, NormAndScaling) {
  // Integer-valued gradients with an exact norm: 3, 4, 12 -> 13.
  TensorMap g;
  g.emplace("a", core::Tensor({2}));
  g.emplace("b", core::Tensor({1, 1}));
  g.at("a").data = {3.f, -4.f};
  g.at("b").data = {12.f};
  EXPECT_EQ(train::grad_norm(g), 13.0);

  TensorMap unclipped = g;
  EXPECT_EQ(train::clip_grad_norm(unclipped, 20.0), 13.0);
  EXPECT_EQ(unclipped.at("a").data, g.at("a").data);
  EXPECT_EQ(train::clip_grad_norm(unclipped, 0.0), 13.0);  // max_norm <= 0: no clipping
  EXPECT_EQ(unclipped.at("b").data, g.at("b").data);

  TensorMap clipped = g;
  EXPECT_EQ(train::clip_grad_norm(clipped, 6.5), 13.0);
  const float coef = static_cast<float>(6.5 / (13.0 + 1e-6));
  EXPECT_EQ(clipped.at("a").data[0], 3.f * coef);
  EXPECT_EQ(clipped.at("a").data[1], -4.f * coef);
  EXPECT_EQ(clipped.at("b").data[0], 12.f * coef);
  EXPECT_NEAR(train::grad_norm(clipped), 6.5, 1e-5);
}

TEST(ClipGradNorm, NonFiniteIsReportedNotApplied) {
  TensorMap g;
  g.emplace("a", core::Tensor({3}));
  g.at("a").data = {1.f, std::numeric_limits<float>::quiet_NaN(), 2.f};
  TensorMap before = g;
  EXPECT_TRUE(std::isnan(train::clip_grad_norm(g, 1.0)));
  EXPECT_EQ(g.at("a").data[0], 1.f);
  EXPECT_EQ(g.at("a").data[2], 2.f);
  g.at("a").data = {1.f, std::numeric_limits<float>::infinity(), 2.f};
  EXPECT_TRUE(std::isinf(train::clip_grad_norm(g, 1.0)));
  EXPECT_EQ(g.at("a").data[0], 1.f);
  // Squares that overflow float but not double still give a finite norm.
  g.at("a").data = {3e30f, 4e30f, 0.f};
  EXPECT_NEAR(train::grad_norm(g) / 5e30, 1.0, 1e-7);
}

TEST(ClipGradNorm, DeterministicAcrossThreadCounts) {
  // Several blocks per tensor and odd sizes; the value must not depend on the thread count.
  TensorMap g;
  for (int i = 0; i < 3; ++i) {
    core::Tensor t({100003 + 7 * i});
    t.data = dt_test::randn<float>(t.data.size(), 40 + i, 1.0 + i);
    g.emplace("t" + std::to_string(i), std::move(t));
  }
  double plain = 0;
  for (const auto& [n, t] : g)
    for (float x : t.data) plain += double(x) * x;
  plain = std::sqrt(plain);
  std::vector<double> norms;
  for (int threads : {1, 2, 3, 4}) {
    omp_set_num_threads(threads);
    norms.push_back(train::grad_norm(g));
  }
  omp_set_num_threads(omp_get_num_procs());
  for (double n : norms) EXPECT_EQ(n, norms[0]);
  EXPECT_NEAR(norms[0] / plain, 1.0, 1e-12);
}

TEST(Schedule, CosineKeySteps) {
  train::ScheduleOptions o;
  o.lr = 1e-3;
  o.min_lr = 1e-4;
  o.warmup_steps = 10;
  o.total_steps = 110;
  o.decay = train::LrDecay::cosine;
  train::validate_schedule(o);
  EXPECT_DOUBLE_EQ(train::learning_rate(o, 0), 1e-4);  // (0 + 1) / 10 of the peak
  EXPECT_DOUBLE_EQ(train::learning_rate(o, 4), 5e-4);
  EXPECT_DOUBLE_EQ(train::learning_rate(o, 9), 1e-3);  // last warmup step reaches the peak
  EXPECT_DOUBLE_EQ(train::learning_rate(o, 10), 1e-3);
  EXPECT_DOUBLE_EQ(train::learning_rate(o, 35),
                   1e-4 + 9e-4 * 0.5 * (1 + std::cos(std::numbers::pi * 0.25)));
  EXPECT_DOUBLE_EQ(train::learning_rate(o, 60), 5.5e-4);  // halfway
  EXPECT_GT(train::learning_rate(o, 109), 1e-4);
  EXPECT_DOUBLE_EQ(train::learning_rate(o, 110), 1e-4);
  EXPECT_DOUBLE_EQ(train::learning_rate(o, 1000), 1e-4);
  for (int64_t s = 10; s < 110; ++s)
    EXPECT_GE(train::learning_rate(o, s), train::learning_rate(o, s + 1)) << s;
  expect_error([&] { train::learning_rate(o, -1); }, {"step", "-1"});
}

TEST(Schedule, ConstantAndNoWarmup) {
  train::ScheduleOptions o;
  o.lr = 2e-4;
  o.warmup_steps = 4;
  o.decay = train::LrDecay::constant;
  train::validate_schedule(o);  // total_steps unused
  EXPECT_DOUBLE_EQ(train::learning_rate(o, 0), 5e-5);
  EXPECT_DOUBLE_EQ(train::learning_rate(o, 3), 2e-4);
  EXPECT_DOUBLE_EQ(train::learning_rate(o, 4), 2e-4);
  EXPECT_DOUBLE_EQ(train::learning_rate(o, 1000000), 2e-4);
  o.warmup_steps = 0;
  EXPECT_DOUBLE_EQ(train::learning_rate(o, 0), 2e-4);
  o.decay = train::LrDecay::cosine;
  o.total_steps = 5;
  o.min_lr = 0;
  EXPECT_DOUBLE_EQ(train::learning_rate(o, 0), 2e-4);  // cosine starts at the peak at s = W = 0
  EXPECT_DOUBLE_EQ(train::learning_rate(o, 5), 0.0);
}

TEST(Schedule, ValidationAndParsing) {
  EXPECT_EQ(train::parse_lr_decay("cosine"), train::LrDecay::cosine);
  EXPECT_EQ(train::parse_lr_decay("constant"), train::LrDecay::constant);
  expect_error([] { train::parse_lr_decay("linear"); }, {"linear", "cosine", "constant"});
  train::ScheduleOptions o;
  o.lr = 1e-3;
  o.total_steps = 10;
  o.warmup_steps = 11;
  expect_error([&] { train::validate_schedule(o); }, {"warmup_steps", "11", "10"});
  o.warmup_steps = 0;
  o.min_lr = 2e-3;
  expect_error([&] { train::validate_schedule(o); }, {"min_lr"});
  o.min_lr = 0;
  o.total_steps = 0;
  expect_error([&] { train::validate_schedule(o); }, {"total_steps"});
}
