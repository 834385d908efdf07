// A training run's set-up (run_setup.h).
#include "train/run_setup.h"

#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "model/init.h"
#include "ops/device.h"
#include "train/finite_check.h"
#include "train/memory_plan.h"
#include "train/presets.h"
#include "train/run_identity.h"
#include "train/train_checkpoint.h"

namespace deltatron::train {

io::Checkpoint load_or_init_model(const TrainConfig& cfg, const std::string& resume_dir) {
  io::LoadOptions lo;
  lo.ignore_mtp = cfg.ignore_mtp;
  if (!resume_dir.empty()) return io::load_checkpoint(resume_dir, lo);
  if (!cfg.model_path.empty()) return io::load_checkpoint(cfg.model_path, lo);
  io::Checkpoint ck;
  const nlohmann::json j = preset_config(cfg.model_preset);
  ck.config = model::parse_config(j, "preset " + cfg.model_preset);
  ck.config.raw = j;
  ck.config.mtp_enabled = ck.config.mtp_num_hidden_layers > 0 && !cfg.ignore_mtp;
  ck.params = model::init_params(ck.config, cfg.init_seed);
  for (const auto& [name, t] : ck.params) ck.param_dtypes[name] = "F32";
  return ck;
}

void check_run_memory(const TrainConfig& cfg, const std::string& resume_dir) {
  const std::string dir = !resume_dir.empty() ? resume_dir : cfg.model_path;
  model::Config c;
  if (!dir.empty()) {
    c = model::load_config(dir + "/config.json");
  } else {
    c = model::parse_config(preset_config(cfg.model_preset), "preset " + cfg.model_preset);
  }
  c.mtp_enabled = c.mtp_num_hidden_layers > 0 && !cfg.ignore_mtp;
  PlanInput in;
  const bool cuda = cfg.device == "cuda";
  in.device = cuda ? core::Device::cuda : core::Device::cpu;
  if (cuda) ops::check_device(in.device);
  in.compute = cuda && cfg.precision == "bf16" ? core::DType::bf16 : core::DType::f32;
  in.state = state_options(cfg);
  in.micro_batch_tokens = cfg.micro_batch_tokens;
  in.recompute = cfg.recompute;
  in.resuming = !resume_dir.empty();
  check_memory_plan(c, in, available_memory(in.device), cfg.source);
}

std::string tokenizer_path(const TrainConfig& cfg) {
  if (!cfg.tokenizer.empty()) return cfg.tokenizer;
  DT_CHECK(!cfg.model_path.empty(), cfg.source,
           ": data.tokenizer is required when the model comes from a preset");
  return cfg.model_path + "/tokenizer.json";
}

AdamWOptions adamw_options(const TrainConfig& cfg) {
  AdamWOptions ao;
  ao.beta1 = cfg.beta1;
  ao.beta2 = cfg.beta2;
  ao.eps = cfg.eps;
  ao.weight_decay = cfg.weight_decay;
  ao.bf16_moments = cfg.moments == "bf16";
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
                       io::Checkpoint& ck, AdamW& opt) {
  const std::string& resume_dir = start.resume_dir;
  TrainState st;
  st.rng_seed = cfg.seed;
  st.rng.seed(cfg.seed);
  if (!resume_dir.empty()) {
    load_train_state(resume_dir + "/training_state", st, opt);
    restore_master_weights(resume_dir, ck);
    check_resumed_step(start, st.step);
    check_run_identity(st.extra.contains("run") ? st.extra["run"] : nlohmann::json(),
                       run_identity(cfg, d),
                       resume_dir + "/training_state/" + kTrainerStateFileName);
    std::fprintf(stderr, "train: resumed from %s at step %lld\n", resume_dir.c_str(),
                 static_cast<long long>(st.step));
  }
  st.extra["run"] = run_identity(cfg, d);
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
