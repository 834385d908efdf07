// Expert parallelism for score and train (model/expert_parallel.h): the groups, this rank's
// expert slices of a checkpoint's tensors, and the full expert tensors back for an output.
//
// With ep ranks per group, consecutive ranks form a group (ranks g ep .. g ep + ep - 1): rank q
// of a group owns experts [q El, (q+1) El), El = num_experts / ep. Every rank still runs its own
// packs (data parallel over all ranks); the routed-expert gradients are summed over the ranks
// that own the same experts (rank mod ep equal), every other gradient over all ranks.
#pragma once

#include <memory>
#include <string>

#include "core/device.h"
#include "dist/comm.h"
#include "model/config.h"
#include "model/expert_parallel.h"
#include "model/weights.h"
#include "train/engine.h"
#include "train/optimizer.h"
#include "train/parallel.h"

namespace deltatron::train {

struct ExpertGroups {
  std::unique_ptr<dist::Comm> group;         // the ranks sharing one set of experts among them
  std::unique_ptr<dist::Comm> same_experts;  // the ranks owning the same experts (rank mod ep)
  model::ExpertParallel model;               // what the model's MoE layers use
  bool on() const { return model.on(); }
};

// ep == 1: off (nothing split, no communicators). Otherwise the groups over par's ranks; an error
// naming `where` unless ep divides the job's ranks and the model's num_experts, the model is MoE.
// Collective over par.
ExpertGroups setup_expert_groups(const Parallel& par, int64_t ep, const model::Config& c,
                                 const std::string& where);

// Replaces every routed-expert tensor of `params` (full [E, ...]) by this rank's slice
// [El, ...].
void keep_local_experts(model::TensorMap& params, const ExpertGroups& g);

// The inverse for host tensors shaped like this rank's store (e.g. gradients): every
// routed-expert slice gathered over the group into the full [E, ...] tensor (on every rank of
// the group). dev: the communicators' device (staged through it for CUDA). Collective.
void gather_experts(model::TensorMap& tensors, const ExpertGroups& g, core::Device dev);

// The same for an optimizer's host moments (a resumed run's, full): this rank's slices kept.
void keep_local_experts(AdamW& opt, const model::TensorMap& local_params, const ExpertGroups& g);

}  // namespace deltatron::train
