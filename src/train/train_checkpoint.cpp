// A training run's checkpoints: save and the master weights of a resume (train_checkpoint.h).
#include "train/train_checkpoint.h"

#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <utility>

#include "core/error.h"
#include "io/peft_adapter.h"
#include "io/safetensors.h"
#include "train/checkpoint_dir.h"
#include "train/expert_parallel.h"
#include "train/finite_check.h"
#include "train/state_stream.h"
#include "train/tensor_parallel.h"

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

namespace {

// The whole tensor of a parameter's state into out (rank 0's side of a StateReader::read).
using StateGet = std::function<void(StatePart part, const std::string& name, float* out)>;

// The first non-finite value of one tensor, if any.
std::optional<NonFinite> non_finite(const std::string& name, const float* x, int64_t n) {
  std::optional<NonFinite> nf;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isfinite(x[i])) continue;
    if (!nf) nf = NonFinite{name, i, x[i], 0};
    ++nf->count;
  }
  return nf;
}

// Rank 0's save of a full-model checkpoint (not LoRA), every tensor read from `get` as the
// writers reach it: training_state/master_weights.safetensors first (each weight read once and
// checked: a non-finite value stops the save, nothing is written), the moments
// (save_train_state), then the HF files from the master weights just written (mapped: no
// further reads), the tokenizer files. Returns the checkpoint's directory.
std::string write_model_checkpoint(const TrainConfig& cfg, io::Checkpoint& ck, const TrainState& st,
                                   const AdamW& opt, const std::vector<fs::path>& tok_files,
                                   const RunStart& start,
                                   const std::map<std::string, core::Shape>& shapes,
                                   const StateGet& get, io::SaveStats* stats) {
  if (!cfg.save_dtype.empty())
    for (auto& [name, dt] : ck.param_dtypes) dt = cfg.save_dtype;
  return save_training_checkpoint(cfg.out_dir, st.step, [&](const std::string& tmp) {
    const std::string state_dir = tmp + "/training_state";
    fs::create_directories(state_dir);
    // fp32 master weights, so a resume is bitwise even when the HF files are bf16.
    std::map<std::string, io::TensorRecord> views;
    for (const auto& [name, shape] : shapes) {
      io::TensorRecord r;
      r.dtype = "F32";
      r.shape = shape;
      r.fill = [&, name = name, n = core::numel(shape)](uint8_t* dst) {
        if (stats) stats->add(4 * n);  // the writer's buffer
        float* x = reinterpret_cast<float*>(dst);
        get(StatePart::weight, name, x);
        if (const auto nf = non_finite(name, x, n))
          core::fail("step ", st.step, ": the weights hold non-finite values (", describe(*nf),
                     "); no checkpoint written",
                     start.earlier.empty() ? "" : "; the earlier run's checkpoints are kept");
        if (stats) stats->sub(4 * n);
      };
      views.emplace(name, std::move(r));
    }
    const std::string masters = state_dir + "/master_weights.safetensors";
    io::write_safetensors(masters, views);
    save_train_state(state_dir, st, opt, shapes,
                     [&](const std::string& name, bool second, float* out) {
                       const int64_t n = core::numel(shapes.at(name));
                       if (stats) stats->add(4 * n);  // the writer's buffer (at most f32)
                       get(second ? StatePart::exp_avg_sq : StatePart::exp_avg, name, out);
                       if (stats) stats->sub(4 * n);
                     });
    const io::SafetensorsFile master(masters);
    io::write_checkpoint_files(
        tmp, ck,
        [&](const std::string& name, std::span<const io::ElementRun> runs, float* out) {
          master.read_float(name, runs, out);
        },
        5'000'000'000, stats);
    for (const auto& f : tok_files)
      fs::copy_file(f, fs::path(tmp) / f.filename(), fs::copy_options::overwrite_existing);
  });
}

void finish_save(const TrainConfig& cfg, RunStart& start, const std::string& dir) {
  remove_earlier_checkpoints(start, dir);
  prune_checkpoints(cfg.out_dir, cfg.keep_last);
  std::fprintf(stderr, "\ncheckpoint: %s\n", dir.c_str());
}

}  // namespace

void save_checkpoint(const TrainConfig& cfg, Engine& engine, io::Checkpoint& ck,
                     const TrainState& st, AdamW& opt, const std::vector<fs::path>& tok_files,
                     RunStart& start, model::LoraSetup* lora, const MomentSource* moments) {
  if (!lora) {  // one rank: the engine's tensors one at a time
    const Parallel one = single_rank(core::Device::cpu);
    StateReader reader(one, engine, ck.params, ck.config, opt, nullptr, nullptr);
    reader.sync_step();
    const StateGet get = [&](StatePart part, const std::string& name, float* out) {
      if (part != StatePart::weight && moments)
        return (*moments)(name, part == StatePart::exp_avg_sq, out);
      reader.read(part, name, out);
    };
    finish_save(
        cfg, start,
        write_model_checkpoint(cfg, ck, st, opt, tok_files, start, reader.shapes(), get, nullptr));
    return;
  }
  model::TensorMap& weights = lora->adapters;
  engine.sync_weights(weights, opt);  // the moments go to the file one tensor at a time
  if (const auto nf = find_non_finite(weights))
    core::fail("step ", st.step, ": the weights hold non-finite values (", describe(*nf),
               "); no checkpoint written",
               start.earlier.empty() ? "" : "; the earlier run's checkpoints are kept");
  const MomentSource moment =
      moments ? *moments : MomentSource([&](const std::string& name, bool second, float* out) {
        engine.read_moment(name, second, out);
      });
  const std::string dir =
      save_training_checkpoint(cfg.out_dir, st.step, [&](const std::string& tmp) {
        const auto mods = model::lora_modules(ck.config, lora->options, "lora");
        io::save_peft_adapter(
            tmp, io::to_peft_adapter(lora->options, lora->adapters, mods, cfg.model_path));
        for (const auto& f : tok_files)
          fs::copy_file(f, fs::path(tmp) / f.filename(), fs::copy_options::overwrite_existing);
        const std::string state_dir = tmp + "/training_state";
        fs::create_directories(state_dir);
        save_train_state(state_dir, st, opt, shapes_of(lora->adapters), moment);
      });
  finish_save(cfg, start, dir);
}

namespace {

// The request protocol of a collective save. Rank 0 runs `write`, which calls request(item, part)
// before each collective read of part `part` of item `item` (of `items` items with `parts` parts
// each); it broadcasts item x parts + part. Every other rank serves: serve(item, part) for each
// request, until rank 0 broadcasts -1 (done, also when its write fails: this rank's error stops
// the job).
using SaveRequest = std::function<void(int64_t item, int64_t part)>;
void collective_save(const Parallel& par, int64_t items, int64_t parts, const SaveRequest& serve,
                     const std::function<void(const SaveRequest& request)>& write) {
  if (!par.root()) {
    for (;;) {
      int64_t req = 0;
      broadcast(par, req, 0);
      if (req < 0) return;
      DT_CHECK(req / parts < items, "checkpoint save: request ", req, " for one of ", items,
               " parameters");
      serve(req / parts, req % parts);
    }
  }
  const SaveRequest request = [&](int64_t item, int64_t part) {
    int64_t req = parts * item + part;
    broadcast(par, req, 0);
  };
  int64_t done = -1;
  try {
    write(request);
  } catch (...) {
    try {
      broadcast(par, done, 0);  // release the other ranks; this rank's error stops the job
    } catch (...) {
    }
    throw;
  }
  broadcast(par, done, 0);
}

// The LoRA save of a parallel run. With ep or tp the adapters' slices (small: the base is not
// saved) are gathered whole on every rank first (collective), then rank 0 writes them; otherwise
// the adapters are whole on every rank, and with ZeRO the moments are read collectively, as
// requests from rank 0.
void save_lora_ranks(const Parallel& par, const TrainConfig& cfg, Engine& engine,
                     io::Checkpoint& ck, const TrainState& st, AdamW& opt,
                     const std::vector<fs::path>& tok_files, RunStart& start,
                     model::LoraSetup* lora, const ExpertGroups* eg, const TensorGroups* tg) {
  if ((eg && eg->on()) || (tg && tg->on())) {
    static const ExpertGroups no_ep;
    GatheredState g =
        gather_state(engine, lora->adapters, opt, eg ? *eg : no_ep, par.comm->device());
    if (tg)
      for (model::TensorMap* t : {&g.weights, &g.exp_avg, &g.exp_avg_sq})
        gather_shards(*t, *tg, ck.config, par.comm->device());
    if (par.root()) {
      model::TensorMap local = std::exchange(lora->adapters, model::zeros_like(g.weights));
      const auto saved = saved_state_engine(g);
      try {
        save_checkpoint(cfg, *saved, ck, st, opt, tok_files, start, lora);
      } catch (...) {
        lora->adapters = std::move(local);
        throw;
      }
      lora->adapters = std::move(local);
    }
    return;
  }
  if (!engine.sharded()) {
    if (par.root()) save_checkpoint(cfg, engine, ck, st, opt, tok_files, start, lora);
    return;
  }
  model::TensorMap& weights = lora->adapters;
  std::vector<std::string> names;
  std::map<std::string, int64_t> index;
  for (const auto& [name, t] : weights) {
    index[name] = int64_t(names.size());
    names.push_back(name);
  }
  std::vector<float> scratch;  // a serving rank's copy of the moment it reads
  collective_save(
      par, int64_t(names.size()), 2,
      [&](int64_t item, int64_t part) {
        const std::string& name = names[size_t(item)];
        scratch.resize(size_t(weights.at(name).numel()));
        engine.read_moment(name, part == 1, scratch.data());
      },
      [&](const SaveRequest& request) {
        const MomentSource moment = [&](const std::string& name, bool second, float* out) {
          request(index.at(name), second ? 1 : 0);
          engine.read_moment(name, second, out);
        };
        save_checkpoint(cfg, engine, ck, st, opt, tok_files, start, lora, &moment);
      });
}

}  // namespace

void save_checkpoint_ranks(const Parallel& par, const TrainConfig& cfg, Engine& engine,
                           io::Checkpoint& ck, const TrainState& st, AdamW& opt,
                           const std::vector<fs::path>& tok_files, RunStart& start,
                           model::LoraSetup* lora, const ExpertGroups* eg, const TensorGroups* tg,
                           io::SaveStats* stats) {
  if (lora) return save_lora_ranks(par, cfg, engine, ck, st, opt, tok_files, start, lora, eg, tg);
  StateReader reader(par, engine, ck.params, ck.config, opt, eg, tg, stats);
  if (!reader.collective()) {  // rank 0 holds every tensor whole
    if (par.root()) {
      reader.sync_step();
      const StateGet get = [&](StatePart part, const std::string& name, float* out) {
        reader.read(part, name, out);
      };
      finish_save(
          cfg, start,
          write_model_checkpoint(cfg, ck, st, opt, tok_files, start, reader.shapes(), get, stats));
    }
    return;
  }
  // Rank 0 writes; before each tensor it broadcasts a request (3 x the tensor's index in name
  // order + the part; -1: done, also when rank 0's save fails) and every rank takes part in the
  // read, so the writers' order decides and no rank holds more than one tensor.
  std::vector<std::string> names;
  std::map<std::string, int64_t> index;
  for (const auto& [name, shape] : reader.shapes()) {
    index[name] = int64_t(names.size());
    names.push_back(name);
  }
  if (par.root()) reader.sync_step();
  std::string dir;
  collective_save(
      par, int64_t(names.size()), 3,
      [&](int64_t item, int64_t part) {
        reader.read(StatePart(part), names[size_t(item)], nullptr);
      },
      [&](const SaveRequest& request) {
        const StateGet get = [&](StatePart part, const std::string& name, float* out) {
          request(index.at(name), int64_t(part));
          reader.read(part, name, out);
        };
        dir =
            write_model_checkpoint(cfg, ck, st, opt, tok_files, start, reader.shapes(), get, stats);
      });
  if (!par.root()) return;
  finish_save(cfg, start, dir);
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
