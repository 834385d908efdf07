// A training run's checkpoints: save and the master weights of a resume (train_checkpoint.h).
#include "train/train_checkpoint.h"

#include <cstdio>
#include <map>

#include "core/error.h"
#include "io/peft_adapter.h"
#include "io/safetensors.h"
#include "train/checkpoint_dir.h"
#include "train/finite_check.h"

namespace deltatron::train {

namespace fs = std::filesystem;

std::vector<fs::path> tokenizer_files(const std::string& tok_json) {
  std::vector<fs::path> out;
  const fs::path dir = fs::path(tok_json).parent_path();
  out.push_back(tok_json);
  for (const char* f : {"tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                        "vocab.json", "merges.txt", "generation_config.json"})
    if (fs::exists(dir / f)) out.push_back(dir / f);
  return out;
}

void save_checkpoint(const TrainConfig& cfg, Engine& engine, io::Checkpoint& ck,
                     const TrainState& st, AdamW& opt, const std::vector<fs::path>& tok_files,
                     RunStart& start, model::LoraSetup* lora, const MomentSource* moments) {
  model::TensorMap& weights = lora ? lora->adapters : ck.params;
  engine.sync_weights(weights, opt);  // the moments go to the file one tensor at a time
  if (const auto nf = find_non_finite(weights))
    core::fail("step ", st.step, ": the weights hold non-finite values (", describe(*nf),
               "); no checkpoint written",
               start.earlier.empty() ? "" : "; the earlier run's checkpoints are kept");
  if (!cfg.save_dtype.empty())
    for (auto& [name, dt] : ck.param_dtypes) dt = cfg.save_dtype;
  const MomentSource moment =
      moments ? *moments : MomentSource([&](const std::string& name, bool second, float* out) {
        engine.read_moment(name, second, out);
      });
  const std::string dir =
      lora ? save_training_checkpoint(
                 cfg.out_dir, st.step,
                 [&](const std::string& tmp) {
                   const auto mods = model::lora_modules(ck.config, lora->options, "lora");
                   io::save_peft_adapter(tmp, io::to_peft_adapter(lora->options, lora->adapters,
                                                                  mods, cfg.model_path));
                   for (const auto& f : tok_files)
                     fs::copy_file(f, fs::path(tmp) / f.filename(),
                                   fs::copy_options::overwrite_existing);
                   const std::string state_dir = tmp + "/training_state";
                   fs::create_directories(state_dir);
                   save_train_state(state_dir, st, opt, lora->adapters, moment);
                 })
           : save_training_checkpoint(cfg.out_dir, st.step, [&](const std::string& tmp) {
               io::write_checkpoint_files(tmp,
                                          ck);  // straight into tmp: no staging the cleanup misses
               for (const auto& f : tok_files)
                 fs::copy_file(f, fs::path(tmp) / f.filename(),
                               fs::copy_options::overwrite_existing);
               const std::string state_dir = tmp + "/training_state";
               fs::create_directories(state_dir);
               save_train_state(state_dir, st, opt, ck.params, moment);
               // fp32 master weights, so a resume is bitwise even when the HF files are bf16.
               std::map<std::string, io::TensorRecord> views;
               for (const auto& [name, t] : ck.params)
                 views[name] = io::TensorRecord{"F32", t.shape, t.ptr(), {}};
               io::write_safetensors(state_dir + "/master_weights.safetensors", views);
             });
  remove_earlier_checkpoints(start, dir);
  prune_checkpoints(cfg.out_dir, cfg.keep_last);
  std::fprintf(stderr, "\ncheckpoint: %s\n", dir.c_str());
}

void save_checkpoint_ranks(const Parallel& par, const TrainConfig& cfg, Engine& engine,
                           io::Checkpoint& ck, const TrainState& st, AdamW& opt,
                           const std::vector<fs::path>& tok_files, RunStart& start,
                           model::LoraSetup* lora) {
  if (!engine.sharded()) {
    if (par.root()) save_checkpoint(cfg, engine, ck, st, opt, tok_files, start, lora);
    return;
  }
  model::TensorMap& weights = lora ? lora->adapters : ck.params;
  std::vector<std::string> names;
  for (const auto& [name, t] : weights) names.push_back(name);
  if (!par.root()) {  // serve rank 0's requests
    // ZeRO 3: the weights are gathered first (rank 0's save_checkpoint starts with them).
    if (engine.gathers_weights()) engine.sync_weights(weights, opt);
    std::vector<float> scratch;
    for (;;) {
      int64_t req = 0;
      broadcast(par, req, 0);
      if (req < 0) return;
      DT_CHECK(req / 2 < int64_t(names.size()), "checkpoint save: request ", req, " for one of ",
               names.size(), " parameters");
      const std::string& name = names[size_t(req / 2)];
      scratch.resize(size_t(weights.at(name).numel()));
      engine.read_moment(name, req % 2 == 1, scratch.data());
    }
  }
  std::map<std::string, int64_t> index;
  for (size_t i = 0; i < names.size(); ++i) index[names[i]] = int64_t(i);
  const MomentSource moment = [&](const std::string& name, bool second, float* out) {
    int64_t req = 2 * index.at(name) + (second ? 1 : 0);
    broadcast(par, req, 0);
    engine.read_moment(name, second, out);
  };
  int64_t done = -1;
  try {
    save_checkpoint(cfg, engine, ck, st, opt, tok_files, start, lora, &moment);
  } catch (...) {
    try {
      broadcast(par, done, 0);  // release the other ranks; this rank's error stops the job
    } catch (...) {
    }
    throw;
  }
  broadcast(par, done, 0);
}

void restore_master_weights(const std::string& ckpt_dir, io::Checkpoint& ck,
                            const LocalSlice& local) {
  const io::SafetensorsFile f(ckpt_dir + "/training_state/master_weights.safetensors");
  for (auto& [name, t] : ck.params) {
    DT_CHECK(f.contains(name), f.path(), ": missing master weight ", name);
    const core::Shape& full = f.info(name).shape;
    const std::optional<io::ParamSlice> sl = local ? local(name, full) : std::nullopt;
    DT_CHECK((sl ? sl->shape : full) == t.shape, f.path(), ": master weight ", name, " has shape ",
             core::shape_str(full),
             sl ? " (this rank's slice " + core::shape_str(sl->shape) + ")" : "", ", expected ",
             core::shape_str(t.shape));
    t = io::read_float_slice(f, name, sl);
  }
}

}  // namespace deltatron::train
