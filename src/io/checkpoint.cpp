// Checkpoint load (validate names/shapes/dtypes, convert to float32) and atomic directory save.
#include "io/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.h"
#include "io/file_util.h"
#include "io/output_dir.h"
#include "io/safetensors.h"

namespace deltatron::io {

namespace fs = std::filesystem;

bool is_mtp_name(const std::string& name) { return name.rfind("mtp.", 0) == 0; }

bool is_passthrough_name(const std::string& name) {
  return is_mtp_name(name) || name.rfind("model.visual.", 0) == 0;
}

bool is_passthrough_name(const std::string& name, const model::Config& c) {
  if (name.rfind("model.visual.", 0) == 0) return c.vision_mode == model::VisionMode::off;
  return is_passthrough_name(name) && !(c.mtp_enabled && is_mtp_name(name));
}

namespace {

// Decides config.mtp_enabled from the config, the options and whether the files have mtp.*.
void resolve_mtp(const std::string& dir, const SafetensorsSet& w, const LoadOptions& opt,
                 model::Config& c) {
  c.mtp_enabled = false;
  if (c.mtp_num_hidden_layers == 0) return;
  if (opt.ignore_mtp) {
    std::fprintf(stderr,
                 "warning: %s: config declares mtp_num_hidden_layers=%lld; ignoring MTP "
                 "(--ignore-mtp): mtp.* tensors are carried through unchanged, not trained\n",
                 dir.c_str(), static_cast<long long>(c.mtp_num_hidden_layers));
    return;
  }
  if (std::none_of(w.names().begin(), w.names().end(), is_mtp_name))
    core::fail("config declares mtp_num_hidden_layers=", c.mtp_num_hidden_layers, " but ", dir,
               " has no mtp.* tensors (pass --ignore-mtp to train without MTP)");
  c.mtp_enabled = true;
}

// Checks one file tensor of the plan: present, the expected shape, a float dtype.
void check_file_tensor(const std::string& dir, const SafetensorsSet& w, const ParamSource& src,
                       const model::ParamSpec& f) {
  if (!w.contains(f.name)) {
    if (src.how == Assembly::copy)
      core::fail(dir, ": missing tensor '", f.name, "' (expected shape ", core::shape_str(f.shape),
                 ")");
    core::fail(dir, ": ", f.name, " is missing (expected shape ", core::shape_str(f.shape), "; ",
               src.module.substr(0, src.module.size() - 1), " is stored per expert, ",
               src.param.shape.at(0), " experts)");
  }
  const TensorInfo& ti = w.info(f.name);
  if (ti.shape != f.shape)
    core::fail(dir, ": tensor '", f.name, "' has shape ", core::shape_str(ti.shape), ", expected ",
               core::shape_str(f.shape));
  if (!dtype_is_float(ti.dtype))
    core::fail(dir, ": tensor '", f.name, "' has dtype ", ti.dtype, ", expected F32, BF16 or F16");
}

}  // namespace

core::Tensor take_slice(const core::Tensor& full, const ParamSlice& s, const std::string& name) {
  core::Tensor t(s.shape);
  int64_t n = 0;
  for (const ElementRun& r : s.runs) {
    DT_CHECK(r.offset >= 0 && r.count >= 0 && r.offset + r.count <= full.numel(), name,
             ": elements [", r.offset, ", ", r.offset + r.count, ") of a tensor of ", full.numel());
    DT_CHECK(n + r.count <= t.numel(), name, ": the slice's runs exceed its shape ",
             core::shape_str(s.shape));
    std::copy(full.ptr() + r.offset, full.ptr() + r.offset + r.count, t.ptr() + n);
    n += r.count;
  }
  DT_CHECK(n == t.numel(), name, ": a slice of ", n, " elements for shape ",
           core::shape_str(s.shape));
  return t;
}

core::Tensor read_float_slice(const SafetensorsFile& f, const std::string& key,
                              const std::optional<ParamSlice>& s) {
  if (!s) return f.to_float(key);
  core::Tensor t(s->shape);
  int64_t n = 0;
  for (const ElementRun& r : s->runs) n += r.count;
  DT_CHECK(n == t.numel(), f.path(), ": ", key, ": a slice of ", n, " elements for shape ",
           core::shape_str(s->shape));
  f.read_float(key, s->runs, t.ptr());
  return t;
}

Checkpoint load_checkpoint(const std::string& dir) { return load_checkpoint(dir, LoadOptions{}); }

Checkpoint load_checkpoint(const std::string& dir, const LoadOptions& opt) {
  Checkpoint ck;
  ck.config = model::load_config((fs::path(dir) / "config.json").string());
  model::Config& c = ck.config;
  const SafetensorsSet w(dir);
  resolve_mtp(dir, w, opt, c);
  c.vision_mode = opt.vision;
  if (opt.vision != model::VisionMode::off) model::check_vision(c, dir + "/config.json");
  ck.expert_formats = detect_expert_formats(c, w.names(), dir);
  const std::vector<ParamSource> plan = layout_plan(c, ck.expert_formats);

  // Check every name, shape and dtype before converting anything.
  std::set<std::string> consumed;
  for (const ParamSource& src : plan)
    for (const model::ParamSpec& f : src.files) {
      check_file_tensor(dir, w, src, f);
      consumed.insert(f.name);
    }
  for (const std::string& name : w.names()) {
    if (consumed.count(name) || is_passthrough_name(name, c)) continue;
    if (name == "lm_head.weight" && c.tie_word_embeddings)
      core::fail(dir, ": unexpected tensor 'lm_head.weight': the config ties word embeddings");
    const std::string why = explain_unknown_tensor(c, ck.expert_formats, name);
    if (!why.empty()) core::fail(dir, ": unexpected tensor '", name, "': ", why);
    core::fail(dir, ": unexpected tensor '", name, "': not a parameter of this config (prefix '",
               c.prefix, "'", c.mtp_enabled ? ", MTP enabled" : "", ") nor a pass-through (",
               c.mtp_enabled ? "" : "mtp.*, ",
               c.vision_mode == model::VisionMode::off ? "model.visual.*)" : "nothing else)");
  }

  for (const ParamSource& src : plan) {
    const std::string& name = src.param.name;
    const std::optional<ParamSlice> sl =
        opt.slice ? opt.slice(c, name, src.param.shape) : std::optional<ParamSlice>();
    std::string dtype;  // common dtype of the sources, F32 when they differ
    for (const model::ParamSpec& f : src.files) {
      const std::string& fd = w.info(f.name).dtype;
      dtype = dtype.empty() || dtype == fd ? fd : "F32";
      if (src.how != Assembly::copy) ck.expert_formats.at(src.module).dtypes[f.name] = fd;
    }
    core::Tensor t;
    if (sl && src.how == Assembly::copy) {  // only the slice's bytes
      t = core::Tensor(sl->shape);
      int64_t n = 0;
      for (const ElementRun& r : sl->runs) n += r.count;
      DT_CHECK(n == t.numel(), dir, ": ", name, ": a slice of ", n, " elements for shape ",
               core::shape_str(sl->shape));
      if (opt.stats) opt.stats->add(t.numel() * 4);
      w.read_float(name, sl->runs, t.ptr());
    } else {  // the files converted whole (staging), then sliced
      std::vector<core::Tensor> files;
      int64_t staged = 0;
      for (const model::ParamSpec& f : src.files) {
        files.push_back(w.to_float(f.name));
        staged += files.back().numel() * 4;
        if (opt.stats) opt.stats->add(files.back().numel() * 4);
      }
      // copy: the file tensor moved through; stacked: a new tensor, then the files freed.
      t = assemble_param(src, std::move(files));
      if (opt.stats && src.how != Assembly::copy) {
        opt.stats->add(t.numel() * 4);
        opt.stats->sub(staged);
      }
      if (sl) {
        core::Tensor kept = take_slice(t, *sl, dir + ": " + name);
        if (opt.stats) {
          opt.stats->add(kept.numel() * 4);
          opt.stats->sub(t.numel() * 4);
        }
        t = std::move(kept);
      }
    }
    if (opt.stats) opt.stats->kept_bytes += t.numel() * 4;
    ck.params.emplace(name, std::move(t));
    ck.param_dtypes.emplace(name, dtype);
  }
  for (const std::string& name : w.names()) {
    if (consumed.count(name)) continue;
    const TensorInfo& ti = w.info(name);
    const auto b = w.bytes(name);
    ck.passthrough.emplace(name, RawTensor{ti.dtype, ti.shape, {b.begin(), b.end()}});
  }
  const fs::path pre = fs::path(dir) / "preprocessor_config.json";
  if (fs::exists(pre)) {
    std::ifstream in(pre);
    try {
      ck.preprocessor = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      core::fail(pre.string(), ": not valid JSON (", e.what(), ")");
    }
  }
  return ck;
}

namespace {

// One file tensor of a parameter: a run of the parameter's elements (the whole of a copied one;
// expert e's block of a per-expert module: split_param's blocks are consecutive), its dtype and
// shape in the file.
struct FileTensor {
  std::string param, dtype;
  core::Shape shape;
  int64_t offset = 0, count = 0;
};

// The file tensors of the checkpoint's parameters (by file name) under the config's layout and
// expert formats, their dtypes checked.
std::map<std::string, FileTensor> param_file_tensors(const std::string& dir, const Checkpoint& ck,
                                                     std::vector<ParamSource>& plan) {
  try {
    plan = layout_plan(ck.config, ck.expert_formats);
  } catch (const core::Error& e) {
    core::fail(dir, ": cannot save: ", e.what());
  }
  auto dtype_of = [&](const std::string& name) -> std::string {
    auto d = ck.param_dtypes.find(name);
    return d == ck.param_dtypes.end() ? "F32" : d->second;
  };
  std::map<std::string, FileTensor> out;
  for (const ParamSource& src : plan) {
    const ExpertsFormat* fmt =
        src.how == Assembly::copy ? nullptr : &ck.expert_formats.at(src.module);
    int64_t off = 0;
    for (const model::ParamSpec& f : src.files) {
      std::string dtype = dtype_of(src.param.name);
      if (fmt) {
        auto d = fmt->dtypes.find(f.name);
        if (d != fmt->dtypes.end()) dtype = d->second;
      }
      if (!dtype_is_float(dtype))
        core::fail(dir, ": cannot save: tensor '", f.name, "' has dtype ", dtype,
                   ", expected F32, BF16 or F16");
      const int64_t n = core::numel(f.shape);
      out.emplace(f.name, FileTensor{src.param.name, dtype, f.shape, off, n});
      off += n;
    }
    DT_CHECK(off == core::numel(src.param.shape), dir, ": cannot save: the file tensors of ",
             src.param.name, " hold ", off, " values, the parameter ",
             core::numel(src.param.shape));
  }
  return out;
}

// The pass-through tensors as writer records, checked against the config.
void add_passthrough(const std::string& dir, const Checkpoint& ck,
                     std::map<std::string, TensorRecord>& views) {
  for (const auto& [name, r] : ck.passthrough) {
    if (!is_passthrough_name(name) || views.count(name))
      core::fail(dir, ": cannot save: '", name, "' is not a pass-through tensor name");
    if (!is_passthrough_name(name, ck.config))
      core::fail(dir, ": cannot save: pass-through '", name,
                 "' is an MTP or vision tensor but config.mtp_enabled or config.vision_mode is "
                 "set (those tensors are parameters then)");
    views.emplace(name, TensorRecord{r.dtype, r.shape, nullptr, {r.bytes.data(), r.bytes.size()}});
  }
}

// The tensors of a checkpoint as writer views under the checkpoint's names and layout, after
// checking ck.params against the config (a per-expert file tensor points into its parameter).
std::map<std::string, TensorRecord> checkpoint_views(const std::string& dir, const Checkpoint& ck) {
  std::vector<ParamSource> plan;
  const std::map<std::string, FileTensor> files = param_file_tensors(dir, ck, plan);
  std::set<std::string> param_names;
  for (const ParamSource& src : plan) {
    const model::ParamSpec& s = src.param;
    param_names.insert(s.name);
    auto it = ck.params.find(s.name);
    if (it == ck.params.end())
      core::fail(dir, ": cannot save: missing parameter '", s.name, "' (expected shape ",
                 core::shape_str(s.shape), ")");
    const core::Tensor& t = it->second;
    if (t.shape != s.shape || t.numel() != core::numel(s.shape))
      core::fail(dir, ": cannot save: parameter '", s.name, "' has shape ",
                 core::shape_str(t.shape), " (", t.numel(), " values), expected ",
                 core::shape_str(s.shape));
  }
  for (const auto& kv : ck.params)
    if (!param_names.count(kv.first))
      core::fail(dir, ": cannot save: '", kv.first, "' is not a parameter of this config");
  std::map<std::string, TensorRecord> views;
  for (const auto& [fname, f] : files)
    views.emplace(fname,
                  TensorRecord{f.dtype, f.shape, ck.params.at(f.param).ptr() + f.offset, {}});
  add_passthrough(dir, ck, views);
  return views;
}

void write_config_files(const std::string& dir, const Checkpoint& ck) {
  write_file_atomic((fs::path(dir) / "config.json").string(), ck.config.raw.dump(2) + "\n");
  if (ck.preprocessor.is_object())
    write_file_atomic((fs::path(dir) / "preprocessor_config.json").string(),
                      ck.preprocessor.dump(2) + "\n");
}

}  // namespace

void write_checkpoint_files(const std::string& dir, const Checkpoint& ck, int64_t max_shard_bytes) {
  if (!ck.config.raw.is_object())
    core::fail(dir, ": cannot save: config.raw is not the config.json object");
  const std::map<std::string, TensorRecord> views = checkpoint_views(dir, ck);
  write_safetensors_sharded(dir, views, {{"format", "pt"}}, max_shard_bytes);
  write_config_files(dir, ck);
}

void write_checkpoint_files(const std::string& dir, const Checkpoint& ck, const ParamReader& read,
                            int64_t max_shard_bytes, SaveStats* stats) {
  if (!ck.config.raw.is_object())
    core::fail(dir, ": cannot save: config.raw is not the config.json object");
  std::vector<ParamSource> plan;
  const std::map<std::string, FileTensor> files = param_file_tensors(dir, ck, plan);
  std::map<std::string, TensorRecord> views;
  for (const auto& [fname, f] : files) {
    TensorRecord r;
    r.dtype = f.dtype;
    r.shape = f.shape;
    r.fill = [&read, &f, stats](uint8_t* dst) {  // dst: the writer's buffer of this tensor
      const ElementRun run{f.offset, f.count};
      const int64_t stored = f.count * dtype_size(f.dtype);
      if (stats) stats->add(stored);
      if (f.dtype == "F32") {
        read(f.param, std::span<const ElementRun>(&run, 1), reinterpret_cast<float*>(dst));
      } else {
        std::vector<float> x(static_cast<size_t>(f.count));
        if (stats) stats->add(f.count * 4);
        read(f.param, std::span<const ElementRun>(&run, 1), x.data());
        float_to_dtype(x.data(), f.count, f.dtype, dst);
        if (stats) stats->sub(f.count * 4);
      }
      if (stats) stats->sub(stored);
    };
    views.emplace(fname, std::move(r));
  }
  add_passthrough(dir, ck, views);
  write_safetensors_sharded(dir, views, {{"format", "pt"}}, max_shard_bytes);
  write_config_files(dir, ck);
}

void save_checkpoint(const std::string& dir, const Checkpoint& ck, int64_t max_shard_bytes) {
  if (!ck.config.raw.is_object())
    core::fail(dir, ": cannot save: config.raw is not the config.json object");
  checkpoint_views(dir, ck);  // validate before creating anything
  StagedOutput staged(dir);
  write_checkpoint_files(staged.path(), ck, max_shard_bytes);
  staged.install("");
}

void save_tensors_f32(const std::string& path, const std::map<std::string, core::Tensor>& t) {
  std::map<std::string, TensorRecord> views;
  for (const auto& [name, x] : t) {
    if (x.numel() != core::numel(x.shape))
      core::fail(path, ": tensor '", name, "' has ", x.numel(), " values for shape ",
                 core::shape_str(x.shape));
    views.emplace(name, TensorRecord{"F32", x.shape, x.ptr(), {}});
  }
  write_safetensors(path, views);
}

}  // namespace deltatron::io
