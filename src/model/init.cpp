// HF-style random initialisation, one independent generator per tensor.
#include "model/init.h"

#include <cmath>
#include <random>

namespace deltatron::model {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

uint64_t fnv1a(const std::string& s, uint64_t h) {
  for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ull;
  return h;
}

}  // namespace

TensorMap init_params(const Config& c, uint64_t seed, double std_dev) {
  TensorMap out;
  for (const ParamSpec& spec : param_specs(c)) {
    core::Tensor t(spec.shape);
    std::mt19937_64 rng(fnv1a(spec.name, 1469598103934665603ull ^ seed));
    const std::string& n = spec.name;
    if (ends_with(n, "linear_attn.norm.weight") || ends_with(n, "dt_bias")) {
      std::fill(t.data.begin(), t.data.end(), 1.f);
    } else if (ends_with(n, "A_log")) {
      std::uniform_real_distribution<double> u(0.01, 16.0);
      for (auto& v : t.data) v = static_cast<float>(std::log(u(rng)));
    } else if (n.rfind("model.visual.", 0) == 0 && spec.shape.size() == 1) {
      // the vision tower's LayerNorms are plain (weight 1, bias 0); its biases start at 0
      if (n.find("norm") != std::string::npos && ends_with(n, ".weight"))
        std::fill(t.data.begin(), t.data.end(), 1.f);
    } else if (spec.shape.size() == 1) {
      // every other 1-D parameter is a zero-centred RMSNorm weight: (1 + w) with w = 0
    } else {
      std::normal_distribution<double> nd(0.0, std_dev);
      for (auto& v : t.data) v = static_cast<float>(nd(rng));
    }
    if (c.pad_token_id && n == c.name("embed_tokens.weight")) {
      const int64_t D = c.hidden_size;
      std::fill(t.data.begin() + *c.pad_token_id * D, t.data.begin() + (*c.pad_token_id + 1) * D,
                0.f);
    }
    out.emplace(n, std::move(t));
  }
  return out;
}

}  // namespace deltatron::model
