// Tensor (and sequence) parallelism for score and train (model/tensor_parallel.h): the groups,
// this rank's slices of a checkpoint's tensors and moments, and the full tensors back for an
// output.
//
// With tp ranks per group, consecutive ranks form a group (ranks g tp .. g tp + tp - 1) that runs
// the same packs, each rank with its share of the heads and FFN columns. The groups are data
// parallel among themselves: the data-parallel ranks are those of one position in their group
// (rank mod tp equal), and a group's index (rank / tp) is its data-parallel rank. Gradients are
// summed over the data-parallel ranks only: inside a group the sharded tensors differ and the
// replicated ones are already whole on every rank (the model sums their partial gradients).
#pragma once

#include <memory>
#include <string>

#include "core/device.h"
#include "dist/comm.h"
#include "model/adapters.h"
#include "model/config.h"
#include "model/tensor_parallel.h"
#include "model/weights.h"
#include "train/optimizer.h"
#include "train/parallel.h"

namespace deltatron::train {

struct TensorGroups {
  std::unique_ptr<dist::Comm> group;  // the tensor-parallel group
  Parallel dp;                        // the data-parallel ranks (tp > 1 only)
  model::TensorParallel model;        // what the model's blocks use
  bool on() const { return model.on(); }
  // The ranks that split the packs or micro-batches among them: dp, or the job's without tp.
  const Parallel& data(const Parallel& job) const { return on() ? dp : job; }
};

// tp == 1: off (sp must be off too). Otherwise the groups over par's ranks; an error naming
// `where` unless tp divides the job's ranks and the model splits over tp ranks
// (model::check_tensor_parallel). Collective over par.
TensorGroups setup_tensor_groups(const Parallel& par, int64_t tp, bool sp, const model::Config& c,
                                 const std::string& where);

// Replaces every sharded tensor of `params` (full) by this rank's slice (model::tp_slice).
void keep_local_shards(model::TensorMap& params, const TensorGroups& g, const model::Config& c);
// A LoRA run's adapters: every split adapter tensor's slice (model/tensor_parallel.h), s.tp set.
void keep_local_shards(model::LoraSetup& s, const TensorGroups& g, const model::Config& c);
// The same for an optimizer's host moments (a resumed run's, full).
void keep_local_shards(AdamW& opt, const model::TensorMap& local_params, const TensorGroups& g,
                       const model::Config& c);
// The inverse for host tensors shaped like this rank's store (weights, gradients, moments): every
// sharded tensor gathered over the group into the full tensor (on every rank of the group).
// dev: the communicators' device (staged through it for CUDA). Collective over the group.
void gather_shards(model::TensorMap& tensors, const TensorGroups& g, const model::Config& c,
                   core::Device dev);

}  // namespace deltatron::train
