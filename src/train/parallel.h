// Data parallelism for score and train: the job's communicator from the launcher's environment,
// which packs (or micro-batches) a rank runs, and sums of host results over the ranks.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/device.h"
#include "data/pack.h"
#include "dist/comm.h"
#include "model/router_loss.h"

namespace deltatron::train {

struct Parallel {
  std::unique_ptr<dist::Comm> comm;  // every rank of the job (the data-parallel group)
  int rank() const { return comm->rank(); }
  int size() const { return comm->size(); }
  bool root() const { return comm->rank() == 0; }
  // Item i (a pack of score, a micro-batch of a training step) runs on rank i mod size: every
  // rank walks the same sequence, so the items and their order are those of one rank.
  bool mine(int64_t i) const { return i % size() == rank(); }
};

// The items of n this rank runs, in order (i mod ranks = rank). same_count (expert parallelism:
// every rank must run as many packs as the others): padded with -1 up to ceil(n / ranks), for
// which the rank runs idle_pack().
std::vector<int64_t> rank_items(const Parallel& p, int64_t n, bool same_count);

// A pack of one padding token in one sample without real tokens: no label, no routing count, no
// router loss, so it adds exactly nothing to a loss or gradient; it lets a rank without work take
// part in every MoE layer's exchange.
data::Pack idle_pack();

// The job's place from the launcher's environment (dist::world_from_env: torchrun, Slurm,
// mpirun, deltatron launch; a single rank without one) and its communicator on dev. With
// several ranks on CUDA, this process uses GPU LOCAL_RANK. `what` names the command in errors.
Parallel setup_parallel(core::Device dev, const char* what);
// A single rank without looking at the environment (tests, bench).
Parallel single_rank(core::Device dev);

// Sums over the ranks, in place, of host values (staged through the device for NCCL). Values
// that only one rank holds (the others 0) come out exactly.
void all_reduce_sum(const Parallel& p, std::vector<double>& x);
void all_reduce_sum(const Parallel& p, std::vector<int64_t>& x);
double all_reduce_sum(const Parallel& p, double x);
// The largest value over the ranks (e.g. a stop request).
int64_t all_reduce_max(const Parallel& p, int64_t x);

// x = root's x on every rank.
void broadcast(const Parallel& p, int64_t& x, int root);

// Routing counts of the packs each rank ran, summed over the ranks (device f64: exact integer
// sums). moe_prefixes: every MoE layer's (a rank that ran no pack has no layers yet).
void all_reduce_counts(const Parallel& p, model::GlobalRouterCounts& counts,
                       const std::vector<std::string>& moe_prefixes, int64_t num_experts);

}  // namespace deltatron::train
