// What one rank keeps of each parameter under expert and tensor parallelism, as the loader's slice
// function (io::SliceFn): a rank reads only its slices from the files, never the whole model.
#pragma once

#include "io/checkpoint.h"
#include "model/config.h"
#include "model/weights.h"
#include "train/expert_parallel.h"
#include "train/parallel.h"
#include "train/tensor_parallel.h"
#include "train/train_state.h"

namespace deltatron::train {

// The slices of this rank: with expert parallelism the rows of its experts
// [first, first + num_local) of every routed-expert tensor [E, ...] (one run); with tensor
// parallelism model::tp_runs of every sharded tensor; with both, of a routed-expert tensor the
// tp runs of its experts' [num_local, ...] block (its tp slice of its experts' FFN columns);
// nullopt for every other tensor (kept whole). Empty (no function) when neither is on. The function
// holds copies of the groups' numbers, not references. An error names the tensor when its shape
// does not split.
io::SliceFn local_slices(const ExpertGroups& eg, const TensorGroups& tg);

// The parameters (model::param_specs) at this rank's shapes under `base` (its slices; empty:
// the full shapes).
std::vector<model::ParamSpec> local_specs(const model::Config& c, const io::SliceFn& base);

// Which ZeRO 3 store a rank reads its pieces for (zero3_slices).
struct Zero3Read {
  // The frozen base of a LoRA run (Zero3Store's frozen mode, model::StateOptions::frozen): every
  // tensor is in the store (a LoRA run holds no vision tower apart). false: the trained store of
  // parallel.zero = 3, which leaves out a vision tower the model holds apart.
  bool lora_base = false;
  // The model computes in bf16 (CUDA, precision bf16): a frozen bf16 store keeps the tensors the
  // model reads in f32 (model::keeps_f32_weight: the MoE routers) whole on every rank, so with
  // lora_base they are read whole (as base gives them).
  bool bf16 = false;
};

// ZeRO 3 (parallel.zero = 3, train/zero3.h): this rank's pieces of its tensors, so a rank reads
// only them from the files. The store is the local one (base: the ep / tp slices, or none), laid
// out as Zero3Store lays it out (a vision tower the model holds apart is left out: it keeps
// base's slice); a tensor's piece is one run of the local tensor's elements, its slice shape
// [k] (k may be 0), its runs those of the full tensor. ranks, rank: the data-parallel ranks
// (ZeroSetup::comm); expert_ranks, expert_rank: the ranks holding the same experts
// (ZeroSetup::experts; 0: none). Zero3Store::load_weight and load_moment take such pieces; the
// trainer and `score --zero 3` read so (of the trained store, or of a LoRA run's frozen base).
io::SliceFn zero3_slices(const model::Config& c, const io::SliceFn& base, int ranks, int rank,
                         int expert_ranks = 0, int expert_rank = 0, const Zero3Read& read = {});

// The slices a rank reads the model with: `local` (local_slices), or with pieces (ZeRO 3) its
// zero3_slices of them over dp's ranks and, under expert parallelism, eg's ranks holding the same
// experts. The trainer and `score` read so.
io::SliceFn read_slices(const model::Config& c, const io::SliceFn& local, bool pieces,
                        const Parallel& dp, const ExpertGroups& eg, const Zero3Read& read);

// The engine's parameter source (model::ParamSource) over tensors read so: the parameters at
// their local shapes (local_specs of `local`, the ep / tp slices without the pieces), each made
// from `params` (the pieces read by zero3_slices). params must outlive the source.
model::ParamSource piece_source(const model::Config& c, const io::SliceFn& local,
                                const model::TensorMap& params);

// The same bound to a config: what load_train_state and restore_master_weights take.
LocalSlice local_slice(const io::SliceFn& f, const model::Config& c);

// Replaces every tensor of a host map of full tensors by its slice (a preset's initialisation,
// which is made whole).
void keep_slices(model::TensorMap& t, const io::SliceFn& f, const model::Config& c);

// One line on stderr per rank (`what`: "train", "score"): the loader's host buffers, so a job's
// log shows each rank held its share while loading:
//   "<what>: rank R of N: loaded its share of the weights: kept K bytes, loader peak P bytes
//   (whole model W bytes in f32)".
void print_load_stats(const char* what, const Parallel& par, const io::LoadStats& s,
                      const model::Config& c);

}  // namespace deltatron::train
