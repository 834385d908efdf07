// HF checkpoint layouts: fused vs per-expert MoE experts, detected per module, converted both ways.
#include "io/hf_layout.h"

#include <algorithm>
#include <cctype>
#include <cstring>

#include "core/error.h"
#include "io/checkpoint.h"

namespace deltatron::io {

namespace {

constexpr const char* kGateUp = "gate_up_proj";
constexpr const char* kDown = "down_proj";

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

// "model.layers.0.mlp.experts." -> "model.layers.0.mlp.experts" for messages.
std::string module_name(const std::string& m) { return m.substr(0, m.size() - 1); }

// Parses the expert index of a per-expert name "<m><digits>.<rest>"; false when `name` does not
// have that form. Indices too large for int64 saturate (they are out of range anyway).
bool parse_expert_index(const std::string& m, const std::string& name, int64_t& e,
                        std::string& rest) {
  if (!starts_with(name, m)) return false;
  size_t i = m.size(), j = i;
  while (j < name.size() && std::isdigit(static_cast<unsigned char>(name[j]))) ++j;
  if (j == i || j >= name.size() || name[j] != '.') return false;
  e = 0;
  for (size_t k = i; k < j; ++k)
    e = e > (INT64_MAX - 9) / 10 ? INT64_MAX : e * 10 + (name[k] - '0');
  rest = name.substr(j + 1);
  return true;
}

// Range of sorted `names` that start with prefix p.
std::pair<std::vector<std::string>::const_iterator, std::vector<std::string>::const_iterator>
prefix_range(const std::vector<std::string>& names, const std::string& p) {
  auto lo = std::lower_bound(names.begin(), names.end(), p);
  auto hi = lo;
  while (hi != names.end() && starts_with(*hi, p)) ++hi;
  return {lo, hi};
}

}  // namespace

std::string expert_tensor_name(const std::string& m, int64_t e, const char* proj) {
  return m + std::to_string(e) + "." + proj + ".weight";
}

std::vector<ParamSource> layout_plan(const model::Config& c, const ExpertsFormats& formats) {
  const std::vector<std::string> modules = model::expert_module_prefixes(c);
  for (const auto& [m, fmt] : formats)
    if (std::find(modules.begin(), modules.end(), m) == modules.end())
      core::fail("expert layout recorded for '", m,
                 "', which is not a MoE expert module of this config");

  std::vector<ParamSource> plan;
  for (const model::ParamSpec& s : model::param_specs(c)) {
    ParamSource src{s, Assembly::copy, {s}, ""};
    for (const bool gate_up : {true, false}) {
      const char* proj = gate_up ? kGateUp : kDown;
      const size_t n = std::strlen(proj);
      if (s.name.size() <= n || s.name.compare(s.name.size() - n, n, proj) != 0) continue;
      const std::string m = s.name.substr(0, s.name.size() - n);
      auto it = formats.find(m);
      if (it == formats.end() || it->second.layout != ExpertLayout::per_expert) continue;
      // s.shape: gate_up [E, 2F, D], down [E, D, F].
      const int64_t E = s.shape.at(0);
      src.module = m;
      src.files.clear();
      if (gate_up) {
        src.how = Assembly::stack_gate_up;
        const core::Shape one{s.shape[1] / 2, s.shape[2]};
        for (int64_t e = 0; e < E; ++e) {
          src.files.push_back({expert_tensor_name(m, e, "gate_proj"), one});
          src.files.push_back({expert_tensor_name(m, e, "up_proj"), one});
        }
      } else {
        src.how = Assembly::stack_down;
        for (int64_t e = 0; e < E; ++e)
          src.files.push_back({expert_tensor_name(m, e, "down_proj"), {s.shape[1], s.shape[2]}});
      }
    }
    plan.push_back(std::move(src));
  }
  return plan;
}

ExpertsFormats detect_expert_formats(const model::Config& c, const std::vector<std::string>& names,
                                     const std::string& source) {
  std::vector<std::string> sorted = names;
  if (!std::is_sorted(sorted.begin(), sorted.end())) std::sort(sorted.begin(), sorted.end());
  ExpertsFormats out;
  for (const std::string& m : model::expert_module_prefixes(c)) {
    std::string fused, per_expert;  // one example name of each kind
    const auto [lo, hi] = prefix_range(sorted, m);
    for (auto it = lo; it != hi; ++it) {
      int64_t e;
      std::string rest;
      if (*it == m + kGateUp || *it == m + kDown) {
        if (fused.empty()) fused = *it;
      } else if (parse_expert_index(m, *it, e, rest)) {
        if (per_expert.empty()) per_expert = *it;
      }
    }
    if (!fused.empty() && !per_expert.empty())
      core::fail(source, ": ", module_name(m), " mixes fused and per-expert tensors ('", fused,
                 "' and '", per_expert, "'); a module must use one layout");
    out[m].layout = per_expert.empty() ? ExpertLayout::fused : ExpertLayout::per_expert;
  }
  return out;
}

core::Tensor assemble_param(const ParamSource& src, std::vector<core::Tensor> files) {
  DT_CHECK(files.size() == src.files.size(), "assemble_param: ", src.param.name, " needs ",
           src.files.size(), " file tensors, got ", files.size());
  if (src.how == Assembly::copy) return std::move(files[0]);
  core::Tensor out(src.param.shape);
  // Each file tensor fills the next contiguous block: gate_e then up_e fill row block e of
  // gate_up [E, 2F, D] (gate rows [0, F), up rows [F, 2F)); down_e fills block e of [E, D, F].
  size_t off = 0;
  for (size_t k = 0; k < files.size(); ++k) {
    const core::Tensor& f = files[k];
    DT_CHECK(f.shape == src.files[k].shape && f.numel() == core::numel(f.shape),
             "assemble_param: ", src.files[k].name, " has shape ", core::shape_str(f.shape),
             ", expected ", core::shape_str(src.files[k].shape));
    std::copy(f.data.begin(), f.data.end(), out.data.begin() + static_cast<ptrdiff_t>(off));
    off += f.data.size();
  }
  DT_CHECK(off == out.data.size(), "assemble_param: ", src.param.name, " got ", off,
           " values, expected ", out.data.size());
  return out;
}

std::vector<core::Tensor> split_param(const ParamSource& src, const core::Tensor& param) {
  DT_CHECK(param.shape == src.param.shape && param.numel() == core::numel(param.shape),
           "split_param: ", src.param.name, " has shape ", core::shape_str(param.shape),
           ", expected ", core::shape_str(src.param.shape));
  std::vector<core::Tensor> out;
  if (src.how == Assembly::copy) {
    out.push_back(param);
    return out;
  }
  size_t off = 0;  // the inverse of assemble_param's block copy
  for (const model::ParamSpec& f : src.files) {
    core::Tensor t(f.shape);
    std::copy_n(param.data.begin() + static_cast<ptrdiff_t>(off), t.data.size(), t.data.begin());
    off += t.data.size();
    out.push_back(std::move(t));
  }
  return out;
}

std::string explain_unknown_tensor(const model::Config& c, const ExpertsFormats& formats,
                                   const std::string& name) {
  for (const std::string& m : model::expert_module_prefixes(c)) {
    int64_t e;
    std::string rest;
    if (!parse_expert_index(m, name, e, rest)) continue;
    if (e >= c.num_experts)
      return "expert index " + std::to_string(e) +
             " >= num_experts = " + std::to_string(c.num_experts);
    auto it = formats.find(m);
    if (it == formats.end() || it->second.layout == ExpertLayout::fused)
      return "a per-expert tensor, but " + module_name(m) + " is stored fused";
    return "not a per-expert tensor name (expected " + m + "<e>.{gate_proj,up_proj,down_proj}" +
           ".weight)";
  }
  if (c.is_moe() && c.shared_expert_intermediate_size == 0 &&
      name.find(".mlp.shared_expert") != std::string::npos)
    return "the config has shared_expert_intermediate_size = 0 (no shared expert)";
  return "";
}

std::map<std::string, core::Tensor> to_checkpoint_names(
    const Checkpoint& ck, const std::map<std::string, core::Tensor>& canonical) {
  const std::vector<ParamSource> plan = layout_plan(ck.config, ck.expert_formats);
  std::map<std::string, const ParamSource*> by_name;
  for (const ParamSource& s : plan) by_name.emplace(s.param.name, &s);
  std::map<std::string, core::Tensor> out;
  for (const auto& [name, t] : canonical) {
    auto it = by_name.find(name);
    if (it == by_name.end())
      core::fail("to_checkpoint_names: '", name, "' is not a parameter of this config");
    const ParamSource& src = *it->second;
    if (t.shape != src.param.shape || t.numel() != core::numel(src.param.shape))
      core::fail("to_checkpoint_names: '", name, "' has shape ", core::shape_str(t.shape), " (",
                 t.numel(), " values), expected ", core::shape_str(src.param.shape));
    std::vector<core::Tensor> parts = split_param(src, t);
    for (size_t k = 0; k < parts.size(); ++k) out.emplace(src.files[k].name, std::move(parts[k]));
  }
  return out;
}

std::string adapter_module_weight(const model::Config& c, const std::string& module) {
  static const std::string text = "model.", vlm = "model.language_model.", visual = "model.visual.";
  std::string name = module;
  if (c.prefix == vlm && starts_with(module, text) && !starts_with(module, vlm) &&
      !starts_with(module, visual))
    name = vlm + module.substr(text.size());
  else if (c.prefix == text && starts_with(module, vlm))
    name = text + module.substr(vlm.size());
  return name + ".weight";
}

}  // namespace deltatron::io
