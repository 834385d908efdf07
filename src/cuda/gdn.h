// CUDA chunked gated delta rule (Gated DeltaNet core), forward and backward over packed segments.
//
// Same contract as ops/gdn.h (gdn_chunk_fwd / gdn_chunk_bwd); every pointer is device memory
// unless named *_host. Algorithm and backward derivation: docs/ops/gdn.md (chunk C = 64 restarting
// at each segment start, WY / UT transform). Storage and precision:
//   q_NHK, k_NHK, v_NGV, o_NGV, do_NGV, dq_NHK, dk_NHK, dv_NGV  in `dt` (bf16, or f32 debug mode);
//   g_NG, beta_NG, dg_NG, dbeta_NG, state_SGKV                  always float32;
//   every product accumulates in fp32 (tensor cores, fp32 intermediates kept to ~2^-16 by
//   splitting them into two bf16 terms; f32 mode splits every operand into three: fp32 accuracy).
// Shapes: any N >= 0, K and V in [1, 256], G % H == 0; segments may be empty.
// cu_host: the nseg + 1 boundaries [0, ..., N] on the host; the chunk plan and launch grids are
// built from it (cu_dev, the same on the device, is accepted for symmetry with the other ops and
// not read). Work is queued on the legacy default stream, asynchronous to the host (only the
// chunk plan, a few KB, is copied from the host); a device workspace is cached between calls
// (grown on demand, freed at exit). With KP = K rounded up to 128 or 256 and VP = V rounded up
// to 32, the backward needs about 4 (2 KP VP + 128 KP + 192 VP + 8192) bytes per chunk and
// value head (more in f32 mode: 3-term planes) plus 8 G K bytes per token: 1.65 GB for N = 8192,
// G = 32, K = V = 128; the forward about 4 (64 (KP + VP) + 4096) bytes per chunk and head.
// Deterministic: no atomics; dq/dk are summed over the G/H value heads of a key head in order.
#pragma once

#include <cstdint>

#include "cuda/dtype.h"

namespace deltatron::cuda {

// Which launch layout gdn_chunk_* use (kept selectable for A/B timing in one process; all give
// the same values, bitwise up to the sign of zeros; docs/ops/gdn.md, "CUDA kernels"):
//   v4            v3 with W stored pre-split (bf16 storage; f32 as v3): the prep kernel writes
//                 W = Tm diag(beta e^gamma) K as two bf16 planes in the bytes of the fp32 matrix,
//                 and the states, dstate and dqk kernels load its fragments with ldmatrix instead
//                 of splitting fp32 at every fragment load (the same terms: the same products);
//                 not yet run on a GPU (selectable for the next measurement, not the default);
//   v3 (default)  v2 with 8 warps (instead of 4) per block in the per-chunk prep and WY kernels
//                 and the sequential ones (the forward's states pass, the backward's recompute
//                 and dstate passes): twice the warps per block at the same shared memory, half
//                 the dependent work per warp;
//   v2            the dq/dk kernel's K slices of one chunk-head run next to each other (their
//                 shared tiles come from L2); with one value head per key head (G == H) dq and
//                 dk are written in the storage type directly, without the fp32 per-value-head
//                 scratch and the summing pass; the backward's state recompute prefetches K,
//                 U and gamma one chunk further (one sync per chunk less);
//   v1            the previous layout.
// The first call reads the environment variable DT_GDN_KERNELS ("v1" .. "v4"; anything else is an
// error); gdn_set_kernels overrides it (tests, benchmarks).
enum class GdnKernels { v1, v2, v3, v4 };
GdnKernels gdn_kernels();
void gdn_set_kernels(GdnKernels k);

// o_NGV (out, overwritten) = the gated delta rule output per value head, with q scaled by
// `scale` inside; state_SGKV (out, overwritten, may be nullptr): final fp32 state [nseg, G, K, V]
// of each segment (zeros for an empty one).
void gdn_chunk_fwd(DType dt, const void* q_NHK, const void* k_NHK, const void* v_NGV,
                   const float* g_NG, const float* beta_NG, const int32_t* cu_dev,
                   const int32_t* cu_host, int nseg, int64_t N, int64_t H, int64_t G, int64_t K,
                   int64_t V, float scale, void* o_NGV, float* state_SGKV);

// Backward for the loss gradient do_NGV (in); no gradient flows into the final states. All
// outputs overwritten: dq_NHK (w.r.t. the unscaled q) and dk_NHK summed over the value heads
// that read each key head; dv_NGV, dg_NG, dbeta_NG per value head. Recomputes the chunk states
// from the inputs (nothing saved by the forward).
void gdn_chunk_bwd(DType dt, const void* q_NHK, const void* k_NHK, const void* v_NGV,
                   const float* g_NG, const float* beta_NG, const int32_t* cu_dev,
                   const int32_t* cu_host, int nseg, int64_t N, int64_t H, int64_t G, int64_t K,
                   int64_t V, float scale, const void* do_NGV, void* dq_NHK, void* dk_NHK,
                   void* dv_NGV, float* dg_NG, float* dbeta_NG);

}  // namespace deltatron::cuda
