// PEFT LoRA adapter files (peft_adapter.h).
#include "io/peft_adapter.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "io/file_util.h"
#include "io/safetensors.h"

namespace deltatron::io {

namespace fs = std::filesystem;

namespace {

constexpr const char* kPrefix = "base_model.model.";
constexpr const char* kA = ".lora_A.weight";
constexpr const char* kB = ".lora_B.weight";

std::string last_part(const std::string& module) {
  const size_t dot = module.rfind('.');
  return dot == std::string::npos ? module : module.substr(dot + 1);
}

// PEFT's module of a fused expert parameter ("<layer>.mlp.experts.gate_up_proj"), both targeted.
std::string peft_expert_module(const std::string& param) {
  const std::string layer = param.substr(0, param.rfind(".mlp.experts.") + 12);  // ...mlp.experts
  return param.ends_with(".gate_up_proj") ? layer + ".base_layer" : layer;
}

}  // namespace

bool is_expert_module(const std::string& module) {
  return module.ends_with(".mlp.experts") || module.ends_with(".mlp.experts.base_layer");
}

std::string expert_param_of(const std::string& module) {
  return module.ends_with(".base_layer") ? module.substr(0, module.size() - 11) + ".gate_up_proj"
                                         : module + ".down_proj";
}

core::Tensor expert_b_to_model(const core::Tensor& b, int64_t r, int64_t E) {
  const int64_t out = b.shape[0];
  core::Tensor t({E, out, r});
  for (int64_t e = 0; e < E; ++e)
    for (int64_t o = 0; o < out; ++o)
      for (int64_t k = 0; k < r; ++k) t.data[(e * out + o) * r + k] = b.data[o * r * E + k * E + e];
  return t;
}
core::Tensor expert_b_to_peft(const core::Tensor& t) {
  const int64_t E = t.shape[0], out = t.shape[1], r = t.shape[2];
  core::Tensor b({out, r * E});
  for (int64_t e = 0; e < E; ++e)
    for (int64_t o = 0; o < out; ++o)
      for (int64_t k = 0; k < r; ++k) b.data[o * r * E + k * E + e] = t.data[(e * out + o) * r + k];
  return b;
}

std::string peft_a_name(const std::string& module) { return kPrefix + module + kA; }
std::string peft_b_name(const std::string& module) { return kPrefix + module + kB; }

void save_peft_adapter(const std::string& dir, const PeftAdapter& ad) {
  DT_CHECK(fs::is_directory(dir), dir, ": not a directory (cannot save the adapter)");
  std::set<std::string> targets;
  std::map<std::string, TensorRecord> rec;
  for (const auto& [module, a] : ad.a) {
    DT_CHECK(ad.b.count(module), dir, ": adapter module ", module, " has lora_A but no lora_B");
    const core::Tensor& b = ad.b.at(module);
    const bool ex = is_expert_module(module);
    DT_CHECK(a.shape.size() == 2 && b.shape.size() == 2 &&
                 (ex ? a.shape[0] % ad.options.r == 0 && b.shape[1] == a.shape[0]
                     : a.shape[0] == ad.options.r && b.shape[1] == ad.options.r),
             dir, ": adapter module ", module, " has lora_A ", core::shape_str(a.shape),
             " and lora_B ", core::shape_str(b.shape), " for r = ", ad.options.r);
    rec.emplace(peft_a_name(module), TensorRecord{"F32", a.shape, a.ptr(), {}});
    rec.emplace(peft_b_name(module), TensorRecord{"F32", b.shape, b.ptr(), {}});
    if (!is_expert_module(module)) targets.insert(last_part(module));
  }
  DT_CHECK(ad.b.size() == ad.a.size(), dir, ": adapter has ", ad.b.size(), " lora_B for ",
           ad.a.size(), " lora_A tensors");
  nlohmann::json j = {
      {"peft_type", "LORA"},
      {"task_type", "CAUSAL_LM"},
      {"base_model_name_or_path",
       ad.base_model.empty() ? nlohmann::json(nullptr) : nlohmann::json(ad.base_model)},
      {"r", ad.options.r},
      {"lora_alpha", ad.options.alpha},
      {"lora_dropout", ad.options.dropout},
      {"use_rslora", ad.options.rslora},
      {"target_modules", std::vector<std::string>(targets.begin(), targets.end())},
      {"bias", "none"},
      {"fan_in_fan_out", false},
      {"inference_mode", true},
      {"init_lora_weights", true},
      {"use_dora", false},
      {"modules_to_save", nullptr},
      {"layers_to_transform", nullptr},
      {"layers_pattern", nullptr},
      {"rank_pattern", nlohmann::json::object()},
      {"alpha_pattern", nlohmann::json::object()},
      {"revision", nullptr},
  };
  if (!ad.target_parameters.empty()) j["target_parameters"] = ad.target_parameters;
  write_safetensors((fs::path(dir) / kAdapterWeightsName).string(), rec, {{"format", "pt"}});
  write_file_atomic((fs::path(dir) / kAdapterConfigName).string(), j.dump(2) + "\n");
}

PeftAdapter load_peft_config(const std::string& dir) {
  const std::string cfg_path = (fs::path(dir) / kAdapterConfigName).string();
  const std::string w_path = (fs::path(dir) / kAdapterWeightsName).string();
  DT_CHECK(fs::is_regular_file(cfg_path), cfg_path, ": not found (a PEFT adapter directory has ",
           kAdapterConfigName, " and ", kAdapterWeightsName, ")");
  DT_CHECK(fs::is_regular_file(w_path), w_path, ": not found");
  nlohmann::json j;
  {
    std::ifstream in(cfg_path);
    try {
      j = nlohmann::json::parse(in);
    } catch (const std::exception& e) {
      core::fail(cfg_path, ": not valid JSON (", e.what(), ")");
    }
  }
  DT_CHECK(j.is_object(), cfg_path, ": not a JSON object");
  DT_CHECK(j.value("peft_type", std::string()) == "LORA", cfg_path, ": peft_type is ",
           j.contains("peft_type") ? j["peft_type"].dump() : "missing", ", expected \"LORA\"");
  const auto num = [&](const char* k) {
    DT_CHECK(j.contains(k) && j[k].is_number(), cfg_path, ": ", k, " must be a number");
    return j[k].get<double>();
  };
  const auto off = [&](const char* k, const nlohmann::json& ok) {
    DT_CHECK(!j.contains(k) || j[k].is_null() || j[k] == ok, cfg_path, ": ", k, " = ", j[k].dump(),
             " is not supported (deltatron applies plain LoRA)");
  };
  off("use_dora", false);
  off("bias", "none");
  off("fan_in_fan_out", false);
  off("rank_pattern", nlohmann::json::object());
  off("alpha_pattern", nlohmann::json::object());
  off("modules_to_save", nlohmann::json::array());
  off("layers_to_transform", nlohmann::json::array());
  PeftAdapter ad;
  const double r = num("r");
  DT_CHECK(r >= 1 && r == double(int64_t(r)), cfg_path, ": r = ", r, " must be a positive integer");
  ad.options.r = int64_t(r);
  ad.options.alpha = num("lora_alpha");
  ad.options.dropout = j.contains("lora_dropout") ? num("lora_dropout") : 0.0;
  ad.options.rslora = j.value("use_rslora", false);
  if (j.contains("target_modules") && j["target_modules"].is_array())
    for (const auto& t : j["target_modules"]) ad.options.targets.push_back(t.get<std::string>());
  else if (j.contains("target_modules") && j["target_modules"].is_string())
    ad.options.targets.push_back(j["target_modules"].get<std::string>());
  if (j.contains("target_parameters") && j["target_parameters"].is_array())
    for (const auto& t : j["target_parameters"])
      ad.target_parameters.push_back(t.get<std::string>());
  if (j.contains("base_model_name_or_path") && j["base_model_name_or_path"].is_string())
    ad.base_model = j["base_model_name_or_path"].get<std::string>();

  return ad;
}

PeftAdapter load_peft_adapter(const std::string& dir) {
  PeftAdapter ad = load_peft_config(dir);
  const std::string w_path = (fs::path(dir) / kAdapterWeightsName).string();
  const SafetensorsFile f(w_path);
  const size_t plen = std::string(kPrefix).size();
  for (const std::string& name : f.names()) {
    const bool is_a = name.ends_with(kA), is_b = name.ends_with(kB);
    DT_CHECK(name.starts_with(kPrefix) && (is_a || is_b), w_path, ": tensor '", name,
             "' is not a LoRA weight (base_model.model.<module>.lora_A.weight / lora_B.weight)");
    const std::string module =
        name.substr(plen, name.size() - plen - std::string(is_a ? kA : kB).size());
    core::Tensor t = f.to_float(name);
    const int64_t rr = t.shape.size() == 2 ? t.shape[is_a ? 0 : 1] : 0;
    const bool ok =
        is_expert_module(module) ? rr > 0 && rr % ad.options.r == 0 : rr == ad.options.r;
    DT_CHECK(t.shape.size() == 2 && ok, w_path, ": tensor '", name, "' has shape ",
             core::shape_str(t.shape), ", expected ",
             is_expert_module(module) ? (is_a ? "[r E, in]" : "[out, r E]")
                                      : (is_a ? "[r, in]" : "[out, r]"),
             " with r = ", ad.options.r);
    (is_a ? ad.a : ad.b).emplace(module, std::move(t));
  }
  for (const auto& [m, t] : ad.a)
    DT_CHECK(ad.b.count(m), w_path, ": module ", m, " has lora_A but no lora_B");
  for (const auto& [m, t] : ad.b)
    DT_CHECK(ad.a.count(m), w_path, ": module ", m, " has lora_B but no lora_A");
  DT_CHECK(!ad.a.empty(), w_path, ": holds no LoRA weights");
  return ad;
}

void check_adapter_matches(const PeftAdapter& ad, const std::vector<model::LoraModule>& mods,
                           const std::string& where) {
  std::set<std::string> names;
  for (const model::LoraModule& m : mods) {
    if (m.experts) continue;  // checked by model::Adapters (their layout differs from PEFT's)
    names.insert(m.name);
    DT_CHECK(ad.a.count(m.name), where, ": has no adapter for module ", m.name,
             " (adapted by the options)");
    const core::Shape want_a{ad.options.r, m.in}, want_b{m.out, ad.options.r};
    DT_CHECK(ad.a.at(m.name).shape == want_a && ad.b.at(m.name).shape == want_b, where, ": module ",
             m.name, " has lora_A ", core::shape_str(ad.a.at(m.name).shape), " and lora_B ",
             core::shape_str(ad.b.at(m.name).shape), ", expected ", core::shape_str(want_a),
             " and ", core::shape_str(want_b));
  }
  for (const auto& [m, t] : ad.a)
    DT_CHECK(names.count(m) || is_expert_module(m), where, ": adapts module ", m,
             ", which is not a linear layer this model adapts (check the base model and targets)");
}

model::LoraSetup to_lora_setup(const PeftAdapter& ad) {
  model::LoraSetup s;
  s.options = ad.options;
  s.options.targets.clear();
  const auto& tp = ad.target_parameters;
  const auto has = [&](const char* p) { return std::find(tp.begin(), tp.end(), p) != tp.end(); };
  const bool experts = has("mlp.experts.gate_up_proj") && has("mlp.experts.down_proj");
  DT_CHECK(tp.empty() || (experts && tp.size() == 2), "PEFT adapter target_parameters ",
           nlohmann::json(tp).dump(),
           ": deltatron adapts the routed experts' two fused parameters together "
           "([\"mlp.experts.gate_up_proj\", \"mlp.experts.down_proj\"]) or not at all");
  s.options.experts = experts;
  for (const auto& [module, a] : ad.a) {
    const core::Tensor& b = ad.b.at(module);
    if (!is_expert_module(module)) {
      s.options.targets.push_back(module);
      s.adapters.emplace(model::lora_a_key(module), a);
      s.adapters.emplace(model::lora_b_key(module), b);
      continue;
    }
    DT_CHECK(experts, "PEFT adapter module ", module,
             " adapts routed experts but target_parameters does not name them");
    const std::string param = expert_param_of(module);
    const int64_t r = s.options.r, E = a.shape[0] / r;
    core::Tensor am = a;
    am.shape = {E, r, a.shape[1]};  // expert e's rows [e r, (e+1) r): the same values
    s.adapters.emplace(model::lora_a_key(param), std::move(am));
    s.adapters.emplace(model::lora_b_key(param), expert_b_to_model(b, r, E));
  }
  return s;
}

model::LoraSetup to_lora_setup(const PeftAdapter& ad, const model::Config& c, double dropout,
                               const std::string& where) {
  model::LoraSetup s = to_lora_setup(ad);
  s.options.dropout = dropout;
  check_adapter_matches(ad, model::lora_modules(c, s.options, where), where);
  return s;
}

PeftAdapter to_peft_adapter(const model::LoraOptions& options, const model::TensorMap& adapters,
                            const std::vector<model::LoraModule>& mods,
                            const std::string& base_model) {
  PeftAdapter ad;
  ad.options = options;
  ad.base_model = base_model;
  for (const model::LoraModule& m : mods) {
    const core::Tensor& a = adapters.at(model::lora_a_key(m.name));
    const core::Tensor& b = adapters.at(model::lora_b_key(m.name));
    if (!m.experts) {
      ad.a.emplace(m.name, a);
      ad.b.emplace(m.name, b);
      continue;
    }
    core::Tensor ap = a;
    ap.shape = {a.shape[0] * a.shape[1], a.shape[2]};
    ad.a.emplace(peft_expert_module(m.name), std::move(ap));
    ad.b.emplace(peft_expert_module(m.name), expert_b_to_peft(b));
    ad.target_parameters = {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"};
  }
  return ad;
}

}  // namespace deltatron::io
