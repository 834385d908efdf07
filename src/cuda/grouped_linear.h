// Grouped expert GEMMs of the MoE block: each expert's rows of an expert-major row order times
// that expert's weight slice. Pointers are device memory unless the name ends in `_host`; work is
// queued on the legacy default stream.
#pragma once

#include <cstdint>

#include "cuda/dtype.h"

namespace deltatron::cuda {

// ---- grouped expert GEMMs ------------------------------------------------------------------
// Rows [off[e], off[e+1]) of the permuted order belong to expert e and use its weight slice
// W[e] ([O, I] at W_EOI + e*O*I). offsets_E1_host [E+1] host int64, off[0] = 0, non-decreasing;
// R = off[E] rows in all. Experts without rows are skipped. bf16 uses grouped_linear.cu's GEMM
// kernel (one launch per product for all experts) when I and O are multiples of 8 and the
// pointers 16-byte aligned, else (and in f32 mode) one cuBLASLt call per non-empty expert.
// fp32 accumulation either way; deterministic (no split-K).

// y[r,:] = x[r,:] W[e]^T for r in expert e's rows.  x_RI [R, I] dt in;  W_EOI [E, O, I] dt in;
// y_RO [R, O] dt out, overwritten.
void grouped_linear_fwd(DType dt, const void* x_RI, const void* W_EOI,
                        const int64_t* offsets_E1_host, int64_t E, int64_t I, int64_t O,
                        void* y_RO);

// dx[r,:] = dy[r,:] W[e] (dt, OVERWRITTEN; dx_RI == nullptr skips);
// dW[e] += dy_e^T x_e over expert e's rows (fp32, ACCUMULATED; dW_EOI == nullptr skips), or
// without accumulate_dw OVERWRITTEN, never read (an empty expert's dW[e] = 0; the grouped kernel
// then gives every expert its dW tiles, K = 0 for an empty one).
//   x_RI [R, I] dt in;  W_EOI [E, O, I] dt in;  dy_RO [R, O] dt in;  dW_EOI [E, O, I] fp32 inout.
void grouped_linear_bwd(DType dt, const void* x_RI, const void* W_EOI, const void* dy_RO,
                        const int64_t* offsets_E1_host, int64_t E, int64_t I, int64_t O,
                        void* dx_RI, float* dW_EOI, bool accumulate_dw = true);

// ---- the same products with the row offsets on the device -----------------------------------
// offsets_E1 [E+1] int64 in device memory (as moe_permute writes them), rows_max >= off[E] an
// upper bound on the rows (the MoE block passes P = N*K): no host copy and no sync. A small
// kernel builds the tile table on the device (each expert's first tile: an exclusive scan of the
// per-expert tile counts in expert order, the values the host path computes) and the grouped
// kernel runs over a worst-case grid whose CTAs past the last tile exit at once:
//   fwd, dx (M = the expert's rows): (ceil(rows_max / 128) + min(E, rows_max)) * ceil(N / 128)
//   dW (M = O, K = the expert's rows): min(E, rows_max) * ceil(O / 128) * ceil(I / 128), or E
//   instead of min(E, rows_max) when overwriting (every expert's dW is written)
// The tiles and the per-element K order are those of the host-offset kernel: bitwise the same
// results. Only the bf16 kernel path runs this way (grouped_linear_device_offsets_ok: I and O
// multiples of 8, 16-byte aligned pointers); anything else is a core::Error (the caller passes
// host offsets instead). The offsets are trusted (off[0] = 0, non-decreasing, off[E] <=
// rows_max), since they cannot be checked without a copy.
struct DeviceOffsets {
  const int64_t* offsets_E1;  // [E+1] device
  int64_t rows_max;           // >= offsets_E1[E]
};
// Whether the device-offset form supports (dt, I, O) (pointer alignment is checked per call).
bool grouped_linear_device_offsets_ok(DType dt, int64_t I, int64_t O);
void grouped_linear_fwd(DType dt, const void* x_RI, const void* W_EOI, DeviceOffsets off, int64_t E,
                        int64_t I, int64_t O, void* y_RO);
void grouped_linear_bwd(DType dt, const void* x_RI, const void* W_EOI, const void* dy_RO,
                        DeviceOffsets off, int64_t E, int64_t I, int64_t O, void* dx_RI,
                        float* dW_EOI, bool accumulate_dw = true);

// The same products as one cuBLASLt call per non-empty expert (the fallback above), exposed
// for the parity tests and timings of the grouped kernel.
void grouped_linear_fwd_loop(DType dt, const void* x_RI, const void* W_EOI,
                             const int64_t* offsets_E1_host, int64_t E, int64_t I, int64_t O,
                             void* y_RO);
void grouped_linear_bwd_loop(DType dt, const void* x_RI, const void* W_EOI, const void* dy_RO,
                             const int64_t* offsets_E1_host, int64_t E, int64_t I, int64_t O,
                             void* dx_RI, float* dW_EOI, bool accumulate_dw = true);

}  // namespace deltatron::cuda
