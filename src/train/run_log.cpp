// The trainer's log (run_log.h): progress line, metrics.jsonl, TensorBoard.
#include "train/run_log.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>

namespace deltatron::train {

namespace {

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

void print_run_start(const TrainConfig& cfg, const model::TensorMap& params,
                     const data::EpochIterator& batches) {
  long long n = 0;
  for (const auto& [k, t] : params) n += t.numel();
  std::fprintf(stderr,
               "train: %lld parameters, packing efficiency %.1f%% (%lld-token micro-batches); "
               "state: master %s, moments %s, offload %s\n",
               n, 100.0 * batches.efficiency(), static_cast<long long>(cfg.micro_batch_tokens),
               cfg.master.c_str(), cfg.moments.c_str(), cfg.offload.c_str());
}

void print_lora_start(const model::LoraSetup& lora, const model::Config& c) {
  const model::LoraOptions& o = lora.options;
  const auto mods = model::lora_modules(c, o, "lora");
  std::fprintf(stderr,
               "train: LoRA r %lld, alpha %g%s (scale %g), %zu modules, %lld trainable parameters; "
               "the base is frozen\n",
               static_cast<long long>(o.r), o.alpha, o.rslora ? ", rslora" : "", o.scale(),
               mods.size(), static_cast<long long>(model::lora_param_count(mods, o.r)));
  for (const std::string& line : model::lora_report(mods))
    std::fprintf(stderr, "train: LoRA %s\n", line.c_str());
}

RunLog::RunLog(const TrainConfig& cfg, const model::Config& c, bool resumed, int64_t first_step)
    : cfg_(cfg),
      mtp_(c.mtp_enabled),
      moe_(c.is_moe()),
      tty_(::isatty(STDERR_FILENO)),
      metrics_(cfg.out_dir + "/metrics.jsonl", resumed ? std::ios::app : std::ios::trunc),
      tensorboard_(cfg.out_dir, cfg.tensorboard, first_step + 1),
      first_step_(first_step),
      t_start_(std::chrono::steady_clock::now()) {}

void RunLog::record(const nlohmann::json& m) {
  metrics_ << m.dump() << "\n" << std::flush;
  tensorboard_.log(m);
}

void RunLog::step(const StepResult& r) {
  tokens_seen_ += r.tokens;
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start_).count();
  const double tps = double(tokens_seen_) / std::max(elapsed, 1e-9);
  const double eta = elapsed / double(r.step - first_step_) * double(cfg_.steps - r.step);
  nlohmann::json m = {{"step", r.step},           {"loss", r.loss},      {"lr", r.lr},
                      {"grad_norm", r.grad_norm}, {"tokens", r.tokens},  {"tokens_per_s", tps},
                      {"step_s", r.seconds},      {"skipped", r.skipped}};
  if (mtp_) m["mtp_loss"] = r.mtp_loss;
  if (moe_) m["router_loss"] = r.router_loss;
  record(m);
  char line[256];
  std::snprintf(line, sizeof line,
                "step %lld/%lld | loss %.4f | lr %.2e | grad norm %.3f | %.0f tok/s | ETA %s",
                static_cast<long long>(r.step), static_cast<long long>(cfg_.steps), r.loss, r.lr,
                r.grad_norm, tps, fmt_duration(eta).c_str());
  if (tty_)
    std::fprintf(stderr, "\r%s\033[K", line);
  else if (r.step % std::max<int64_t>(1, cfg_.log_every) == 0 || r.step == cfg_.steps)
    std::fprintf(stderr, "%s\n", line);
}

void RunLog::eval(int64_t step, const EvalResult& e) {
  std::fprintf(stderr,
               "%seval at step %lld: loss %.4f, exact-match accuracy %.1f%% (%lld samples)\n",
               tty_ ? "\n" : "", static_cast<long long>(step), e.loss, 100 * e.accuracy,
               static_cast<long long>(e.samples));
  const nlohmann::json em = {{"step", step}, {"eval_loss", e.loss}, {"eval_accuracy", e.accuracy}};
  record(em);
}

void RunLog::stopped(int signal, int64_t step) {
  std::fprintf(stderr, "train: stopped by signal %d after step %lld; resume with --resume\n",
               signal, static_cast<long long>(step));
}

void RunLog::finish() {
  if (tty_) std::fprintf(stderr, "\n");
}

}  // namespace deltatron::train
