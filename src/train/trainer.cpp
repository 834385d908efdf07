// The training run, top to bottom: set up (output dir, model, tokenizer, data, optimizer,
// resume), then per step: train_step -> log -> evaluate / checkpoint when due; SIGINT and
// SIGTERM finish the step, save and stop; the last step is evaluated and saved.
#include "train/trainer.h"

#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <utility>
#include <vector>

#include "core/error.h"
#include "data/tokenizer.h"
#include "io/checkpoint.h"
#include "train/checkpoint_dir.h"
#include "train/engine.h"
#include "train/evaluate.h"
#include "train/expert_parallel.h"
#include "train/local_slices.h"
#include "train/memory_plan.h"
#include "train/objective.h"
#include "train/parallel.h"
#include "train/run_dir.h"
#include "train/run_log.h"
#include "train/run_setup.h"
#include "train/state_stream.h"
#include "train/tensor_parallel.h"
#include "train/train_checkpoint.h"
#include "train/train_data.h"
#include "train/train_step.h"

namespace deltatron::train {

namespace {

std::atomic<int> g_stop_signal{0};
void on_signal(int sig) { g_stop_signal = sig; }

// [parallel] against the job's ranks.
void check_data_parallel(const TrainConfig& cfg, const Parallel& par) {
  DT_CHECK(cfg.parallel_dp == 0 || cfg.parallel_dp == par.size(), cfg.source,
           ": parallel.dp = ", cfg.parallel_dp, " but the job has ", par.size(),
           " data-parallel rank(s) (the job's ranks / parallel.tp)");
}

// Every `every` steps (every <= 0: never).
bool due(int64_t every, int64_t step) { return every > 0 && step % every == 0; }

}  // namespace

TrainResult run_train(const TrainConfig& cfg, bool resume, bool overwrite) {
  // 0. The ranks of a data-parallel job (a launcher's environment; else one rank). Rank 0 owns
  // the output directory: it locks it, logs and saves; the others read it once rank 0 has
  // cleaned it, and every rank computes the same steps from the same checkpoint.
  const Parallel par = setup_parallel(cfg.device == "cuda" ? core::Device::cuda : core::Device::cpu,
                                      "deltatron train");

  // 1. Output directory first: an unwritable or busy one fails before any work; leftovers of
  // interrupted saves are removed only under the lock (no live run is writing them).
  std::optional<OutDirLock> lock;
  if (par.root()) {
    check_output_dir_writable(cfg.out_dir);
    lock.emplace(cfg.out_dir);
    remove_stale_checkpoint_temps(cfg.out_dir);
  }
  par.comm->barrier();
  RunStart start = plan_run_start(cfg, resume, overwrite);
  DT_CHECK(!cfg.lora || cfg.vision == "off" || cfg.vision == "frozen", cfg.source,
           ": model.vision = \"", cfg.vision,
           "\" with LoRA is not supported: the vision tower is part of the frozen base (use "
           "model.vision = \"frozen\")");

  // 2. The memory plan (nothing allocated yet); model, tokenizer, data; optimizer, schedule and
  // state (the checkpoint's on a resume).
  // One rank's share of the state under the run's layout ([parallel]).
  const PlanLayout layout =
      run_layout(cfg, par.size(), par.size() > 1 ? dist::world_from_env().local_size : 1);
  const MemoryPlan plan = check_run_memory(cfg, start.resume_dir, 0, layout);
  if (par.root())
    std::fprintf(stderr, "train: memory plan: %s\ntrain: %s\n", describe(plan).c_str(),
                 plan.activation_detail.c_str());
  // The layouts' groups from the config alone, so that each rank reads only its slices of the
  // weights (and of a resume's masters and moments): expert parallelism ([parallel] ep) its
  // experts, tensor parallelism ([parallel] tp, sp: groups of tp ranks run the same
  // micro-batches, the groups are data parallel) its shards. A resume's checkpoint holds every
  // slice, so the number of ranks may change.
  const model::Config c0 = run_model_config(cfg, start.resume_dir);
  const TensorGroups tg =
      setup_tensor_groups(par, cfg.parallel_tp, cfg.parallel_sp, c0, cfg.source + ": parallel.tp");
  const Parallel& dp = tg.data(par);
  // The expert-parallel groups among the data-parallel ranks (with tp: those of one tp slice).
  const ExpertGroups eg =
      setup_expert_groups(dp, cfg.parallel_ep, c0, cfg.source + ": parallel.ep");
  // ZeRO 3: each rank reads only its pieces of its local tensors (zero3_slices; the engine is
  // then made from them, and the optimizer decides weight decay by the local shapes). A LoRA
  // run's frozen base likewise (its routers whole in a bf16 model: Zero3Store keeps them so).
  const io::SliceFn local = local_slices(eg, tg);
  const bool pieces = cfg.parallel_zero == 3;
  const io::SliceFn slices =
      read_slices(c0, local, pieces, dp, eg,
                  Zero3Read{cfg.lora, cfg.device == "cuda" && cfg.precision == "bf16"});
  io::LoadStats load_stats;
  io::Checkpoint ck = load_or_init_model(cfg, start.resume_dir, slices, &load_stats);
  if (par.size() > 1) print_load_stats("train", par, load_stats, ck.config);
  check_data_parallel(cfg, dp);
  const std::string tok_json = tokenizer_path(cfg);
  const data::Tokenizer tok = data::Tokenizer::load(tok_json);
  const std::vector<std::filesystem::path> tok_files = tokenizer_files(tok_json);
  const TrainData d = load_train_data(cfg, tok, ck.config.vocab_size, cfg.vision != "off");
  // Images: the plan again, with the vision tower's activations for the data's densest sample.
  if (d.images > 0) check_run_memory(cfg, start.resume_dir, d.image_patches_per_token, layout);
  // A LoRA run trains its adapters (model/adapters.h); the base is frozen.
  std::optional<model::LoraSetup> lora;
  if (cfg.lora) lora = lora_setup(cfg, ck.config, start.resume_dir);
  const std::vector<model::ParamSpec> specs =
      pieces && !lora ? local_specs(ck.config, local) : std::vector<model::ParamSpec>{};
  AdamW opt(lora ? lora->adapters : ck.params, adamw_options(cfg, specs));
  const ScheduleOptions schedule = schedule_options(cfg);
  TrainState st = start_state(cfg, start, d, ck, opt, dp.size(), slices);
  if (lora) {  // the routed-expert adapters live with their experts (lora.experts); tp slices,
    // and their moments (a LoRA resume reads the adapters' moments whole: start_state)
    keep_local_experts(*lora, eg);
    keep_local_experts(opt, lora->adapters, eg);
    keep_local_shards(*lora, tg, ck.config);
    keep_local_shards(opt, lora->adapters, tg, ck.config);
  }
  if (st.step >= cfg.steps) {  // nothing to train
    TrainResult done = finished_run(cfg, start, st);
    done.root = par.root();
    return done;
  }

  // 3. The engine, the micro-batch stream, the log.
  const ZeroSetup zero{int(cfg.parallel_zero), dp.comm.get(), eg.same_experts.get()};
  const auto engine =
      pieces ? make_engine(cfg.device, cfg.precision, ck.config,
                           piece_source(ck.config, local, ck.params), &opt, cfg.recompute,
                           state_options(cfg), lora ? &*lora : nullptr, zero)
             : make_engine(cfg.device, cfg.precision, ck.config, ck.params, &opt, cfg.recompute,
                           state_options(cfg), lora ? &*lora : nullptr, zero);
  engine->set_recompute_selective(cfg.recompute_selective);
  if (eg.on()) engine->set_expert_parallel(eg.model);
  if (tg.on()) engine->set_tensor_parallel(tg.model);
  opt.release_host_moments();  // the engine holds them now (a resume's copy is freed here)
  data::EpochIterator batches = training_batches(cfg, d, st);
  if (par.root()) print_run_start(cfg, ck.params, batches);
  if (lora) {
    if (par.root()) print_lora_start(*lora, ck.config);
    ck.params.clear();  // the frozen base lives on the device alone
  }
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  std::optional<RunLog> log;  // rank 0's
  if (par.root()) log.emplace(cfg, ck.config, !start.resume_dir.empty(), st.step);
  const StepContext step_context{
      cfg, ck.config, d, schedule, batches, *engine, opt, dp, eg.same_experts.get()};
  int64_t bad_steps = 0;
  TrainResult result;
  const auto evaluate_and_log = [&] {
    const EvalResult e = evaluate(cfg, *engine, d);
    if (e.samples == 0) return;  // no held-out set
    if (log) log->eval(st.step, e);
    result.final_eval_loss = e.loss;
    result.final_eval_accuracy = e.accuracy;
  };
  const auto save = [&] {  // rank 0 writes, the state streamed to it one tensor at a time
    io::SaveStats save_stats;
    save_checkpoint_ranks(par, cfg, *engine, ck, st, opt, tok_files, start, lora ? &*lora : nullptr,
                          &eg, &tg, &save_stats);
    if (par.size() > 1 && !lora) print_save_stats("train", par, st.step, save_stats, ck.config);
    par.comm->barrier();
  };

  // 4. The loop.
  while (st.step < cfg.steps) {
    const StepResult r = train_step(step_context, st, bad_steps);
    result.final_loss = r.loss;
    result.step_host_reads.push_back(r.host_reads);
    if (log) log->step(r);
    if (st.step == cfg.steps) break;  // the last step: evaluated and saved below
    // A signal on any rank stops every rank after the same step.
    const int64_t signal = all_reduce_max(par, int64_t(g_stop_signal.load()));
    const bool stop = signal != 0;
    if (due(cfg.eval_every, st.step)) evaluate_and_log();
    if (due(cfg.save_every, st.step) || stop) save();
    if (stop) {
      if (log) log->stopped(int(signal), st.step);
      result.interrupted = true;
      break;
    }
  }

  // 5. The end of the run: evaluated and saved (unless stopped by a signal: saved above).
  if (!result.interrupted) {
    evaluate_and_log();
    save();
  }
  if (log) log->finish();
  result.steps_done = st.step;
  result.root = par.root();
  return result;
}

}  // namespace deltatron::train
