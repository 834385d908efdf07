// CUDA token embedding lookup and its deterministic scatter-add backward: contract ops/embedding.h.
//
// Shape suffixes: N tokens in the pack, V vocabulary size (248,320), D hidden size (2048).
// Row-major. Every pointer is device memory; ids are int32. Work is queued on the legacy default
// stream, asynchronous to the host (no synchronisation).
#pragma once

#include <cstdint>

#include "cuda/dtype.h"

namespace deltatron::cuda {

// Forward: x[n, :] = table[ids[n], :] converted to fp32 (the residual stream is fp32).
//   ids_N    [N]     int32  in   validated by the caller on the host (ops::embedding_fwd's
//                                contract); an id outside [0, V) is never read: its row of x is
//                                set to zeros
//   table_VD [V, D]  dt     in   embed_tokens.weight (compute copy)
//   x_ND     [N, D]  fp32   out  overwritten
void embedding_fwd(DType dt, const int32_t* ids_N, const void* table_VD, int64_t N, int64_t V,
                   int64_t D, float* x_ND);

// Backward: dtable[ids[n], :] += dx[n, :] for every n (repeated ids sum).
//   ids_N     [N]     int32  in     ids outside [0, V) are skipped (nothing is written for them)
//   dx_ND     [N, D]  fp32   in
//   dtable_VD [V, D]  fp32   inout  ACCUMULATED; rows not looked up are untouched
// Deterministic: the (id, position) pairs are sorted by id with a stable radix sort (CUB), so each
// id's rows come in position order and are summed in that order (one warp per id and 128-column
// slice; ids repeated more than 64 times are shared by 32 warps whose partials are combined in a
// fixed order), then added to the table row once. Bitwise the same run to run, no atomics.
// Temporary device memory: about 33 N bytes plus CUB's workspace, in a process-wide scratch
// buffer kept for later calls (growing it is a cudaFree + cudaMalloc).
void embedding_bwd(const int32_t* ids_N, const float* dx_ND, int64_t N, int64_t D, int64_t V,
                   float* dtable_VD);

// Weighted bag of rows (ops::embedding_bag_fwd; the vision tower's bilinear position embedding):
//   x[n, :] (= or +=) sum_b w[n,b] table[idx[n,b], :], the B rows added in order in fp32
//   idx_NB [N, B] int32, w_NB [N, B] fp32 in (the caller validates idx: an index outside [0, V) is
//   skipped, never read);  table_VD [V, D] dt in;  x_ND [N, D] fp32 OVERWRITTEN or ACCUMULATED
void embedding_bag_fwd(DType dt, const int32_t* idx_NB, const float* w_NB, const void* table_VD,
                       int64_t N, int64_t B, int64_t V, int64_t D, float* x_ND, bool accumulate);

// Backward: dtable[idx[n,b], :] += w[n,b] dx[n, :]. The N * B entries go through embedding_bwd's
// sorted pipeline (entry e = n B + b reads row e / B of dx, scaled by w[e]): each table row's
// entries are summed in entry order (n, then b) and added once. Deterministic, no atomics; the
// same workspace as embedding_bwd (about 33 N B bytes).
//   idx_NB, w_NB as the forward;  dx_ND [N, D] fp32 in;  dtable_VD [V, D] fp32 inout ACCUMULATED
void embedding_bag_bwd(const int32_t* idx_NB, const float* w_NB, const float* dx_ND, int64_t N,
                       int64_t B, int64_t V, int64_t D, float* dtable_VD);

}  // namespace deltatron::cuda
