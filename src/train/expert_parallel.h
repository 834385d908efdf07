// Expert parallelism for score and train (model/expert_parallel.h): the groups, this rank's
// expert slices of a checkpoint's tensors, and the full expert tensors back for an output.
//
// The groups are formed among the data-parallel ranks (train/tensor_parallel.h: the job's ranks,
// or with tensor parallelism the ranks holding the same tp slice, Megatron's layout): with ep
// ranks per group, consecutive data-parallel ranks form a group (ranks g ep .. g ep + ep - 1):
// rank q of a group owns experts [q El, (q+1) El), El = num_experts / ep. Every data-parallel
// rank still runs its own packs; the routed-expert gradients are summed over the ranks that own
// the same experts (data-parallel rank mod ep equal), every other gradient over all the
// data-parallel ranks. With tensor parallelism each rank's experts are also its tp slice of their
// FFN columns (model/tensor_parallel.h), so a group exchanges rows among ranks of one tp slice
// and an expert tensor is split over ep x tp ranks.
#pragma once

#include <memory>
#include <string>

#include "core/device.h"
#include "dist/comm.h"
#include "model/adapters.h"
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

// ep == 1: off (nothing split, no communicators). Otherwise the groups over par's ranks (the
// data-parallel ranks: TensorGroups::data); an error naming `where` unless ep divides par's ranks
// and the model's num_experts, the model is MoE. Collective over par.
ExpertGroups setup_expert_groups(const Parallel& par, int64_t ep, const model::Config& c,
                                 const std::string& where);

// Replaces every routed-expert tensor of `params` (full [E, ...]) by this rank's slice
// [El, ...].
void keep_local_experts(model::TensorMap& params, const ExpertGroups& g);

// A LoRA run's adapters: the routed-expert adapters' slices [El, ...] (lora.experts; the other
// adapters are replicated), s.local_experts set.
void keep_local_experts(model::LoraSetup& s, const ExpertGroups& g);

// The inverse for host tensors shaped like this rank's store (e.g. gradients): every
// routed-expert slice gathered over the group into the full [E, ...] tensor (on every rank of
// the group). dev: the communicators' device (staged through it for CUDA). Collective.
void gather_experts(model::TensorMap& tensors, const ExpertGroups& g, core::Device dev);

// The same for an optimizer's host moments (a resumed run's, full): this rank's slices kept.
void keep_local_experts(AdamW& opt, const model::TensorMap& local_params, const ExpertGroups& g);

// The full training state of an expert-parallel run, gathered from every rank (collective: every
// rank calls it): the engine's weights and AdamW moments with the routed experts' slices joined.
// local_params: shaped like the engine's store (this rank's slices).
struct GatheredState {
  model::TensorMap weights, exp_avg, exp_avg_sq;
  int64_t step = 0;
};
GatheredState gather_state(Engine& engine, const model::TensorMap& local_params, AdamW& opt,
                           const ExpertGroups& g, core::Device dev);

// An Engine that only answers what a checkpoint save asks (sync_weights, read_moment) from a
// GatheredState; every other call is an error.
std::unique_ptr<Engine> saved_state_engine(const GatheredState& s);

}  // namespace deltatron::train
