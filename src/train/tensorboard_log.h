// The trainer's TensorBoard log: every metrics.jsonl record mirrored into an event file.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "io/tensorboard_writer.h"

namespace deltatron::train {

// The event files live in `<out_dir>/tensorboard/` (kTensorBoardDir), one per run or resume:
// `tensorboard --logdir <out_dir>/tensorboard` shows one run, `--logdir runs/` one per out_dir.
inline constexpr const char* kTensorBoardDir = "tensorboard";

class TensorBoardLog {
 public:
  // enabled = false: nothing is written and log() does nothing. Otherwise a new event file is
  // created in <out_dir>/tensorboard (files already there are kept: TensorBoard reads a folder's
  // files as one run) and a SessionLog START at first_step, the first step this run logs; so
  // TensorBoard drops what earlier files hold from first_step on (the steps a killed run logged
  // after the checkpoint this one resumed from, or all of an earlier fresh run) and shows each
  // step once, as this run logs it. Failing to create the file is an error (before training).
  TensorBoardLog(const std::string& out_dir, bool enabled, int64_t first_step);

  // Writes one metrics.jsonl record (a step's or an evaluation's) as one event at the record's
  // "step" (the optimizer step). Each numeric field other than "step" becomes a scalar:
  // "eval_<x>" is tagged "eval/<x>", any other "<x>" is tagged "train/<x>" (train/loss, train/lr,
  // train/grad_norm, train/tokens_per_s, ..., train/mtp_loss and train/router_loss when the record
  // has them; eval/loss, eval/accuracy). Non-numeric fields (the "skipped" flag) are left out.
  // A write failure is reported once on stderr, naming the file, and ends TensorBoard logging
  // for this run: training goes on, and metrics.jsonl still holds every number.
  void log(const nlohmann::json& record);

  // The event file being written; empty when disabled or stopped after a write failure.
  std::string path() const { return writer_ ? writer_->path() : std::string(); }

 private:
  std::unique_ptr<io::EventFileWriter> writer_;
};

}  // namespace deltatron::train
