// The trainer's log: the progress line on stderr, out_dir/metrics.jsonl and the TensorBoard
// mirror of every record, for each step and each evaluation.
#pragma once

#include <chrono>
#include <cstdint>
#include <fstream>

#include "data/packing.h"
#include "model/adapters.h"
#include "model/config.h"
#include "model/weights.h"
#include "train/evaluate.h"
#include "train/tensorboard_log.h"
#include "train/train_config.h"
#include "train/train_step.h"

namespace deltatron::train {

// The start-up line: parameter count and packing efficiency of the first epoch's micro-batches.
void print_run_start(const TrainConfig& cfg, const model::TensorMap& params,
                     const data::EpochIterator& batches);

// A LoRA run's start-up lines: rank, alpha, scale, the adapted modules per layer type
// (model::lora_report) and the trainable parameters, so an omitted layer type shows at once.
void print_lora_start(const model::LoraSetup& lora, const model::Config& c);

class RunLog {
 public:
  // Opens out_dir/metrics.jsonl, truncated for a fresh run, appended to by a resumed one (the
  // steps after the checkpoint it resumed from appear again), and the TensorBoard log
  // (cfg.tensorboard) from step first_step + 1. first_step: the step the run starts from.
  RunLog(const TrainConfig& cfg, const model::Config& c, bool resumed, int64_t first_step);

  // One step's record {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "step_s",
  // "skipped"} (+ "mtp_loss" for a model with MTP, "router_loss" for MoE) in metrics.jsonl and
  // TensorBoard, and the progress line: rewritten in place on a terminal, else printed every
  // cfg.log_every steps and at the last step. tokens_per_s counts this run's real tokens over
  // its wall time; ETA extrapolates this run's mean step time.
  void step(const StepResult& r);

  // An evaluation at `step` (e.samples > 0): a line on stderr and the record {"step",
  // "eval_loss", "eval_accuracy"}.
  void eval(int64_t step, const EvalResult& e);

  // The run stopped on a signal after `step`.
  void stopped(int signal, int64_t step);

  // The end of the run: ends the progress line on a terminal.
  void finish();

 private:
  void record(const nlohmann::json& m);

  const TrainConfig& cfg_;
  const bool mtp_, moe_, tty_;
  std::ofstream metrics_;
  TensorBoardLog tensorboard_;
  const int64_t first_step_;
  int64_t tokens_seen_ = 0;  // real (non-padding) tokens of this run's steps
  std::chrono::steady_clock::time_point t_start_;
};

}  // namespace deltatron::train
