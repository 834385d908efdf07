// A run's training state held in shares (ZeRO, expert and tensor parallelism) read onto rank 0
// one whole tensor at a time, so a checkpoint save never holds the whole model on any rank.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "core/tensor.h"
#include "io/checkpoint.h"
#include "model/config.h"
#include "model/weights.h"
#include "train/engine.h"
#include "train/expert_parallel.h"
#include "train/optimizer.h"
#include "train/parallel.h"
#include "train/tensor_parallel.h"

namespace deltatron::train {

// Which tensor of a parameter's state.
enum class StatePart : int { weight = 0, exp_avg = 1, exp_avg_sq = 2 };

// Reads whole tensors of the engine's state. A rank's engine holds its share: under expert or
// tensor parallelism its slices (the routed experts' rows, the tp shards), under ZeRO a read is
// itself a collective over the engine's communicators (the owner's piece broadcast). A read takes
// the rank's local tensor from the engine (a scratch buffer of the slice's size; the weights of a
// tensor the engine holds apart come from the host copy), then gathers the slices of the group
// holding global rank 0 to rank 0 alone (an all_to_all_v in which only rank 0 receives), so rank 0
// holds one whole tensor and every other rank at most its slice of one tensor, never the model.
// A routed-expert tensor under expert and tensor parallelism together is gathered in two stages:
// over each tp group whose experts are those of ep group 0's ranks (its tp rank 0 assembles the
// experts' block), then over those tp ranks 0 (ep group 0 of tp slice 0) to rank 0.
class StateReader {
 public:
  // host: the rank's host parameters (ck.params: the values of the tensors the engine holds
  // apart, e.g. a frozen vision tower); c: the config; eg, tg: the layouts' groups (null or off:
  // none); stats: counts this rank's buffers (null: not counted).
  StateReader(const Parallel& par, Engine& engine, const model::TensorMap& host,
              const model::Config& c, AdamW& opt, const ExpertGroups* eg, const TensorGroups* tg,
              io::SaveStats* stats = nullptr);

  // The parameters (model::param_specs of the config) and their full shapes.
  const std::map<std::string, core::Shape>& shapes() const { return shapes_; }
  // Elements of the largest parameter.
  int64_t largest() const { return largest_; }
  // Whether a read needs the other ranks (sharded moments or weights, or slices on other ranks).
  // If not, rank 0 reads alone.
  bool collective() const { return collective_; }
  // The full tensor into out (numel of shapes().at(name) floats) on rank 0; out is not used on
  // the other ranks (may be null). Collective when collective(): every rank calls it with the same
  // part and name, in the same order.
  void read(StatePart part, const std::string& name, float* out);
  // The engine's optimizer step count into opt (no collective).
  void sync_step();

 private:
  enum class Split { none, experts, tp, experts_tp };
  Split split_of(const std::string& name) const;
  // Whether this rank's slice of a `split` tensor goes to rank 0 (its group is the one holding
  // global rank 0's copy).
  bool gathers(Split split) const;
  const Parallel& par_;
  Engine& engine_;
  const model::TensorMap& host_;
  const model::Config& c_;
  AdamW& opt_;
  const ExpertGroups* eg_;
  const TensorGroups* tg_;
  io::SaveStats* stats_;
  io::SliceFn slices_;
  std::map<std::string, core::Shape> shapes_;
  int64_t largest_ = 0;
  bool collective_ = false;
};

// One line on stderr per rank of a job: the save's counted buffers ("<what>: rank R of N: saved
// step S: save buffers peak P bytes (largest tensor L bytes, whole model W bytes in f32)").
void print_save_stats(const char* what, const Parallel& par, int64_t step, const io::SaveStats& s,
                      const model::Config& c);

}  // namespace deltatron::train
