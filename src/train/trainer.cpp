// The training loop. Reads top to bottom: set up (output dir, model, tokenizer, data,
// optimizer, resume), then per step: micro-batches -> forward/backward -> clip -> AdamW ->
// log / eval / checkpoint; SIGINT and SIGTERM finish the step, save and stop.
#include "train/trainer.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "data/pack.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/init.h"
#include "model/model.h"
#include "train/checkpoint_dir.h"
#include "train/engine.h"
#include "train/finite_check.h"
#include "train/objective.h"
#include "train/optimizer.h"
#include "train/presets.h"
#include "train/run_dir.h"
#include "train/run_identity.h"
#include "train/schedule.h"
#include "train/tensorboard_log.h"
#include "train/train_data.h"
#include "train/train_state.h"

namespace deltatron::train {

namespace {

namespace fs = std::filesystem;

std::atomic<int> g_stop_signal{0};
void on_signal(int sig) { g_stop_signal = sig; }

// ---- model ---------------------------------------------------------------------------------

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

std::string tokenizer_path(const TrainConfig& cfg) {
  if (!cfg.tokenizer.empty()) return cfg.tokenizer;
  DT_CHECK(!cfg.model_path.empty(), cfg.source,
           ": data.tokenizer is required when the model comes from a preset");
  return cfg.model_path + "/tokenizer.json";
}

// Tokenizer files that travel with every saved checkpoint (whichever exist beside the
// tokenizer.json in use).
std::vector<fs::path> tokenizer_files(const std::string& tok_json) {
  std::vector<fs::path> out;
  const fs::path dir = fs::path(tok_json).parent_path();
  out.push_back(tok_json);
  for (const char* f : {"tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                        "vocab.json", "merges.txt", "generation_config.json"})
    if (fs::exists(dir / f)) out.push_back(dir / f);
  return out;
}

// ---- evaluation --------------------------------------------------------------------------

struct EvalResult {
  double loss = 0, accuracy = 0;
  int64_t samples = 0;
};

EvalResult evaluate(const TrainConfig& cfg, Engine& engine, const TrainData& d) {
  EvalResult r;
  if (d.eval_index.empty()) return r;
  const data::Dataset& ds = d.eval_set ? *d.eval_set : *d.train_set;
  double loss = 0;
  int64_t tokens = 0, exact = 0;
  model::ModelOptions o;
  o.want_correct = cfg.answer_accuracy;
  for (const auto& batch : eval_batches(d, cfg.micro_batch_tokens, cfg.divisible_by)) {
    const data::Pack pack =
        data::make_dataset_pack(ds, batch, cfg.divisible_by, cfg.micro_batch_tokens);
    const model::PackLoss l = engine.fwd_bwd(pack, false, o);
    for (int s = 0; s < pack.num_samples(); ++s) {
      loss += l.loss_sum[s];
      tokens += l.n_tokens[s];
      if (cfg.answer_accuracy) exact += l.exact[s] && l.n_tokens[s] > 0;
    }
    r.samples += pack.num_samples();
  }
  r.loss = loss / double(std::max<int64_t>(1, tokens));
  r.accuracy = double(exact) / double(std::max<int64_t>(1, r.samples));
  return r;
}

// ---- checkpoints -------------------------------------------------------------------------

// Never writes non-finite weights; after the first save of a fresh --overwrite run, the earlier
// run's checkpoints go (run_dir.h), then pruning.
void save(const TrainConfig& cfg, io::Checkpoint& ck, const TrainState& st, const AdamW& opt,
          const std::vector<fs::path>& tok_files, RunStart& start) {
  if (const auto nf = find_non_finite(ck.params))
    core::fail("step ", st.step, ": the weights hold non-finite values (", describe(*nf),
               "); no checkpoint written",
               start.earlier.empty() ? "" : "; the earlier run's checkpoints are kept");
  if (!cfg.save_dtype.empty())
    for (auto& [name, dt] : ck.param_dtypes) dt = cfg.save_dtype;
  const std::string dir =
      save_training_checkpoint(cfg.out_dir, st.step, [&](const std::string& tmp) {
        io::write_checkpoint_files(tmp, ck);  // straight into tmp: no staging the cleanup misses
        for (const auto& f : tok_files)
          fs::copy_file(f, fs::path(tmp) / f.filename(), fs::copy_options::overwrite_existing);
        const std::string state_dir = tmp + "/training_state";
        fs::create_directories(state_dir);
        save_train_state(state_dir, st, opt);
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

void restore_master_weights(const std::string& ckpt_dir, io::Checkpoint& ck) {
  const io::SafetensorsFile f(ckpt_dir + "/training_state/master_weights.safetensors");
  for (auto& [name, t] : ck.params) {
    DT_CHECK(f.contains(name), f.path(), ": missing master weight ", name);
    core::Tensor m = f.to_float(name);
    DT_CHECK(m.shape == t.shape, f.path(), ": master weight ", name, " has shape ",
             core::shape_str(m.shape), ", expected ", core::shape_str(t.shape));
    t = std::move(m);
  }
}

// ---- progress ----------------------------------------------------------------------------

std::string fmt_duration(double s) {
  char buf[32];
  const int64_t t = int64_t(s);
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", long(t / 3600), long(t % 3600 / 60));
  else
    std::snprintf(buf, sizeof buf, "%ldm%02lds", long(t / 60), long(t % 60));
  return buf;
}

}  // namespace

TrainResult run_train(const TrainConfig& cfg, bool resume, bool overwrite) {
  // 1. Output directory first: an unwritable or busy one fails before any work; leftovers of
  // interrupted saves are removed only under the lock (no live run is writing them).
  check_output_dir_writable(cfg.out_dir);
  const OutDirLock lock(cfg.out_dir);
  remove_stale_checkpoint_temps(cfg.out_dir);
  RunStart start = plan_run_start(cfg, resume, overwrite);
  const std::string resume_dir = start.resume_dir;

  // 2. Model, tokenizer, data.
  io::Checkpoint ck = load_or_init_model(cfg, resume_dir);
  const model::Config& c = ck.config;
  const std::string tok_json = tokenizer_path(cfg);
  const data::Tokenizer tok = data::Tokenizer::load(tok_json);
  const std::vector<fs::path> tok_files = tokenizer_files(tok_json);
  const TrainData d = load_train_data(cfg, tok, c.vocab_size);

  // 3. Optimizer, schedule, state.
  AdamWOptions ao;
  ao.beta1 = cfg.beta1;
  ao.beta2 = cfg.beta2;
  ao.eps = cfg.eps;
  ao.weight_decay = cfg.weight_decay;
  AdamW opt(ck.params, ao);
  ScheduleOptions so;
  so.lr = cfg.lr;
  so.min_lr = cfg.min_lr;
  so.warmup_steps = cfg.warmup_steps;
  so.total_steps = cfg.steps;
  so.decay = parse_lr_decay(cfg.schedule);
  validate_schedule(so);
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
  TrainResult result;
  if (st.step >= cfg.steps) {  // a finished run resumed: nothing to train
    result.steps_done = st.step;
    result.nothing_to_do = true;
    const nlohmann::json last = st.extra.value("last_loss", nlohmann::json());
    result.final_loss = last.is_number() ? last.get<double>() : std::nan("");
    std::fprintf(stderr,
                 "train: %s is at step %lld, training.steps = %lld: nothing to do "
                 "(raise training.steps to train further)\n",
                 resume_dir.c_str(), static_cast<long long>(st.step),
                 static_cast<long long>(cfg.steps));
    return result;
  }
  const auto engine = make_engine(cfg.device, cfg.precision, c, ck.params, &opt, cfg.recompute);
  data::PackingOptions po;
  po.budget = cfg.micro_batch_tokens;
  po.divisible_by = cfg.divisible_by;
  po.seed = cfg.seed;
  po.window = cfg.shuffle_window;
  po.truncate = cfg.truncate;
  data::EpochIterator batches(
      d.train_lengths, po, [&](int64_t i) { return d.train_set->where(d.train_index[i]); },
      st.epoch, st.data_cursor);
  std::fprintf(
      stderr, "train: %lld parameters, packing efficiency %.1f%% (%lld-token micro-batches)\n",
      [&] {
        long long n = 0;
        for (auto& [k, t] : ck.params) n += t.numel();
        return n;
      }(),
      100.0 * batches.efficiency(), static_cast<long long>(cfg.micro_batch_tokens));

  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  // A fresh run starts a fresh metrics file; a resumed one appends (steps after the checkpoint
  // it resumed from appear again).
  std::ofstream metrics(cfg.out_dir + "/metrics.jsonl",
                        resume_dir.empty() ? std::ios::trunc : std::ios::app);
  TensorBoardLog tensorboard(cfg.out_dir, cfg.tensorboard, st.step + 1);
  const bool tty = ::isatty(STDERR_FILENO);
  int64_t bad_steps = 0;
  const auto t_start = std::chrono::steady_clock::now();
  const int64_t first_step = st.step;
  int64_t tokens_seen = 0;

  // 4. The loop.
  while (st.step < cfg.steps) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<data::Pack> packs;
    for (int64_t m = 0; m < cfg.grad_accum; ++m) {
      std::vector<int64_t> local = batches.next();
      for (auto& i : local) i = d.train_index[i];
      packs.push_back(data::make_dataset_pack(*d.train_set, local, cfg.divisible_by,
                                              cfg.truncate ? cfg.micro_batch_tokens : -1));
    }
    const StepCounts n = count_step(packs, c.mtp_enabled);
    model::ModelOptions mo = step_options(cfg, c, n);
    model::GlobalRouterCounts running;
    running.step_tokens = double(n.real_tokens);
    mo.running_counts = &running;

    engine->zero_grads();
    double ce = 0, mtp = 0, router = 0;
    for (const auto& pack : packs) {
      const model::PackLoss l = engine->fwd_bwd(pack, true, mo);
      for (double x : l.loss_sum) ce += x;
      for (double x : l.mtp_loss_sum) mtp += x;
      router += l.router_loss;
    }
    tokens_seen += n.real_tokens;  // real (non-padding) tokens
    const double loss = ce / double(std::max<int64_t>(1, n.label_tokens));
    const double mtp_loss = mtp / double(std::max<int64_t>(1, n.mtp_tokens));
    const double gnorm = engine->clip(cfg.grad_clip);
    const double lr = learning_rate(so, st.step);
    const bool finite = std::isfinite(loss) && std::isfinite(gnorm) && std::isfinite(router);
    if (finite) {
      engine->step(opt, lr);
    } else {
      ++bad_steps;
      std::fprintf(stderr,
                   "\ntrain: step %lld has a non-finite loss or gradient; skipped (%lld/%lld)\n",
                   static_cast<long long>(st.step), static_cast<long long>(bad_steps),
                   static_cast<long long>(cfg.max_bad_steps));
      DT_CHECK(bad_steps <= cfg.max_bad_steps, "stopping: ", bad_steps,
               " steps with non-finite loss or gradients (training.max_bad_steps = ",
               cfg.max_bad_steps, ")");
    }
    st.step += 1;
    st.epoch = batches.epoch();
    st.data_cursor = batches.cursor();
    result.final_loss = loss;
    if (std::isfinite(loss)) st.extra["last_loss"] = loss;

    // Log.
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    const double tps = double(tokens_seen) / std::max(elapsed, 1e-9);
    const double eta = elapsed / double(st.step - first_step) * double(cfg.steps - st.step);
    nlohmann::json m = {
        {"step", st.step},         {"loss", loss},        {"lr", lr},     {"grad_norm", gnorm},
        {"tokens", n.real_tokens}, {"tokens_per_s", tps}, {"step_s", dt}, {"skipped", !finite}};
    if (c.mtp_enabled) m["mtp_loss"] = mtp_loss;
    if (c.is_moe()) m["router_loss"] = router;
    metrics << m.dump() << "\n" << std::flush;
    tensorboard.log(m);
    char line[256];
    std::snprintf(line, sizeof line,
                  "step %lld/%lld | loss %.4f | lr %.2e | grad norm %.3f | %.0f tok/s | ETA %s",
                  static_cast<long long>(st.step), static_cast<long long>(cfg.steps), loss, lr,
                  gnorm, tps, fmt_duration(eta).c_str());
    if (tty)
      std::fprintf(stderr, "\r%s\033[K", line);
    else if (st.step % std::max<int64_t>(1, cfg.log_every) == 0 || st.step == cfg.steps)
      std::fprintf(stderr, "%s\n", line);

    // Evaluate, checkpoint, stop on a signal.
    const bool last = st.step == cfg.steps, stop = g_stop_signal != 0;
    if ((cfg.eval_every > 0 && st.step % cfg.eval_every == 0) || last) {
      const EvalResult e = evaluate(cfg, *engine, d);
      if (e.samples > 0) {
        std::fprintf(stderr,
                     "%seval at step %lld: loss %.4f, exact-match accuracy %.1f%% (%lld samples)\n",
                     tty ? "\n" : "", static_cast<long long>(st.step), e.loss, 100 * e.accuracy,
                     static_cast<long long>(e.samples));
        const nlohmann::json em = {
            {"step", st.step}, {"eval_loss", e.loss}, {"eval_accuracy", e.accuracy}};
        metrics << em.dump() << "\n" << std::flush;
        tensorboard.log(em);
        result.final_eval_loss = e.loss;
        result.final_eval_accuracy = e.accuracy;
      }
    }
    if ((cfg.save_every > 0 && st.step % cfg.save_every == 0) || last || stop) {
      engine->sync_to_host(ck.params, opt);
      save(cfg, ck, st, opt, tok_files, start);
    }
    if (stop && !last) {
      std::fprintf(stderr, "train: stopped by signal %d after step %lld; resume with --resume\n",
                   int(g_stop_signal), static_cast<long long>(st.step));
      result.interrupted = true;
      break;
    }
  }
  if (tty) std::fprintf(stderr, "\n");
  result.steps_done = st.step;
  return result;
}

}  // namespace deltatron::train
