// One rank's share of the training state under a parallel layout (the memory plan's device state,
// memory_plan.h): what each layout's engine really allocates (docs/parallel.md, "The memory plan
// per rank").
#pragma once

#include <cstdint>

#include "model/config.h"
#include "train/memory_plan.h"

namespace deltatron::train {

struct RankState {
  // Elements of the tensors this rank computes with: every tensor, with ep its routed-expert
  // slices (E / ep experts), with tp its shards (model::is_tp_sharded tensors / tp).
  int64_t params = 0;
  // Bytes of the weights, masters, gradients and AdamW moments this rank holds on the device:
  //   no ZeRO (or ZeRO 1/2 on one rank): every local tensor's, model::state_bytes per element;
  //   ZeRO 1 and 2: the weights, masters and gradients whole (stage 2 reduce-scatters into the
  //     full gradient buffer: it is allocated whole), the moments of the rank's shards only: the
  //     replicated tensors' over the dp ranks, the expert slices' over the dp / ep ranks holding
  //     the same experts, each an even share plus at most one tensor (tensor-aligned shards);
  //   ZeRO 3: everything of the rank's pieces (per unit: ceil(unit / ranks) rounded up to 64
  //     elements, the units as train/zero3.h lays them out, expert units over dp / ep ranks).
  double state = 0;
  // ZeRO 3: the gathered units' buffers at their peak (a backward step): the outer unit (weights,
  // the routers' f32 weights in a bf16 model, its gradient when training), two layers' weights
  // (the one running and the prefetched one, and their f32 copies where they hold a router) and
  // one layer's gradient, for the replicated and the expert units apart; the reduced piece.
  double gathered = 0;
  // ZeRO 2: the gradient reduce-scatter's staging, (ranks + 1) x min(2^22, largest shard) f32 for
  // the larger of the two groups (allocated per reduction, one at a time).
  double staging = 0;
  // ZeRO 3: the elements of this rank's pieces (what its loader keeps: train/local_slices.h,
  // zero3_slices); 0 otherwise.
  int64_t shard = 0;
  // Bytes of offloaded state in host memory (training.offload): every local tensor's, with ZeRO
  // 1 and 2 on several ranks this rank's shards' (the moments and the offloaded masters), with
  // ZeRO 3 this rank's pieces' (shard elements).
  double host = 0;
};

// in.layout: the run's layout (dp, zero, ep, tp); in.compute, in.state, in.training as the plan.
// A LoRA run (in.lora_params >= 0): params and state count the frozen base (its weights alone,
// model::state_bytes of a frozen store per element: with ep its expert slices; with ZeRO 3 its
// pieces, and the gathered units' weights without gradients or f32 copies, the routers' f32
// weights whole instead) plus the adapters: their weights, masters and gradients whole (the
// routed-expert adapters / ep, the factors tp splits / tp), their moments as ZeRO 1/2 shard them
// (ZeRO 3: as stage 1; an even share plus the largest adapter tensor over the dp ranks, the expert
// adapters' over the dp / ep ranks holding them), ZeRO 2's staging for them.
RankState rank_state(const model::Config& c, const PlanInput& in);

}  // namespace deltatron::train
