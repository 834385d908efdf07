// One optimizer step of the trainer: the step's micro-batches, forward/backward of the objective
// over them, clipping, the skip of a non-finite step, the learning rate and the AdamW update.
#pragma once

#include <cstdint>

#include "data/packing.h"
#include "model/config.h"
#include "train/engine.h"
#include "train/optimizer.h"
#include "train/parallel.h"
#include "train/schedule.h"
#include "train/train_config.h"
#include "train/train_data.h"
#include "train/train_state.h"

namespace deltatron::train {

// What every step reads or advances, set up once by run_train.
struct StepContext {
  const TrainConfig& cfg;
  const model::Config& model;
  const TrainData& data;
  const ScheduleOptions& schedule;
  data::EpochIterator& batches;  // the training micro-batches, in order; advanced by each step
  Engine& engine;
  AdamW& opt;
  const Parallel& par;  // data parallel: the ranks share each step's micro-batches
  // Expert parallelism: the ranks owning the same routed experts (their gradients are summed
  // over these only); null without it.
  dist::Comm* same_experts = nullptr;
};

// What one step did, for the log (metrics.jsonl, TensorBoard, the progress line).
struct StepResult {
  int64_t step = 0;     // optimizer steps completed after this one (the step's number in the log)
  double loss = 0;      // sum CE / label tokens over the step's micro-batches
  double mtp_loss = 0;  // sum MTP CE / MTP tokens (0 when the model has no MTP)
  double router_loss = 0;  // the MoE router losses summed over the micro-batches (0: dense)
  double grad_norm = 0;    // global gradient norm before clipping
  double lr = 0;           // the learning rate of the update (also of a skipped step)
  int64_t tokens = 0;      // real (non-padding) tokens of the step
  bool skipped = false;    // non-finite loss, router loss or gradient norm: no update
  double seconds = 0;      // wall time of the step
  // Reads of the device by the host during the step (ops::host_reads): 1, the step's scalars
  // (more with a parallel layout's host sums or MoE error words; not logged).
  int64_t host_reads = 0;
};

// One optimizer step, counted from st.step:
//  1. the next cfg.grad_accum x ranks micro-batches of ctx.batches, packed (every rank draws
//     them all: the data position stays the same on every rank);
//  2. zeroed gradients, then forward/backward of this rank's micro-batches (m mod ranks = rank)
//     with the objective's scales for the whole step (objective.h), so packing, micro-batching
//     and the number of ranks never change it; gradients and losses summed over the ranks;
//  3. the gradient norm, clipped to cfg.grad_clip, and the step's learning rate;
//  4. the AdamW update, or, when the loss, router loss or gradient norm is not finite, no update:
//     the step is skipped, counted in bad_steps and reported on stderr, and a core::Error is
//     thrown once bad_steps exceeds cfg.max_bad_steps;
//     the losses, norm, clip factor and skip of 2-4 stay on the device (core::StepScalars): the
//     update reads its clip and skip there, and the host reads them once, after the update is
//     queued (docs/perf.md, "Host synchronisations");
//  5. st advanced: step + 1, the data position, and extra["last_loss"] when the loss is finite.
StepResult train_step(const StepContext& ctx, TrainState& st, int64_t& bad_steps);

}  // namespace deltatron::train
