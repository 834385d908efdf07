// Contract for the plain tensor helpers over views: dtype casts, column-block copies, fills,
// residual adds, sums of squares, host transfers and device synchronisation.
//
// One device per call (all views of a call on one device); the CPU computes in float32 only (a
// bf16 view on the CPU is an error), CUDA stores f32 or bf16 (cuda/pointwise.h). n is a flat
// element count checked against every view's numel.
#pragma once

#include <cstdint>

#include "core/device.h"
#include "core/view.h"

namespace deltatron::ops {

// dst = src converted (f32 <-> bf16 rounds to nearest even on CUDA); equal dtypes copy. [n] each.
void cast(const core::View& src, const core::View& dst, int64_t n);

// dst[r, dst_col0 + c] = src[r, src_col0 + c] for r < rows, c < cols (row-major, leading
// dimensions src_ld / dst_ld in elements): splits and concatenates column blocks.
//   src [rows * src_ld], dst [rows * dst_ld], one dtype (f32 or bf16; i32 on the CPU too);
//   src_col0 + cols <= src_ld, dst_col0 + cols <= dst_ld. No overlap.
void copy_cols(const core::View& src, int64_t src_ld, int64_t src_col0, const core::View& dst,
               int64_t dst_ld, int64_t dst_col0, int64_t rows, int64_t cols);

// Row moves by index (the vision tower's output into the image-pad positions of the text
// embedding, and the gradient back): rows of D elements, idx_M [M] i32 on the same device.
// gather_rows:  dst[m, :] = src[idx[m], :]   src [R, D] in, dst [M, D] out (overwritten)
// scatter_rows: dst[idx[m], :] = src[m, :]   src [M, D] in, dst [R, D] inout (other rows kept);
//               the indices must be distinct.
// Every idx in [0, R) (checked on the CPU: a core::Error; on CUDA the indices stay on the device,
// so the caller validates them: an index outside [0, R) is never dereferenced). src and dst of
// one dtype: f32, or bf16 on CUDA.
void gather_rows(const core::View& src, const core::View& idx_M, int64_t R, int64_t M, int64_t D,
                 const core::View& dst);
void scatter_rows(const core::View& src, const core::View& idx_M, int64_t R, int64_t M, int64_t D,
                  const core::View& dst);

// x[i] = value (rounded to x's dtype: f32, bf16 or i32), [n].
void fill(const core::View& x, float value, int64_t n);

// Every byte of x = 0 (any dtype, bf16 and u16 on the CPU too: these three move stored bytes, no
// arithmetic; an empty view does nothing).
void zero(const core::View& x);

// y (f32) += x (f32, or bf16 on CUDA), [n] each.
void add_inplace(const core::View& y, const core::View& x, int64_t n);

// Dropout (a LoRA adapter's input): y = x * mask / (1 - p) with mask_i = 1 with probability 1 - p,
// decided by core::random_bits(key, i) (counter-based: the same key gives the same mask on every
// device, so a backward pass regenerates it instead of storing it). x, y [n] of one dtype (f32, or
// bf16 on CUDA); y may be x. 0 <= p < 1.
// A window (tensor parallelism: a row-parallel adapter's input is this rank's columns of the
// whole [rows, ld] input): x is [n / cols, cols], its element (r, c) taking the mask of the whole
// input's element (r, col0 + c), i.e. counter r ld + col0 + c, so the ranks' masks are the pieces
// of one rank's. The default window (cols = 0) is the whole input: counter i.
struct MaskWindow {
  int64_t cols = 0, ld = 0, col0 = 0;
};
void dropout(const core::View& x, const core::View& y, double p, uint64_t key, int64_t n,
             const MaskWindow& window = {});

// y += alpha * x, y and x of one dtype (f32, or bf16 on CUDA: f32 arithmetic, one rounding), [n].
void axpy(const core::View& y, const core::View& x, float alpha, int64_t n);

// sum_i x[i]^2 in double (x f32 [n]); synchronises with the device. Deterministic.
double sum_squares(const core::View& x, int64_t n);
// The same sum written to out_1 ([1] f64 on x's device) instead of returned: no host
// synchronisation (queued on CUDA). Bitwise the value sum_squares returns.
void sum_squares_to(const core::View& x, int64_t n, const core::View& out_1);

// dst = the dst.bytes() bytes at src_host; returns when the copy is done.
void copy_from_host(const core::View& dst, const void* src_host);
// The src.bytes() bytes of src to dst_host; waits for the work queued before it.
void copy_to_host(const core::View& src, void* dst_host);

// How many times the host has read dev's memory so far, process-wide: on CUDA every device ->
// host copy, each a host synchronisation (cuda::device_to_host_copies: copy_to_host, sum_squares,
// the SYNCS functions of cuda/moe.h); on the CPU the copy_to_host calls, so the CPU path shows
// the same reads the CUDA path would make. A training step makes one (train::StepResult).
int64_t host_reads(core::Device dev);

// Waits for all work queued on dev (nothing to wait for on the CPU).
void synchronize(core::Device dev);

}  // namespace deltatron::ops
