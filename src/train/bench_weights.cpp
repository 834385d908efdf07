// The bench's random weights (bench_weights.h): one counter-based generator per element.
#include "train/bench_weights.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>

#include "core/error.h"
#include "model/expert_parallel.h"

namespace deltatron::train {

namespace {

// Elements [offset, offset + numel(spec.shape)) of the whole tensor `spec.name`; tensor_id: its
// 1-based position in name order. Parallel per element, counter-based: the values do not depend
// on the thread count or on which slice is made.
core::Tensor bench_tensor(const model::ParamSpec& spec, uint64_t tensor_id, uint64_t seed,
                          int64_t offset) {
  core::Tensor t(spec.shape);
  const std::string& name = spec.name;
  // RMSNorm weights are 1 + w (zero here); the vision tower's LayerNorms scale by w (one).
  const bool vis_norm = name.starts_with("model.visual.") &&
                        (name.ends_with("norm1.weight") || name.ends_with("norm2.weight") ||
                         name.ends_with("norm.weight"));
  const bool ones =
      name.ends_with("linear_attn.norm.weight") || name.ends_with("dt_bias") || vis_norm;
  const bool alog = name.ends_with("A_log");
  const bool zero = !ones && !alog && t.shape.size() == 1;
  float* p = t.ptr();
  const int64_t n = t.numel();
  const uint64_t base = (seed + 1) * 0x9E3779B97F4A7C15ull + tensor_id * 0xBF58476D1CE4E5B9ull;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    uint64_t z = base + uint64_t(i + offset) * 0x94D049BB133111EBull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    // Irwin-Hall(4) on 16-bit parts: mean 2, variance 1/3 -> about N(0, 1).
    double u = 0;
    for (int k = 0; k < 4; ++k) u += double((z >> (16 * k)) & 0xFFFF) / 65536.0;
    const double nrm = (u - 2.0) * std::sqrt(3.0);
    if (ones)
      p[i] = 1.f;
    else if (alog)
      p[i] = float(std::log(1.0 + 15.0 * (u / 4.0)));
    else if (zero)
      p[i] = 0.f;
    else
      p[i] = float(0.02 * nrm);
  }
  return t;
}

// The parameters in name order (std::map's).
std::vector<model::ParamSpec> sorted_specs(const model::Config& c) {
  std::vector<model::ParamSpec> specs = model::param_specs(c);
  std::sort(specs.begin(), specs.end(),
            [](const model::ParamSpec& a, const model::ParamSpec& b) { return a.name < b.name; });
  return specs;
}

}  // namespace

model::TensorMap bench_params(const model::Config& c, uint64_t seed, const ExpertGroups& eg,
                              const TensorGroups& tg) {
  model::TensorMap out;
  uint64_t id = 0;
  for (const model::ParamSpec& spec : sorted_specs(c))
    out.emplace(spec.name, bench_tensor(spec, ++id, seed, 0));
  keep_local_experts(out, eg);
  keep_local_shards(out, tg, c);
  return out;
}

model::ParamSource bench_source(const model::Config& c, uint64_t seed, const ExpertGroups& eg) {
  model::ParamSource src;
  src.specs = sorted_specs(c);
  // Per name: its id and the element offset of this rank's slice in the whole tensor.
  auto where = std::make_shared<std::map<std::string, std::pair<uint64_t, int64_t>>>();
  for (model::ParamSpec& spec : src.specs) {
    int64_t offset = 0;
    if (eg.on() && model::is_routed_expert_tensor(spec.name)) {
      const int64_t E = spec.shape.at(0), per = core::numel(spec.shape) / E;
      DT_CHECK(E == eg.model.num_local * eg.group->size(), spec.name, ": ", E,
               " experts, expected ", eg.model.num_local * eg.group->size());
      spec.shape[0] = eg.model.num_local;
      offset = eg.model.first * per;
    }
    where->emplace(spec.name, std::pair{uint64_t(where->size() + 1), offset});
  }
  src.make = [where, seed](const model::ParamSpec& spec) {
    const auto& [id, offset] = where->at(spec.name);
    return bench_tensor(spec, id, seed, offset);
  };
  return src;
}

model::TensorMap shapes_only(const model::ParamSource& src) {
  model::TensorMap out;
  for (const model::ParamSpec& spec : src.specs) {
    core::Tensor t;
    t.shape = spec.shape;
    out.emplace(spec.name, std::move(t));
  }
  return out;
}

}  // namespace deltatron::train
