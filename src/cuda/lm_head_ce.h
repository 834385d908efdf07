// CUDA fused LM head + cross-entropy: logits = x W^T, per-token CE, its gradient and the two
// backward GEMMs, chunked over tokens so the [N, V] logits are never materialised.
//
// Shape suffixes: N tokens, D hidden, V vocabulary. Row-major; W stored [V, D] (lm_head.weight
// or the tied embedding). Pointers are device memory. Per token the math is the contract of
// cpu/cross_entropy.h composed with ops/linear.h:
//   logits[n,:] = x[n,:] W^T                                   (fp32, cuBLASLt, fp32 accumulate)
//   lse[n]      = log sum_v exp(logits[n,v])                   (fp32 online max/sum)
//   loss[n]     = lse[n] - logits[n, t_n]   (0 when t_n == -100)
//   dlogits[n,v]= dloss[n] (softmax(logits[n,:])_v - [v == t_n]) (0 rows when t_n == -100)
//   dx[n,:]     = dlogits[n,:] W            dW += dlogits^T x
// Algorithm, per chunk of C token rows: linear_fwd into a cached fp32 logits buffer [C, V];
// one row kernel (a block per row) computes lse, loss, argmax and writes dlogits in `dt`. In
// f32 mode dlogits overwrite the logits in place and the backward GEMMs run per chunk. In bf16
// mode dlogits go to a cached bf16 buffer of G rows (a group: a multiple of C), and
// linear_bwd_dx / linear_bwd_dw run once per group: dW += dlogits^T x re-reads and re-writes the
// whole fp32 dW per call, so larger groups save that traffic. Chunks run in order on the legacy
// default stream (asynchronous, no host synchronisation except a cudaDeviceSynchronize when the
// workspace grows); results are bitwise deterministic run to run.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/dtype.h"

namespace deltatron::cuda {

// Default cap on the fp32 logits chunk: 512 MiB.
constexpr int64_t kLmHeadLogitsChunkBytes = int64_t(512) << 20;
// Default cap on the bf16 dlogits of a backward group: 1 GiB.
constexpr int64_t kLmHeadDlogitsGroupBytes = int64_t(1) << 30;

// Fused LM head projection + per-token cross-entropy, forward and (optionally) backward.
//   dt            storage type of x, W, dx and the dlogits fed to the backward GEMMs
//                 (bf16; f32 is the debug mode of the same kernels)
//   x_ND          [N, D] in (dt)
//   W_VD          [V, D] in (dt)
//   targets_N     [N] in, int32: a class id in [0, V) or -100 (core::kIgnoreIndex: loss 0, correct
//                 0, zero gradient row). The caller validates targets on the host; any other
//                 value is never used as an index: that token gets loss NaN, correct 0 and a zero
//                 gradient row.
//   dloss_N       [N] in, fp32: d(objective)/d(loss[n]) (e.g. 1 / number of label tokens), or
//                 nullptr for forward only (then dx_ND and dW_VD must be nullptr).
//   loss_N        [N] out (fp32, overwritten): per-token CE in nats.
//   correct_N     [N] out (int32, overwritten) or nullptr: 1 where the first index of the
//                 largest logit (std::max_element's rule, as model/lm_head.cpp) equals the
//                 target, else 0 (0 for ignored tokens).
//   dx_ND         [N, D] out (dt) or nullptr: overwritten, or += when accumulate_dx.
//   dW_VD         [V, D] inout (fp32) or nullptr (frozen head): dW += dlogits^T x, or = (not
//                 read) when accumulate_dw is false (the step's first write of the gradient).
//   chunk_rows    C: token rows of fp32 logits per chunk; <= 0 picks
//                 linear_cross_entropy_chunk_rows(V).
//   group_rows    G: token rows per backward GEMM group in bf16 mode, rounded down to a multiple
//                 of C (at least C); <= 0 picks linear_cross_entropy_group_rows(V, C). Ignored in
//                 f32 mode and forward only (G = C). G = C gives the smallest workspace.
// Workspace: fp32 logits [C, V] + (bf16 mode with backward) bf16 dlogits [G, V], cached across
// calls and grown (never shrunk) to the largest need seen; at V = 248,320 the defaults
// (C = 512, G = 2048) hold 485 + 970 MiB. See linear_cross_entropy_workspace_bytes.
// Requires V in [1, 2^31), D >= 0, N >= 0.
void linear_cross_entropy(DType dt, const void* x_ND, const void* W_VD, const int32_t* targets_N,
                          const float* dloss_N, int64_t N, int64_t D, int64_t V, float* loss_N,
                          int32_t* correct_N, void* dx_ND, bool accumulate_dx, float* dW_VD,
                          int64_t chunk_rows = 0, int64_t group_rows = 0,
                          bool accumulate_dw = true);

// Default chunk rows: the largest multiple of 64 rows (or, below 64, any count >= 1) whose fp32
// logits fit kLmHeadLogitsChunkBytes. V = 248,320 gives 512 rows (485 MiB of logits).
int64_t linear_cross_entropy_chunk_rows(int64_t V);

// Default group rows: the largest multiple of chunk_rows (at least chunk_rows) whose bf16
// dlogits fit kLmHeadDlogitsGroupBytes. V = 248,320, chunk_rows = 512 give 2048 rows.
int64_t linear_cross_entropy_group_rows(int64_t V, int64_t chunk_rows);

// Bytes of the cached workspace now held (its peak so far: it only grows).
size_t linear_cross_entropy_workspace_bytes();

}  // namespace deltatron::cuda
