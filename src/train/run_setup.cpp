// A training run's set-up (run_setup.h).
#include "train/run_setup.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "core/error.h"
#include "io/peft_adapter.h"
#include "model/expert_parallel.h"
#include "model/init.h"
#include "model/tensor_parallel.h"
#include "ops/device.h"
#include "train/finite_check.h"
#include "train/local_slices.h"
#include "train/memory_plan.h"
#include "train/presets.h"
#include "train/run_identity.h"
#include "train/train_checkpoint.h"

namespace deltatron::train {

io::Checkpoint load_or_init_model(const TrainConfig& cfg, const std::string& resume_dir,
                                  const io::SliceFn& slice, io::LoadStats* stats) {
  io::LoadOptions lo;
  lo.ignore_mtp = cfg.ignore_mtp;
  lo.slice = slice;
  lo.stats = stats;
  lo.vision = model::parse_vision_mode(cfg.vision, cfg.source + ": model.vision");
  if (!resume_dir.empty() && !cfg.lora) return io::load_checkpoint(resume_dir, lo);
  if (!cfg.model_path.empty()) return io::load_checkpoint(cfg.model_path, lo);
  io::Checkpoint ck;
  const nlohmann::json j = preset_config(cfg.model_preset);
  ck.config = model::parse_config(j, "preset " + cfg.model_preset);
  ck.config.raw = j;
  ck.config.mtp_enabled = ck.config.mtp_num_hidden_layers > 0 && !cfg.ignore_mtp;
  ck.config.vision_mode = lo.vision;  // a preset with a vision_config: model.visual.* too
  if (lo.vision != model::VisionMode::off)
    model::check_vision(ck.config, "preset " + cfg.model_preset);
  ck.preprocessor = preset_preprocessor_config(cfg.model_preset);
  ck.params = model::init_params(ck.config, cfg.init_seed);
  if (ck.config.has_vision && lo.vision == model::VisionMode::off) {
    // The tower is not trained, but the checkpoint keeps it (pass-through bytes, as a loaded
    // checkpoint's): initialised as with the tower on, so the saved directory is a whole VL model.
    model::Config with_tower = ck.config;
    with_tower.vision_mode = model::VisionMode::frozen;
    for (auto& [name, t] : model::init_params(with_tower, cfg.init_seed)) {
      if (ck.params.count(name)) continue;
      const auto* b = reinterpret_cast<const uint8_t*>(t.data.data());
      ck.passthrough.emplace(name,
                             io::RawTensor{"F32", t.shape, {b, b + t.data.size() * sizeof(float)}});
    }
  }
  for (const auto& [name, t] : ck.params) ck.param_dtypes[name] = "F32";
  keep_slices(ck.params, slice, ck.config);
  if (stats)
    for (const auto& [name, t] : ck.params) stats->kept_bytes += t.numel() * 4;
  return ck;
}

model::Config run_model_config(const TrainConfig& cfg, const std::string& resume_dir) {
  const std::string dir = !resume_dir.empty() && !cfg.lora ? resume_dir : cfg.model_path;
  model::Config c = !dir.empty() ? model::load_config(dir + "/config.json")
                                 : model::parse_config(preset_config(cfg.model_preset),
                                                       "preset " + cfg.model_preset);
  c.mtp_enabled = c.mtp_num_hidden_layers > 0 && !cfg.ignore_mtp;
  c.vision_mode = model::parse_vision_mode(cfg.vision, cfg.source + ": model.vision");
  return c;
}

model::LoraOptions lora_options(const TrainConfig& cfg) {
  model::LoraOptions o;
  o.r = cfg.lora_r;
  o.alpha = cfg.lora_alpha;
  o.dropout = cfg.lora_dropout;
  o.targets = cfg.lora_targets;
  o.experts = cfg.lora_experts;
  o.rslora = cfg.lora_rslora;
  if (cfg.lora_adapter.empty()) return o;
  const io::PeftAdapter ad = io::load_peft_config(cfg.lora_adapter);
  const model::LoraOptions& a = ad.options;
  const bool experts = !ad.target_parameters.empty();
  const auto set = [&](const char* key) {
    return std::find(cfg.lora_keys_set.begin(), cfg.lora_keys_set.end(), key) !=
           cfg.lora_keys_set.end();
  };
  const auto agree = [&](const char* key, bool same, const std::string& ours,
                         const std::string& theirs) {
    DT_CHECK(!set(key) || same, cfg.source, ": ", key, " = ", ours, " disagrees with the adapter ",
             cfg.lora_adapter, " (", theirs, "); leave it out to train the adapter as it is");
  };
  agree("lora.r", o.r == a.r, std::to_string(o.r), "r = " + std::to_string(a.r));
  agree("lora.alpha", o.alpha == a.alpha, std::to_string(o.alpha),
        "lora_alpha = " + std::to_string(a.alpha));
  agree("lora.rslora", o.rslora == a.rslora, o.rslora ? "true" : "false",
        std::string("use_rslora = ") + (a.rslora ? "true" : "false"));
  agree("lora.targets", !set("lora.targets"), "(given)", "its own modules");
  agree("lora.experts", o.experts == experts, o.experts ? "true" : "false",
        experts ? "routed-expert adapters" : "no routed-expert adapters");
  o.experts = experts;
  o.r = a.r;
  o.alpha = a.alpha;
  o.rslora = a.rslora;
  if (!set("lora.dropout")) o.dropout = a.dropout;
  o.targets.clear();  // the adapter's modules (lora_setup)
  return o;
}

model::LoraSetup lora_setup(const TrainConfig& cfg, const model::Config& c,
                            const std::string& resume_dir) {
  const model::LoraOptions want = lora_options(cfg);  // [lora]'s, or lora.adapter's
  const std::string from = !resume_dir.empty() ? resume_dir : cfg.lora_adapter;
  if (from.empty()) {
    model::LoraSetup s;
    s.options = want;
    s.adapters =
        model::lora_init(model::lora_modules(c, s.options, cfg.source), s.options.r, cfg.seed);
    return s;
  }
  const io::PeftAdapter ad = io::load_peft_adapter(from);
  DT_CHECK(
      ad.options.r == want.r && ad.options.alpha == want.alpha && ad.options.rslora == want.rslora,
      from, ": the adapter has r = ", ad.options.r, ", lora_alpha = ", ad.options.alpha,
      ", use_rslora = ", ad.options.rslora, "; the run asks for r = ", want.r,
      ", alpha = ", want.alpha, ", rslora = ", want.rslora);
  // A resumed run adapts the modules its config names: the checkpoint must hold exactly those.
  DT_CHECK(want.experts == !ad.target_parameters.empty(), from, ": the adapter has ",
           ad.target_parameters.empty() ? "no " : "", "routed-expert adapters; the run has ",
           "lora.experts = ", want.experts ? "true" : "false");
  if (cfg.lora_adapter.empty())
    io::check_adapter_matches(ad, model::lora_modules(c, want, cfg.source), from);
  // Every module of the adapter is a linear layer of this model, with the adapter's shapes.
  return io::to_lora_setup(ad, c, want.dropout, from);
}

PlanLayout run_layout(const TrainConfig& cfg, int64_t ranks, int64_t local_ranks) {
  PlanLayout l;
  l.tp = std::max<int64_t>(1, cfg.parallel_tp);
  l.sp = cfg.parallel_sp;
  l.dp = std::max<int64_t>(1, ranks / l.tp);
  l.zero = int(cfg.parallel_zero);
  l.ep = std::max<int64_t>(1, cfg.parallel_ep);
  l.local_ranks = std::max<int64_t>(1, local_ranks);
  return l;
}

MemoryPlan check_run_memory(const TrainConfig& cfg, const std::string& resume_dir,
                            double image_patches_per_token, const PlanLayout& layout) {
  const model::Config c = run_model_config(cfg, resume_dir);
  PlanInput in;
  const bool cuda = cfg.device == "cuda";
  in.device = cuda ? core::Device::cuda : core::Device::cpu;
  if (cuda) ops::check_device(in.device);
  in.compute = cuda && cfg.precision == "bf16" ? core::DType::bf16 : core::DType::f32;
  in.state = state_options(cfg);
  in.micro_batch_tokens = cfg.micro_batch_tokens;
  in.recompute = cfg.recompute;
  in.recompute_selective = cfg.recompute_selective;
  in.resuming = !resume_dir.empty();
  in.image_patches_per_token = image_patches_per_token;
  in.layout = layout;
  if (cfg.lora) {
    // An adapter's own modules: its target_modules resolved here (an estimate for the plan; the
    // modules are checked when the adapter is loaded).
    model::LoraOptions lo = lora_options(cfg);
    const auto count = [&](const std::vector<model::LoraModule>& mods) {
      in.lora_params = model::lora_param_count(mods, lo.r);
      for (const model::LoraModule& m : mods) {
        if (m.experts) in.lora_expert_params += model::lora_param_count({m}, lo.r);
        const int64_t E = std::max<int64_t>(m.experts, 1);
        int64_t split = 0;
        if (model::is_tp_sharded(c, model::lora_a_key(m.name))) split += E * m.in * lo.r;
        if (model::is_tp_sharded(c, model::lora_b_key(m.name))) split += E * m.out * lo.r;
        in.lora_tp_split_params += split;
        if (m.experts) in.lora_expert_tp_split_params += split;
        in.lora_largest = std::max(in.lora_largest,
                                   std::max<int64_t>(m.experts, 1) * std::max(m.in, m.out) * lo.r);
      }
    };
    if (cfg.lora_adapter.empty()) {
      count(model::lora_modules(c, lo, cfg.source));
    } else {
      lo.targets = io::load_peft_config(cfg.lora_adapter).options.targets;
      try {
        count(model::lora_modules(c, lo, cfg.source));
      } catch (const core::Error&) {  // target_modules PEFT spells otherwise (a regex): count
        const io::PeftAdapter ad = io::load_peft_adapter(cfg.lora_adapter);
        in.lora_params = 0;
        for (const auto& [m, a] : ad.a) {
          const int64_t n = a.numel() + ad.b.at(m).numel();
          in.lora_params += n;
          in.lora_largest = std::max({in.lora_largest, a.numel(), ad.b.at(m).numel()});
          if (model::is_routed_expert_tensor(m)) in.lora_expert_params += n;
        }
      }
    }
  }
  check_memory_plan(c, in, available_memory(in.device), cfg.source);
  return plan_memory(c, in);
}

std::string tokenizer_path(const TrainConfig& cfg) {
  if (!cfg.tokenizer.empty()) return cfg.tokenizer;
  DT_CHECK(!cfg.model_path.empty(), cfg.source,
           ": data.tokenizer is required when the model comes from a preset");
  return cfg.model_path + "/tokenizer.json";
}

AdamWOptions adamw_options(const TrainConfig& cfg, const std::vector<model::ParamSpec>& shapes) {
  AdamWOptions ao;
  ao.beta1 = cfg.beta1;
  ao.beta2 = cfg.beta2;
  ao.eps = cfg.eps;
  ao.weight_decay = cfg.weight_decay;
  ao.bf16_moments = cfg.moments == "bf16";
  if (!shapes.empty()) {  // the host tensors are ZeRO 3 pieces: decide by the tensors' shapes
    std::map<std::string, core::Shape> by_name;
    for (const model::ParamSpec& s : shapes) by_name[s.name] = s.shape;
    ao.decay_predicate = [by_name, e = ao.decay_embeddings](const std::string& name,
                                                            const core::Shape& shape) {
      const auto it = by_name.find(name);
      return default_weight_decay(name, it != by_name.end() ? it->second : shape, e);
    };
  }
  return ao;
}

model::StateOptions state_options(const TrainConfig& cfg) {
  return model::parse_state_options(cfg.master, cfg.moments, cfg.offload, cfg.source);
}

ScheduleOptions schedule_options(const TrainConfig& cfg) {
  ScheduleOptions so;
  so.lr = cfg.lr;
  so.min_lr = cfg.min_lr;
  so.warmup_steps = cfg.warmup_steps;
  so.total_steps = cfg.steps;
  so.decay = parse_lr_decay(cfg.schedule);
  validate_schedule(so);
  return so;
}

TrainState start_state(const TrainConfig& cfg, const RunStart& start, const TrainData& d,
                       io::Checkpoint& ck, AdamW& opt, int ranks, const io::SliceFn& slice) {
  const std::string& resume_dir = start.resume_dir;
  TrainState st;
  st.rng_seed = cfg.seed;
  st.rng.seed(cfg.seed);
  if (!resume_dir.empty()) {
    const LocalSlice local = cfg.lora ? LocalSlice() : local_slice(slice, ck.config);
    load_train_state(resume_dir + "/training_state", st, opt, local);
    if (!cfg.lora) restore_master_weights(resume_dir, ck, local);
    check_resumed_step(start, st.step);
    check_run_identity(st.extra.contains("run") ? st.extra["run"] : nlohmann::json(),
                       run_identity(cfg, d, ranks),
                       resume_dir + "/training_state/" + kTrainerStateFileName);
    std::fprintf(stderr, "train: resumed from %s at step %lld\n", resume_dir.c_str(),
                 static_cast<long long>(st.step));
  }
  st.extra["run"] = run_identity(cfg, d, ranks);
  if (const auto nf = find_non_finite(ck.params))
    core::fail(resume_dir.empty()
                   ? (cfg.model_path.empty() ? "preset " + cfg.model_preset : cfg.model_path)
                   : resume_dir,
               ": the starting weights hold non-finite values (", describe(*nf),
               "); training cannot recover from them");
  return st;
}

TrainResult finished_run(const TrainConfig& cfg, const RunStart& start, const TrainState& st) {
  TrainResult result;
  result.steps_done = st.step;
  result.nothing_to_do = true;
  const nlohmann::json last = st.extra.value("last_loss", nlohmann::json());
  result.final_loss = last.is_number() ? last.get<double>() : std::nan("");
  std::fprintf(stderr,
               "train: %s is at step %lld, training.steps = %lld: nothing to do "
               "(raise training.steps to train further)\n",
               start.resume_dir.c_str(), static_cast<long long>(st.step),
               static_cast<long long>(cfg.steps));
  return result;
}

data::EpochIterator training_batches(const TrainConfig& cfg, const TrainData& d,
                                     const TrainState& st) {
  data::PackingOptions po;
  po.budget = cfg.micro_batch_tokens;
  po.divisible_by = cfg.divisible_by;
  po.seed = cfg.seed;
  po.window = cfg.shuffle_window;
  po.truncate = cfg.truncate;
  return data::EpochIterator(
      d.train_lengths, po,
      [set = d.train_set.get(), &index = d.train_index](int64_t i) { return set->where(index[i]); },
      st.epoch, st.data_cursor);
}

}  // namespace deltatron::train
