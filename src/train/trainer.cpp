// The training run, top to bottom: set up (output dir, model, tokenizer, data, optimizer,
// resume), then per step: train_step -> log -> evaluate / checkpoint when due; SIGINT and
// SIGTERM finish the step, save and stop; the last step is evaluated and saved.
#include "train/trainer.h"

#include <atomic>
#include <csignal>
#include <filesystem>
#include <optional>
#include <vector>

#include "data/tokenizer.h"
#include "io/checkpoint.h"
#include "train/checkpoint_dir.h"
#include "train/engine.h"
#include "train/evaluate.h"
#include "train/run_dir.h"
#include "train/run_log.h"
#include "train/run_setup.h"
#include "train/train_checkpoint.h"
#include "train/train_data.h"
#include "train/train_step.h"

namespace deltatron::train {

namespace {

std::atomic<int> g_stop_signal{0};
void on_signal(int sig) { g_stop_signal = sig; }

// Every `every` steps (every <= 0: never).
bool due(int64_t every, int64_t step) { return every > 0 && step % every == 0; }

}  // namespace

TrainResult run_train(const TrainConfig& cfg, bool resume, bool overwrite) {
  // 1. Output directory first: an unwritable or busy one fails before any work; leftovers of
  // interrupted saves are removed only under the lock (no live run is writing them).
  check_output_dir_writable(cfg.out_dir);
  const OutDirLock lock(cfg.out_dir);
  remove_stale_checkpoint_temps(cfg.out_dir);
  RunStart start = plan_run_start(cfg, resume, overwrite);

  // 2. The memory plan (nothing allocated yet); model, tokenizer, data; optimizer, schedule and
  // state (the checkpoint's on a resume).
  check_run_memory(cfg, start.resume_dir);
  io::Checkpoint ck = load_or_init_model(cfg, start.resume_dir);
  const std::string tok_json = tokenizer_path(cfg);
  const data::Tokenizer tok = data::Tokenizer::load(tok_json);
  const std::vector<std::filesystem::path> tok_files = tokenizer_files(tok_json);
  const TrainData d = load_train_data(cfg, tok, ck.config.vocab_size);
  // A LoRA run trains its adapters (model/adapters.h); the base is frozen.
  std::optional<model::LoraSetup> lora;
  if (cfg.lora) lora = lora_setup(cfg, ck.config, start.resume_dir);
  AdamW opt(lora ? lora->adapters : ck.params, adamw_options(cfg));
  const ScheduleOptions schedule = schedule_options(cfg);
  TrainState st = start_state(cfg, start, d, ck, opt);
  if (st.step >= cfg.steps) return finished_run(cfg, start, st);  // nothing to train

  // 3. The engine, the micro-batch stream, the log.
  const auto engine = make_engine(cfg.device, cfg.precision, ck.config, ck.params, &opt,
                                  cfg.recompute, state_options(cfg), lora ? &*lora : nullptr);
  opt.release_host_moments();  // the engine holds them now (a resume's copy is freed here)
  data::EpochIterator batches = training_batches(cfg, d, st);
  print_run_start(cfg, ck.params, batches);
  if (lora) {
    print_lora_start(*lora, ck.config);
    ck.params.clear();  // the frozen base lives on the device alone
  }
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  RunLog log(cfg, ck.config, !start.resume_dir.empty(), st.step);
  const StepContext step_context{cfg, ck.config, d, schedule, batches, *engine, opt};
  int64_t bad_steps = 0;
  TrainResult result;
  const auto evaluate_and_log = [&] {
    const EvalResult e = evaluate(cfg, *engine, d);
    if (e.samples == 0) return;  // no held-out set
    log.eval(st.step, e);
    result.final_eval_loss = e.loss;
    result.final_eval_accuracy = e.accuracy;
  };
  const auto save = [&] {
    save_checkpoint(cfg, *engine, ck, st, opt, tok_files, start, lora ? &*lora : nullptr);
  };

  // 4. The loop.
  while (st.step < cfg.steps) {
    const StepResult r = train_step(step_context, st, bad_steps);
    result.final_loss = r.loss;
    log.step(r);
    if (st.step == cfg.steps) break;  // the last step: evaluated and saved below
    const bool stop = g_stop_signal != 0;
    if (due(cfg.eval_every, st.step)) evaluate_and_log();
    if (due(cfg.save_every, st.step) || stop) save();
    if (stop) {
      log.stopped(g_stop_signal, st.step);
      result.interrupted = true;
      break;
    }
  }

  // 5. The end of the run: evaluated and saved (unless stopped by a signal: saved above).
  if (!result.interrupted) {
    evaluate_and_log();
    save();
  }
  log.finish();
  result.steps_done = st.step;
  return result;
}

}  // namespace deltatron::train
