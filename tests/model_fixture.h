// Tiny random Qwen3.5 models and samples for model-level tests (pack invariance, CLI checks).
#pragma once

#include <cmath>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "data/pack.h"
#include "data/sample.h"
#include "model/config.h"
#include "model/weights.h"

namespace dt_test {

// A small dense text-only config with both mixer types; overrides are merged on top.
inline nlohmann::json tiny_config_json(const nlohmann::json& overrides = nlohmann::json::object()) {
  nlohmann::json j = {
      {"model_type", "qwen3_5_text"},
      {"vocab_size", 61},
      {"hidden_size", 24},
      {"num_hidden_layers", 4},
      {"intermediate_size", 40},
      {"num_attention_heads", 4},
      {"num_key_value_heads", 2},
      {"head_dim", 16},
      {"rms_norm_eps", 1e-6},
      {"layer_types", {"linear_attention", "full_attention", "linear_attention", "full_attention"}},
      {"linear_conv_kernel_dim", 4},
      {"linear_key_head_dim", 8},
      {"linear_value_head_dim", 6},
      {"linear_num_key_heads", 2},
      {"linear_num_value_heads", 4},
      {"rope_parameters",
       {{"rope_type", "default"},
        {"rope_theta", 10000.0},
        {"partial_rotary_factor", 0.5},
        {"mrope_section", {2, 1, 1}},
        {"mrope_interleaved", true}}},
      {"tie_word_embeddings", false},
  };
  j.merge_patch(overrides);
  return j;
}

// The tiny config as a MoE (4 experts, top-2, a shared expert) with an MTP head, enabled.
inline deltatron::model::Config tiny_moe_mtp_config() {
  deltatron::model::Config c =
      deltatron::model::parse_config(tiny_config_json({{"model_type", "qwen3_5_moe_text"},
                                                       {"intermediate_size", nullptr},
                                                       {"num_experts", 4},
                                                       {"num_experts_per_tok", 2},
                                                       {"moe_intermediate_size", 12},
                                                       {"shared_expert_intermediate_size", 10},
                                                       {"mtp_num_hidden_layers", 1}}),
                                     "tiny");
  c.mtp_enabled = true;
  return c;
}

// Random parameters far from init: matrices N(0, 0.3/sqrt(fan_in)·3), norm offsets N(0, 0.2),
// gated-norm weights around 1, A_log = log U(1, 8), dt_bias N(0.5, 0.3).
inline deltatron::model::TensorMap random_params(const deltatron::model::Config& c, uint64_t seed) {
  deltatron::model::TensorMap p;
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::uniform_real_distribution<double> ud(1.0, 8.0);
  for (const auto& spec : deltatron::model::param_specs(c)) {
    deltatron::core::Tensor t(spec.shape);
    const std::string& n = spec.name;
    auto ends = [&](const std::string& s) {
      return n.size() >= s.size() && n.compare(n.size() - s.size(), s.size(), s) == 0;
    };
    double fan_in = spec.shape.size() >= 2 ? double(spec.shape.back()) : 1.0;
    for (auto& v : t.data) {
      double x;
      if (ends("A_log"))
        x = std::log(ud(rng));
      else if (ends("dt_bias"))
        x = 0.5 + 0.3 * nd(rng);
      else if (ends("linear_attn.norm.weight"))
        x = 1.0 + 0.2 * nd(rng);
      else if (spec.shape.size() == 1)
        x = 0.2 * nd(rng);
      else if (ends("conv1d.weight"))
        x = 0.4 * nd(rng);
      else
        x = 0.9 / std::sqrt(fan_in) * nd(rng);
      v = static_cast<float>(x);
    }
    p.emplace(n, std::move(t));
  }
  return p;
}

// Samples of the given lengths, ids uniform in [0, vocab) drawn from seed; labels = input_ids
// except an unlabelled prompt prefix of len / prompt_divisor tokens.
inline std::vector<deltatron::data::Sample> make_samples(const std::vector<int>& lengths,
                                                         int64_t vocab, uint64_t seed,
                                                         int prompt_divisor) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> id(0, static_cast<int>(vocab) - 1);
  std::vector<deltatron::data::Sample> out;
  for (int len : lengths) {
    deltatron::data::Sample s;
    for (int t = 0; t < len; ++t) s.input_ids.push_back(id(rng));
    s.labels = s.input_ids;
    for (int t = 0; t < len / prompt_divisor; ++t) s.labels[t] = deltatron::data::kIgnoreIndex;
    out.push_back(s);
  }
  return out;
}

// One pack of samples[idx...] with the given alignment.
inline deltatron::data::Pack pack_of(const std::vector<deltatron::data::Sample>& samples,
                                     const std::vector<int64_t>& idx, int64_t align) {
  std::vector<const deltatron::data::Sample*> members;
  for (int64_t i : idx) members.push_back(&samples[i]);
  return deltatron::data::make_pack(members, idx, align);
}

}  // namespace dt_test
