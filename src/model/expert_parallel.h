// Expert parallelism (issue 15): the routed experts of every MoE layer sharded over a group of
// ranks; each rank's tokens reach the ranks owning their experts and come back, with the variable
// all-to-all of the group's communicator (dist::Comm::all_to_all_v).
//
// Rank q of a group of `size` owns experts [q El, (q+1) El), El = E / size: its parameter store
// holds those slices of "...mlp.experts.gate_up_proj" [El, 2F, D] and "...experts.down_proj"
// [El, D, F]. The router, shared expert and everything else are whole on every rank.
//
// Forward of the routed path on every rank, after the router and the expert-major permutation
// (ops::moe_permute with host offsets):
//   1. per-expert row counts to their owners (all_to_all_v of El counts per rank);
//   2. the gathered token rows and their slot weights to the owners (all_to_all_v);
//   3. the owner regroups what it received, [source][local expert] -> [local expert][source]
//      (a row gather), runs the grouped expert GEMMs over its El experts, and restores the order;
//   4. the expert outputs back to the token's rank (all_to_all_v), combined there as on one rank
//      (ops::moe_scatter_add in ascending expert order).
// The backward mirrors it: output gradients to the owners, which form the unweighted hidden
// gradient, the slot-weight gradient (returned to the token's rank, where the router needs it)
// and both expert weight gradients (local: the owner sees every token routed to its experts);
// the input-row gradients return to the token's rank. Each token's numbers are computed as on
// one rank, so per-sample losses are those of one rank; expert weight gradients sum the ranks'
// rows in another order (fp32 rounding).
//
// With tensor parallelism too (model/tensor_parallel.h), the group is ranks holding the same tp
// slice, and each owner's experts hold their tp slice of the FFN columns (experts.gate_up_proj
// [El, 2F/tp, D], down_proj [El, D, F/tp]): the tokens are the tp group's (gathered), routed alike
// on each of its ranks, and what returns from the owners is this rank's partial sum over its
// columns, which joins the tp group's reduction of the MoE output (Megatron's expert tensor
// parallelism inside expert parallelism).
//
// Every rank of a group must run the same sequence of layers: a rank with no pack of its own in
// a round runs an all-padding pack (train::idle_pack), which routes nothing and owns its experts
// for the others.
#pragma once

#include <cstdint>
#include <string>

#include "dist/comm.h"

namespace deltatron::model {

struct ExpertParallel {
  dist::Comm* comm = nullptr;  // the expert-parallel group; null: every expert on this rank
  int64_t num_local = 0;       // El
  int64_t first = 0;           // q El, this rank's first expert
  bool on() const { return comm != nullptr && comm->size() > 1; }
};

// Whether `name` is a routed-expert tensor the group shards along its first axis (experts):
// "...mlp.experts.gate_up_proj", "...mlp.experts.down_proj", and their LoRA adapters
// (lora.experts; model/adapters.h: "...mlp.experts.gate_up_proj.lora_A.weight" [E, r, in],
// "....lora_B.weight" [E, out, r]), which live with their experts on the owning rank.
bool is_routed_expert_tensor(const std::string& name);

}  // namespace deltatron::model
