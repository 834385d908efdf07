// CUDA varlen GQA attention core (flash-attention style), causal or bidirectional: same contract
// as ops/attention.h.
//
// Shape suffixes: N tokens in the pack, H query heads, J kv heads (H % J == 0), K head dim
// (1 <= K <= 256). Pointers are device memory unless named *_host; tensors are contiguous
// row-major in the storage type `dt` (bf16, or f32 in the debug mode); lse_NH is always float32.
// Segments: cu_dev [nseg + 1] int32 on the device and cu_host, the same values on the host
// (used to plan the grid); segment s is tokens [cu[s], cu[s+1]), cu[0] = 0, cu[nseg] = N, empty
// segments allowed. Attention is causal inside each segment (causal = true, the language model)
// or bidirectional (causal = false: every key of the segment, the vision tower's attention inside
// one image), and never crosses a segment boundary. Every head dim 1..256 runs (zero-padded to
// the tensor-core tile width 64, 128 or 256; the vision tower's 72 runs as 128).
//
// Numerics: bf16 storage uses bf16 tensor cores (mma.sync m16n8k16, fp32 accumulate); scores,
// softmax, lse, D = rowsum(dO * O) and all accumulation are fp32; P and dS are rounded to bf16
// only as the operands of the second product of each pair, as flash attention does. f32 storage
// uses fp32 SIMT code (no TF32) with two-level sums (error well under 1e-5 at 4k keys).
// No N x N (or L x L) matrix is formed. Deterministic: no atomics; every sum runs in a fixed
// order that depends only on the shapes, so the same inputs give bitwise the same outputs.
// Work is queued on the legacy default stream; nothing synchronises the host.
#pragma once

#include <cstdint>

#include "cuda/dtype.h"

namespace deltatron::cuda {

// Forward (ops::attention_fwd):
//   o[n,h,:]  = sum_{m in W(n)} softmax_m(scale q[n,h,:] . k[m,j,:]) v[m,j,:],  j = h / (H/J)
//   lse[n,h]  = log sum_{m in W(n)} exp(scale q[n,h,:] . k[m,j,:])
// with W(n) = [start of n's segment, n] when causal, else the whole segment of n.
//   q_NHK [N, H, K] dt in;  k_NJK, v_NJK [N, J, K] dt in
//   o_NHK [N, H, K] dt out, overwritten;  lse_NH [N, H] float32 out, overwritten (saved for bwd)
void attention_fwd(DType dt, const void* q_NHK, const void* k_NJK, const void* v_NJK,
                   const int32_t* cu_dev, const int32_t* cu_host, int nseg, int64_t N, int64_t H,
                   int64_t J, int64_t K, float scale, void* o_NHK, float* lse_NH,
                   bool causal = true);

// Backward (ops::attention_bwd), with P = exp(scale q k^T - lse) recomputed, D = rowsum(dO * O)
// and dS = P (dO v^T - D):  dq = scale dS k,  dk = scale sum_{h in group} dS^T q,
// dv = sum_{h in group} P^T dO.
//   q_NHK, k_NJK, v_NJK, o_NHK (dt), lse_NH (float32) as attention_fwd saved them
//   do_NHK [N, H, K] dt in
//   dq_NHK [N, H, K], dk_NJK, dv_NJK [N, J, K] dt out, OVERWRITTEN
// Workspace: D [N, H] float32 and, for packs dominated by one long segment, fp32 partial dk/dv
// over head groups (2 x splits x N x J x 256 floats at most); allocated and freed stream-ordered
// (cudaMallocAsync / cudaFreeAsync on the default stream).
void attention_bwd(DType dt, const void* q_NHK, const void* k_NJK, const void* v_NJK,
                   const void* o_NHK, const float* lse_NH, const void* do_NHK,
                   const int32_t* cu_dev, const int32_t* cu_host, int nseg, int64_t N, int64_t H,
                   int64_t J, int64_t K, float scale, void* dq_NHK, void* dk_NJK, void* dv_NJK,
                   bool causal = true);

}  // namespace deltatron::cuda
