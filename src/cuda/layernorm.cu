// CUDA LayerNorm kernels with weight and bias, fwd + bwd (contract in layernorm.h).
//
// Parallel mapping, forward and input gradient: one warp per row (8 rows per 256-thread block);
// lane l owns columns l, l + 32, ... and walks them once per pass (forward: mean, squared
// deviation, output; backward: the two row sums, output). A row is read 2-3 times, from L1/L2
// after the first pass (the tower's widths are 16..1152 columns: 4.6 KB per fp32 row). Row sums
// are lane partials then an xor butterfly, so every lane holds the same bits. No shared memory,
// no block-level sync.
// Weight and bias gradients: blocks of 128 threads own 128 consecutive columns (thread = column,
// coalesced row reads) and one part of rows_per_part consecutive rows, summed in row order into
// partial[part, column]; cuda::col_sum_add adds the parts in a fixed order. parts (<= 256) and
// rows_per_part depend only on N, so the result is bitwise reproducible; no atomics.
// Numerics: fp32; two-pass variance (no E[x^2] - mean^2 cancellation); rstd = 1 / sqrtf.
#include <algorithm>
#include <cstdint>

#include "core/error.h"
#include "cuda/kernel_util.cuh"
#include "cuda/layernorm.h"
#include "cuda/pointwise.h"

namespace deltatron::cuda {

namespace {

constexpr int kRowThreads = 256;  // 8 warps = 8 rows per block
constexpr int kRowsPerBlock = kRowThreads / 32;
constexpr int kColThreads = 128;      // columns per block of the weight-gradient pass
constexpr int64_t kMaxParts = 256;    // row parts of the weight-gradient pass
constexpr int64_t kMinPartRows = 64;  // rows per part before more parts are used

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <typename TX, typename T>
__global__ void __launch_bounds__(kRowThreads)
    layernorm_fwd_kernel(const TX* x, const T* w, const T* b, int64_t N, int64_t D, float eps, T* y,
                         float* mean, float* rstd) {
  const int64_t n = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (n >= N) return;  // whole warps
  const TX* xr = x + n * D;
  float s = 0.f;
  for (int64_t d = lane; d < D; d += 32) s += to_f32(xr[d]);
  const float mu = warp_sum(s) / float(D);
  float v = 0.f;
  for (int64_t d = lane; d < D; d += 32) {
    const float c = to_f32(xr[d]) - mu;
    v += c * c;
  }
  const float r = 1.f / sqrtf(warp_sum(v) / float(D) + eps);
  T* yr = y + n * D;
  for (int64_t d = lane; d < D; d += 32)
    yr[d] = from_f32<T>((to_f32(xr[d]) - mu) * r * to_f32(w[d]) + to_f32(b[d]));
  if (lane == 0) {
    mean[n] = mu;
    rstd[n] = r;
  }
}

// dx may alias dy (xt == dt): each element is read before it is written, by the same lane.
template <typename TX, typename T>
__global__ void __launch_bounds__(kRowThreads)
    layernorm_bwd_dx_kernel(const TX* x, const T* w, const float* mean, const float* rstd,
                            const T* dy, int64_t N, int64_t D, TX* dx, bool accumulate) {
  const int64_t n = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (n >= N) return;
  const TX* xr = x + n * D;
  const T* gr = dy + n * D;
  const float mu = mean[n], r = rstd[n];
  float sg = 0.f, sgx = 0.f;
  for (int64_t d = lane; d < D; d += 32) {
    const float g = to_f32(gr[d]) * to_f32(w[d]);
    sg += g;
    sgx += g * (to_f32(xr[d]) - mu) * r;
  }
  sg = warp_sum(sg) / float(D);
  sgx = warp_sum(sgx) / float(D);
  TX* out = dx + n * D;
  for (int64_t d = lane; d < D; d += 32) {
    const float xh = (to_f32(xr[d]) - mu) * r;
    const float v = r * (to_f32(gr[d]) * to_f32(w[d]) - sg - xh * sgx);
    out[d] = from_f32<TX>(accumulate ? to_f32(out[d]) + v : v);
  }
}

// part_w[part, c] = sum_{rows of part} dy xh;  part_b[part, c] = sum dy (either may be null).
template <typename TX, typename T>
__global__ void __launch_bounds__(kColThreads)
    layernorm_bwd_wb_kernel(const TX* x, const float* mean, const float* rstd, const T* dy,
                            int64_t N, int64_t D, int64_t rows_per_part, float* part_w,
                            float* part_b) {
  const int64_t c = int64_t(blockIdx.x) * kColThreads + threadIdx.x, part = blockIdx.y;
  if (c >= D) return;
  const int64_t r0 = part * rows_per_part, r1 = r0 + rows_per_part < N ? r0 + rows_per_part : N;
  float sw = 0.f, sb = 0.f;
  for (int64_t r = r0; r < r1; ++r) {
    const float g = to_f32(dy[r * D + c]);
    sb += g;
    sw += g * (to_f32(x[r * D + c]) - mean[r]) * rstd[r];
  }
  if (part_w) part_w[part * D + c] = sw;
  if (part_b) part_b[part * D + c] = sb;
}

float* partials(int64_t n) {
  static ScratchBuffer* s = new ScratchBuffer("layernorm weight-gradient partials");  // leaked
  return static_cast<float*>(s->get(size_t(n) * sizeof(float)));
}

void check_sizes(const char* op, int64_t N, int64_t D) {
  DT_CHECK(N >= 0 && D >= 1, op, ": bad sizes N=", N, " D=", D);
  DT_CHECK((N + kRowsPerBlock - 1) / kRowsPerBlock < (int64_t(1) << 31), op, ": N=", N,
           " too large for the grid");
}

// Dispatch over the two storage types (x's and the rest's).
#define DT_DISPATCH_LN(xt, TX, dt, T, ...) \
  DT_DISPATCH_DTYPE(xt, TX, DT_DISPATCH_DTYPE(dt, T, __VA_ARGS__))

}  // namespace

void layernorm_fwd(DType xt, const void* x_ND, DType dt, const void* w_D, const void* b_D,
                   int64_t N, int64_t D, double eps, void* y_ND, float* mean_N, float* rstd_N) {
  const char* op = "cuda::layernorm_fwd";
  check_sizes(op, N, D);
  if (N == 0) return;
  const unsigned blocks = unsigned((N + kRowsPerBlock - 1) / kRowsPerBlock);
  DT_DISPATCH_LN(xt, TX, dt, T,
                 layernorm_fwd_kernel<TX, T>
                 <<<blocks, kRowThreads>>>(static_cast<const TX*>(x_ND), static_cast<const T*>(w_D),
                                           static_cast<const T*>(b_D), N, D, float(eps),
                                           static_cast<T*>(y_ND), mean_N, rstd_N));
  DT_CUDA_LAUNCH_CHECK("layernorm_fwd_kernel");
}

void layernorm_bwd(DType xt, const void* x_ND, DType dt, const void* w_D, const float* mean_N,
                   const float* rstd_N, const void* dy_ND, int64_t N, int64_t D, void* dx_ND,
                   bool accumulate_dx, float* dw_D, float* db_D) {
  const char* op = "cuda::layernorm_bwd";
  check_sizes(op, N, D);
  if (N == 0) return;
  if (dx_ND) {
    const unsigned blocks = unsigned((N + kRowsPerBlock - 1) / kRowsPerBlock);
    DT_DISPATCH_LN(xt, TX, dt, T,
                   layernorm_bwd_dx_kernel<TX, T><<<blocks, kRowThreads>>>(
                       static_cast<const TX*>(x_ND), static_cast<const T*>(w_D), mean_N, rstd_N,
                       static_cast<const T*>(dy_ND), N, D, static_cast<TX*>(dx_ND), accumulate_dx));
    DT_CUDA_LAUNCH_CHECK("layernorm_bwd_dx_kernel");
  }
  if (!dw_D && !db_D) return;
  DT_CHECK((D + kColThreads - 1) / kColThreads < (int64_t(1) << 31), op, ": D=", D, " too large");
  const int64_t parts0 = std::clamp<int64_t>((N + kMinPartRows - 1) / kMinPartRows, 1, kMaxParts);
  const int64_t rows_per_part = (N + parts0 - 1) / parts0;
  const int64_t parts = (N + rows_per_part - 1) / rows_per_part;
  float* part = partials(2 * parts * D);
  float* part_w = dw_D ? part : nullptr;
  float* part_b = db_D ? part + parts * D : nullptr;
  const dim3 grid(unsigned((D + kColThreads - 1) / kColThreads), unsigned(parts));
  DT_DISPATCH_LN(xt, TX, dt, T,
                 layernorm_bwd_wb_kernel<TX, T><<<grid, kColThreads>>>(
                     static_cast<const TX*>(x_ND), mean_N, rstd_N, static_cast<const T*>(dy_ND), N,
                     D, rows_per_part, part_w, part_b));
  DT_CUDA_LAUNCH_CHECK("layernorm_bwd_wb_kernel");
  if (dw_D) col_sum_add(part_w, parts, D, dw_D);
  if (db_D) col_sum_add(part_b, parts, D, db_D);
}

}  // namespace deltatron::cuda
