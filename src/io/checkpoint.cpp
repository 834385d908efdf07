// Checkpoint load (validate names/shapes/dtypes, convert to float32) and atomic directory save.
#include "io/checkpoint.h"

#include <unistd.h>

#include <filesystem>
#include <set>
#include <system_error>

#include "core/error.h"
#include "io/file_util.h"
#include "io/safetensors.h"

namespace deltatron::io {

namespace fs = std::filesystem;

bool is_passthrough_name(const std::string& name) {
  return name.rfind("mtp.", 0) == 0 || name.rfind("model.visual.", 0) == 0;
}

Checkpoint load_checkpoint(const std::string& dir) {
  Checkpoint ck;
  ck.config = model::load_config((fs::path(dir) / "config.json").string());
  const model::Config& c = ck.config;
  if (c.is_moe())
    core::fail(dir, ": MoE models are not supported yet (model_type ", c.model_type, ")");
  const SafetensorsSet w(dir);
  const std::vector<model::ParamSpec> specs = param_specs(c);

  // Check every name, shape and dtype before converting anything.
  std::set<std::string> expected;
  for (const model::ParamSpec& s : specs) {
    expected.insert(s.name);
    if (!w.contains(s.name))
      core::fail(dir, ": missing tensor '", s.name, "' (expected shape ", core::shape_str(s.shape),
                 ")");
    const TensorInfo& ti = w.info(s.name);
    if (ti.shape != s.shape)
      core::fail(dir, ": tensor '", s.name, "' has shape ", core::shape_str(ti.shape),
                 ", expected ", core::shape_str(s.shape));
    if (!dtype_is_float(ti.dtype))
      core::fail(dir, ": tensor '", s.name, "' has dtype ", ti.dtype,
                 ", expected F32, BF16 or F16");
  }
  for (const std::string& name : w.names()) {
    if (expected.count(name) || is_passthrough_name(name)) continue;
    if (name == "lm_head.weight" && c.tie_word_embeddings)
      core::fail(dir, ": unexpected tensor 'lm_head.weight': the config ties word embeddings");
    core::fail(dir, ": unexpected tensor '", name, "': not a parameter of this config (prefix '",
               c.prefix, "') nor a pass-through (mtp.*, model.visual.*)");
  }

  for (const model::ParamSpec& s : specs) {
    ck.params.emplace(s.name, w.to_float(s.name));
    ck.param_dtypes.emplace(s.name, w.info(s.name).dtype);
  }
  for (const std::string& name : w.names()) {
    if (expected.count(name)) continue;
    const TensorInfo& ti = w.info(name);
    const auto b = w.bytes(name);
    ck.passthrough.emplace(name, RawTensor{ti.dtype, ti.shape, {b.begin(), b.end()}});
  }
  return ck;
}

namespace {

// The tensors of a checkpoint as writer views, after checking them against the config.
std::map<std::string, TensorView> checkpoint_views(const std::string& dir, const Checkpoint& ck) {
  std::map<std::string, TensorView> views;
  for (const model::ParamSpec& s : param_specs(ck.config)) {
    auto it = ck.params.find(s.name);
    if (it == ck.params.end())
      core::fail(dir, ": cannot save: missing parameter '", s.name, "' (expected shape ",
                 core::shape_str(s.shape), ")");
    const core::Tensor& t = it->second;
    if (t.shape != s.shape || t.numel() != core::numel(s.shape))
      core::fail(dir, ": cannot save: parameter '", s.name, "' has shape ",
                 core::shape_str(t.shape), " (", t.numel(), " values), expected ",
                 core::shape_str(s.shape));
    auto d = ck.param_dtypes.find(s.name);
    const std::string dtype = d == ck.param_dtypes.end() ? "F32" : d->second;
    if (!dtype_is_float(dtype))
      core::fail(dir, ": cannot save: parameter '", s.name, "' has dtype ", dtype,
                 ", expected F32, BF16 or F16");
    views.emplace(s.name, TensorView{dtype, t.shape, t.ptr(), {}});
  }
  for (const auto& kv : ck.params)
    if (!views.count(kv.first))
      core::fail(dir, ": cannot save: '", kv.first, "' is not a parameter of this config");
  for (const auto& [name, r] : ck.passthrough) {
    if (!is_passthrough_name(name) || views.count(name))
      core::fail(dir, ": cannot save: '", name, "' is not a pass-through tensor name");
    views.emplace(name, TensorView{r.dtype, r.shape, nullptr, {r.bytes.data(), r.bytes.size()}});
  }
  return views;
}

// std::filesystem throws filesystem_error; turn failures into one-line core::Errors.
void fs_check(const std::error_code& ec, const std::string& what) {
  if (ec) core::fail(what, ": ", ec.message());
}

}  // namespace

void save_checkpoint(const std::string& dir, const Checkpoint& ck, int64_t max_shard_bytes) {
  if (ck.config.is_moe())
    core::fail(dir, ": MoE models are not supported yet (model_type ", ck.config.model_type, ")");
  if (!ck.config.raw.is_object())
    core::fail(dir, ": cannot save: config.raw is not the config.json object");
  const std::map<std::string, TensorView> views = checkpoint_views(dir, ck);

  fs::path target = fs::path(dir).lexically_normal();
  if (target.filename().empty()) target = target.parent_path();  // "a/b/" -> "a/b"
  DT_CHECK(!target.filename().empty() && target.filename() != "." && target.filename() != "..", dir,
           ": cannot save: not a usable directory name");
  const fs::path parent = target.parent_path().empty() ? fs::path(".") : target.parent_path();
  const std::string base = target.filename().string(), pid = std::to_string(::getpid());
  const fs::path tmp = parent / ("." + base + ".tmp-" + pid);
  const fs::path old = parent / ("." + base + ".old-" + pid);

  std::error_code ec;
  fs::create_directories(parent, ec);
  fs_check(ec, parent.string() + ": cannot create directory");
  if (fs::exists(target) && !fs::is_directory(target))
    core::fail(dir, ": cannot save: exists and is not a directory");
  fs::remove_all(tmp, ec);
  fs_check(ec, tmp.string() + ": cannot remove stale temporary directory");
  fs::create_directory(tmp, ec);
  fs_check(ec, tmp.string() + ": cannot create temporary directory");

  bool moved_old = false;
  try {
    write_safetensors_sharded(tmp.string(), views, {{"format", "pt"}}, max_shard_bytes);
    write_file_atomic((tmp / "config.json").string(), ck.config.raw.dump(2) + "\n");
    fsync_dir(tmp.string());
    if (fs::exists(target)) {
      fs::remove_all(old, ec);
      fs::rename(target, old, ec);
      fs_check(ec, dir + ": cannot move the existing directory aside");
      moved_old = true;
    }
    fs::rename(tmp, target, ec);
    fs_check(ec, dir + ": cannot rename " + tmp.string() + " into place");
    fsync_dir(parent.string());
  } catch (...) {
    std::error_code ignore;
    if (moved_old && !fs::exists(target)) fs::rename(old, target, ignore);
    fs::remove_all(tmp, ignore);
    throw;
  }
  if (moved_old) {
    fs::remove_all(old, ec);
    fs_check(ec, old.string() + ": cannot remove the replaced checkpoint");
  }
}

void save_tensors_f32(const std::string& path, const std::map<std::string, core::Tensor>& t) {
  std::map<std::string, TensorView> views;
  for (const auto& [name, x] : t) {
    if (x.numel() != core::numel(x.shape))
      core::fail(path, ": tensor '", name, "' has ", x.numel(), " values for shape ",
                 core::shape_str(x.shape));
    views.emplace(name, TensorView{"F32", x.shape, x.ptr(), {}});
  }
  write_safetensors(path, views);
}

}  // namespace deltatron::io
