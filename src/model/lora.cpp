// LoRA targets (lora.h).
#include "model/lora.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"

namespace deltatron::model {

namespace {

bool matches(const std::string& module, const std::string& target) {
  return module == target || (module.size() > target.size() && module.ends_with(target) &&
                              module[module.size() - target.size() - 1] == '.');
}

// Adapted only when a target names them (PEFT's "all-linear" would take the router too).
bool named_only(const std::string& module) {
  return matches(module, "mlp.gate") || matches(module, "shared_expert_gate") ||
         matches(module, "lm_head");
}

struct Linear {
  std::string module, block;
  int64_t layer = -1, in = 0, out = 0;
};

// Every linear layer of the decoder layers (and lm_head), in parameter order.
std::vector<Linear> linear_layers(const Config& c) {
  std::vector<Linear> out;
  const std::string layers = c.name("layers.");
  for (const ParamSpec& s : param_specs(c)) {
    if (s.shape.size() != 2 || !s.name.ends_with(".weight")) continue;
    const std::string module = s.name.substr(0, s.name.size() - 7);
    Linear l;
    l.module = module;
    l.out = s.shape[0];
    l.in = s.shape[1];
    if (module == "lm_head") {
      l.block = "head";
    } else if (module.starts_with(layers)) {
      l.layer = std::stoll(module.substr(layers.size()));
      if (module.find(".mlp.shared_expert.") != std::string::npos)
        l.block = "shared_expert";
      else if (module.find(".mlp.") != std::string::npos)
        l.block = "mlp";
      else
        l.block = c.layer_types[size_t(l.layer)] == LayerType::full_attention ? "full_attention"
                                                                              : "linear_attention";
    } else {
      continue;  // embeddings, the MTP head
    }
    out.push_back(l);
  }
  return out;
}

std::string last_part(const std::string& module) {
  const size_t dot = module.rfind('.');
  return dot == std::string::npos ? module : module.substr(dot + 1);
}

}  // namespace

double LoraOptions::scale() const {
  return rslora ? alpha / std::sqrt(double(r)) : alpha / double(r);
}

const std::vector<std::string>& lora_default_targets() {
  static const std::vector<std::string> t = {"q_proj",      "k_proj",    "v_proj",    "o_proj",
                                             "in_proj_qkv", "in_proj_z", "in_proj_a", "in_proj_b",
                                             "out_proj",    "gate_proj", "up_proj",   "down_proj"};
  return t;
}

std::vector<LoraModule> lora_modules(const Config& c, const LoraOptions& o,
                                     const std::string& where) {
  DT_CHECK(o.r >= 1, where, ": lora.r must be >= 1, got ", o.r);
  DT_CHECK(o.alpha > 0, where, ": lora.alpha must be > 0, got ", o.alpha);
  DT_CHECK(o.dropout >= 0 && o.dropout < 1, where, ": lora.dropout must be in [0, 1), got ",
           o.dropout);
  DT_CHECK(!o.experts || c.is_moe(), where,
           ": lora.experts = true but this model has no routed experts");
  const std::vector<Linear> linears = linear_layers(c);
  const std::vector<std::string>& targets = o.targets.empty() ? lora_default_targets() : o.targets;
  const bool all_linear = std::find(targets.begin(), targets.end(), "all-linear") != targets.end();
  for (const std::string& t : targets) {
    if (t == "all-linear") continue;
    DT_CHECK(!t.empty(), where, ": lora.targets has an empty name");
    DT_CHECK(t.find("embed_tokens") == std::string::npos, where, ": lora.targets '", t,
             "': embeddings are not adapted (only linear layers)");
    bool any = false;
    for (const Linear& l : linears) any = any || matches(l.module, t);
    if (any || o.targets.empty()) continue;  // a default may be absent (no shared expert)
    std::set<std::string> names;
    for (const Linear& l : linears) names.insert(last_part(l.module));
    std::string list;
    for (const std::string& n : names) list += (list.empty() ? "" : " ") + n;
    core::fail(where, ": lora.targets '", t, "' matches no linear layer of this model (its linear ",
               "layers: ", list, "; or \"all-linear\")");
  }
  std::vector<LoraModule> out;
  for (const Linear& l : linears) {
    std::string hit;
    for (const std::string& t : targets)
      if (t != "all-linear" && matches(l.module, t)) hit = t;
    if (hit.empty() && all_linear && !named_only(l.module)) hit = "all-linear";
    if (hit.empty()) continue;
    out.push_back({l.module, l.module + ".weight", hit, l.block, l.layer, l.in, l.out});
  }
  if (o.experts) {  // both fused expert parameters of every MoE decoder layer
    const std::string layers = c.name("layers.");
    for (const ParamSpec& s : param_specs(c)) {
      if (!s.name.starts_with(layers) || s.shape.size() != 3) continue;
      if (!s.name.ends_with(".mlp.experts.gate_up_proj") &&
          !s.name.ends_with(".mlp.experts.down_proj"))
        continue;
      LoraModule m;
      m.name = m.weight = s.name;
      m.target = "experts";
      m.block = "experts";
      m.layer = std::stoll(s.name.substr(layers.size()));
      m.experts = s.shape[0];
      m.out = s.shape[1];
      m.in = s.shape[2];
      out.push_back(m);
    }
  }
  DT_CHECK(!out.empty(), where, ": lora.targets adapt no layer of this model");
  return out;
}

int64_t lora_param_count(const std::vector<LoraModule>& mods, int64_t r) {
  int64_t n = 0;
  for (const LoraModule& m : mods) n += r * (m.in + m.out) * std::max<int64_t>(m.experts, 1);
  return n;
}

std::vector<std::string> lora_report(const std::vector<LoraModule>& mods) {
  std::vector<std::string> lines;
  for (const char* block :
       {"linear_attention", "full_attention", "mlp", "shared_expert", "experts", "head"}) {
    std::set<int64_t> layers;
    std::vector<std::string> parts;  // module kinds in first-seen order
    int64_t count = 0;
    for (const LoraModule& m : mods) {
      if (m.block != block) continue;
      ++count;
      layers.insert(m.layer);
      const std::string p = last_part(m.name);
      if (std::find(parts.begin(), parts.end(), p) == parts.end()) parts.push_back(p);
    }
    if (count == 0) continue;
    std::ostringstream s;
    s << block << ": " << count << " modules in " << layers.size() << " layer"
      << (layers.size() == 1 ? "" : "s") << " (";
    for (size_t i = 0; i < parts.size(); ++i) s << (i ? " " : "") << parts[i];
    s << ")";
    lines.push_back(s.str());
  }
  return lines;
}

}  // namespace deltatron::model
