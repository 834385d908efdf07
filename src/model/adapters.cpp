// A LoRA run's adapters (adapters.h).
#include "model/adapters.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "core/error.h"
#include "model/tensor_parallel.h"

namespace deltatron::model {

namespace {

uint64_t fnv1a(const std::string& s, uint64_t h) {
  for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ull;
  return h;
}

void check_adapters(const Config& c, const std::vector<LoraModule>& mods, int64_t r,
                    const TensorMap& host, int64_t local_experts, int64_t tp) {
  for (const LoraModule& m : mods) {
    const int64_t E = local_experts > 0 ? local_experts : m.experts;
    const core::Shape sa = m.experts ? core::Shape{E, r, m.in} : core::Shape{r, m.in};
    const core::Shape sb = m.experts ? core::Shape{E, m.out, r} : core::Shape{m.out, r};
    for (auto [key, shape] :
         {std::pair{lora_a_key(m.name), sa}, std::pair{lora_b_key(m.name), sb}}) {
      if (const int dim = tp_split(c, key).dim; tp > 1 && dim >= 0) shape[size_t(dim)] /= tp;
      auto it = host.find(key);
      DT_CHECK(it != host.end(), "LoRA adapter tensor ", key, " is missing");
      DT_CHECK(it->second.shape == shape, "LoRA adapter tensor ", key, " has shape ",
               core::shape_str(it->second.shape), ", expected ", core::shape_str(shape));
    }
  }
  DT_CHECK(host.size() == 2 * mods.size(), "the LoRA adapters hold ", host.size(),
           " tensors, expected ", 2 * mods.size(), " (lora_A and lora_B of ", mods.size(),
           " modules)");
}

StateOptions adapter_state(core::DType moments) {
  StateOptions s;
  s.moments = moments;
  return s;
}

}  // namespace

std::string lora_a_key(const std::string& module) { return module + ".lora_A.weight"; }
std::string lora_b_key(const std::string& module) { return module + ".lora_B.weight"; }

TensorMap lora_init(const std::vector<LoraModule>& mods, int64_t r, uint64_t seed) {
  TensorMap out;
  for (const LoraModule& m : mods) {
    const int64_t E = std::max<int64_t>(m.experts, 1);
    core::Tensor a(m.experts ? core::Shape{E, r, m.in} : core::Shape{r, m.in});
    std::mt19937_64 rng(fnv1a(m.name, 0x6c6f7261ull ^ seed));
    const double bound = 1.0 / std::sqrt(double(m.in));
    for (float& v : a.data) {
      const double u = double(rng() >> 11) * 0x1p-53;  // [0, 1)
      v = static_cast<float>((2.0 * u - 1.0) * bound);
    }
    out.emplace(lora_a_key(m.name), std::move(a));
    out.emplace(lora_b_key(m.name),
                core::Tensor(m.experts ? core::Shape{E, m.out, r} : core::Shape{m.out, r}));
  }
  return out;
}

Adapters::Adapters(core::Device dev, core::DType dt, const Config& c, const LoraSetup& s,
                   core::DType moments)
    : opt_(s.options),
      mods_(lora_modules(c, s.options, "lora")),
      scale_(static_cast<float>(s.options.scale())),
      local_experts_(s.local_experts),
      params_((check_adapters(c, mods_, s.options.r, s.adapters, s.local_experts, s.tp), dev), dt,
              s.adapters, adapter_state(moments)) {
  DT_CHECK(opt_.dropout >= 0 && opt_.dropout < 1, "lora.dropout = ", opt_.dropout,
           " is not in [0, 1)");
  DT_CHECK(opt_.dropout == 0 || !opt_.experts, "lora.dropout = ", opt_.dropout,
           " with lora.experts = true is not implemented yet (dropout applies to the linear "
           "modules' adapters only); use lora.dropout = 0 or lora.experts = false");
  for (size_t i = 0; i < mods_.size(); ++i) {
    DT_CHECK(mods_[i].block != "head", "lora.targets: lm_head adapters are not implemented yet ",
             "(the LM head is fused with the loss); adapt the decoder layers");
    by_weight_[mods_[i].weight] = i;
  }
}

const LoraModule* Adapters::find(const std::string& weight) const {
  auto it = by_weight_.find(weight);
  return it == by_weight_.end() ? nullptr : &mods_[it->second];
}

}  // namespace deltatron::model
