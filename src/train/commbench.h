// `deltatron commbench`: the bandwidth of the job's collectives (NCCL between GPUs, Gloo between
// CPU ranks) over message sizes, as nccl-tests reports it, under `deltatron launch --nproc N`.
//
// For a collective over n ranks on a message of S bytes taking t seconds (the average over the
// ranks of each rank's mean time per call, `iters` calls back to back after `warmup`):
//   algbw = S / t
//   busbw = algbw * 2 (n - 1) / n   all_reduce (S: the buffer reduced, in place)
//         = algbw * (n - 1) / n     reduce_scatter (S: the input of n blocks), all_gather (S: the
//                                   output of n blocks, gathered in place)
// busbw is the bandwidth every link of a ring would need (nccl-tests' PERFORMANCE.md), comparable
// across rank counts and with the hardware's: an 8-GPU NVLink 4 H100 node peaks near 360-480
// GB/s busbw for large all_reduces. GB/s are 1e9 bytes per second.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace deltatron::train {

struct CommBenchOptions {
  std::string device = "cuda";  // cuda (NCCL) | cpu (Gloo)
  std::string dtype = "f32";    // f32 | bf16
  int64_t min_bytes = int64_t(1) << 20, max_bytes = int64_t(1) << 30;
  int64_t factor = 2;  // sizes min, min * factor, ... <= max
  int64_t warmup = 5, iters = 20;
  std::vector<std::string> ops = {"all_reduce"};  // all_reduce, reduce_scatter, all_gather
  std::string json_out;
};

// Every rank runs it (one rank: the "self" communicator, busbw 0). First one all_reduce of each
// rank's r + 1 is checked (the sum n (n + 1) / 2 everywhere, else a core::Error); then every
// operation at every size. Rank 0 prints the table and writes json_out: {backend, world_size,
// device, dtype, iters, warmup, results: [{op, bytes, elements, time_us, time_us_max,
// algbw_gbps, busbw_gbps}], peak_busbw_gbps: {op: ...}, avg_busbw_gbps: {op: ...}} (avg: the
// mean over the sizes, nccl-tests' "Avg bus bandwidth").
void run_commbench(const CommBenchOptions& opt);

}  // namespace deltatron::train
