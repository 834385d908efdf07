// Communicators: the collectives every parallel layout uses, over one group of ranks, with a
// backend per device (Gloo for CPU ranks, NCCL for CUDA) and a trivial one for a single rank.
//
// Contract of every collective (all ranks of the group call it, in the same order, with views of
// the same dtype and element counts unless stated):
//   - views are contiguous, on the communicator's device (CPU memory for Gloo, device memory for
//     NCCL); in-place use is allowed where stated, otherwise in and out must not overlap;
//   - supported dtypes: f32, f64, bf16 (sum in the dtype; bf16 only where a caller asks for it),
//     i32, i64; another dtype is an error naming the collective and the view. bf16 sums: NCCL
//     adds in bf16 (rounded at every step of its algorithm); Gloo has no bf16 type and reduces
//     an f32 copy, rounded to the nearest bf16 once (the two may differ in the last bf16 bit);
//   - CPU backend: the call returns when the result is complete. CUDA backend: the call is
//     enqueued on the current device's default stream (the engine's stream) and ordered with the
//     kernels around it; it returns without waiting for completion;
//   - a peer that died or stopped answering ends the call with core::Error within the
//     communicator's timeout, naming the collective, this rank and the backend's message: never a
//     silent hang. CUDA: the call has returned before its kernel waits, so the error comes from
//     the next barrier() (which waits for the device) or the next call (dist/nccl_comm.cpp).
//     After such an error the communicator is unusable: every later call is an error saying so;
//   - argument errors (dtype, device, sizes, overlap, counts, root) are core::Error naming the
//     backend, the collective, the rank and the view, before anything is sent.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/view.h"

namespace deltatron::dist {

enum class ReduceOp { sum, max };

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual core::Device device() const = 0;
  virtual const char* backend() const = 0;  // "self", "gloo" or "nccl"

  // x = op over the ranks of x (in place).
  virtual void all_reduce(const core::View& x, ReduceOp op) = 0;
  // in: [size() * n] on every rank; out: [n] = sum over ranks r of block rank() of r's in.
  virtual void reduce_scatter(const core::View& in, const core::View& out) = 0;
  // in: [n] on every rank; out: [size() * n] with block r = rank r's in. in may be out's block
  // rank() (in place).
  virtual void all_gather(const core::View& in, const core::View& out) = 0;
  // Variable all-to-all: in holds size() consecutive blocks, block p (send_counts[p] elements)
  // for rank p; out receives size() consecutive blocks, block p (recv_counts[p] elements) from
  // rank p. Counts are in elements; in and out may differ in element count. The blocks start at
  // element 0; elements of in or out past the last block are neither sent nor written. Rank r's
  // send_counts[p] must equal rank p's recv_counts[r] (not checked: a mismatch fails or hangs
  // until the timeout).
  virtual void all_to_all_v(const core::View& in, const std::vector<int64_t>& send_counts,
                            const core::View& out, const std::vector<int64_t>& recv_counts) = 0;
  // x = root's x on every rank.
  virtual void broadcast(const core::View& x, int root) = 0;
  // Returns once every rank has called it (CUDA: after the device's pending work).
  virtual void barrier() = 0;
  // A sub-group (collective over this group): the ranks that pass the same color, ordered by
  // (key, rank) as MPI_Comm_split. Every rank gets its group's communicator, on the same
  // backend with the same timeout (Gloo: a group of one rank gets the "self" communicator;
  // NCCL: colors must be >= 0).
  virtual std::unique_ptr<Comm> split(int color, int key) = 0;
};

// A process's place in the job, from the launcher's environment (the first launcher whose
// variables are present; the most specific first, so torchrun or mpirun started inside a Slurm
// allocation is taken for what it is):
//   torchrun / deltatron launch: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
//                                MASTER_PORT (present when RANK or WORLD_SIZE is; LOCAL_RANK and
//                                LOCAL_WORLD_SIZE default to RANK and WORLD_SIZE: one host).
//                                With TORCHELASTIC_USE_AGENT_STORE=True, torchrun's agent holds
//                                MASTER_PORT (its own store): master_port is MASTER_PORT + 1
//   OpenMPI mpirun:              OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE,
//                                OMPI_COMM_WORLD_LOCAL_RANK, OMPI_COMM_WORLD_LOCAL_SIZE;
//                                MASTER_ADDR / MASTER_PORT (default 127.0.0.1:29500)
//   Slurm srun:                  SLURM_PROCID, SLURM_STEP_NUM_TASKS (or SLURM_NTASKS),
//                                SLURM_LOCALID, SLURM_NTASKS_PER_NODE (or this node's entry,
//                                SLURM_NODEID, of SLURM_STEP_TASKS_PER_NODE); only inside a job
//                                step (SLURM_STEP_ID set): a batch script's own environment has
//                                SLURM_PROCID and SLURM_NTASKS too but is one process.
//                                MASTER_ADDR / MASTER_PORT when set, else the first host of
//                                SLURM_STEP_NODELIST (or SLURM_NODELIST) and port
//                                kSlurmPortBase + SLURM_JOB_ID % kSlurmPortSpan
//   none of these:               a single rank.
// Inconsistent or malformed values (RANK >= WORLD_SIZE, a non-number, a size without a rank) are
// a core::Error naming the variable.
constexpr int kSlurmPortBase = 20000, kSlurmPortSpan = 20000;
struct World {
  int rank = 0, size = 1, local_rank = 0, local_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string launcher = "single";  // "torchrun", "slurm", "mpirun" or "single"
};
World world_from_env();

struct CommOptions {
  double timeout_s = 300;  // DT_DIST_TIMEOUT (seconds) overrides it when set
  // "auto": self for one rank, gloo on the CPU, nccl on CUDA. "nccl": NCCL even for one rank.
  // "gloo": Gloo on either device; CUDA views are staged through host memory (slow: for checks,
  // e.g. several ranks sharing one GPU, which NCCL refuses). DT_DIST_BACKEND overrides it when
  // set; another value is an error naming it.
  std::string backend = "auto";
};

// The backend CommOptions and DT_DIST_BACKEND ask for ("auto", "gloo" or "nccl").
std::string requested_backend(const CommOptions& opt = {});

// The communicator of the whole job on `dev` (rank 0 hosts the TCP rendezvous at
// master_addr:master_port; NCCL's unique id travels through it): "gloo" for Device::cpu, "nccl"
// for Device::cuda on the current CUDA device (the caller selects the rank's GPU first, usually
// local_rank's). size 1: the "self" backend, no network. Every rank calls it; it returns once all
// have connected. Errors (unreachable rendezvous within the timeout, a rank that never arrives,
// a CUDA build missing for Device::cuda, ...) are core::Error with the address and rank. For
// size > 1 it sets SIGPIPE to SIG_IGN unless the program handles it (Gloo writes to sockets
// without MSG_NOSIGNAL: a dead peer would otherwise kill the process instead of failing the call).
std::unique_ptr<Comm> connect(const World& world, core::Device dev, const CommOptions& opt = {});

// The single-rank communicator (every collective is a copy or nothing).
std::unique_ptr<Comm> self_comm(core::Device dev);

}  // namespace deltatron::dist
