// CUDA kernels of the token embedding lookup and its deterministic backward (see embedding.h).
//
// Forward: one block of 256 threads per token row; thread d copies columns d, d+256, ... of the
// table row to the fp32 output (coalesced; rows are independent, no sync).
//
// Backward, a pipeline of stream-ordered steps with no atomics:
//   1. keys[n] = ids[n] (or V for an id outside [0, V): sorts last and is skipped), vals[n] = n;
//   2. cub::DeviceRadixSort::SortPairs over the low bit_width(V) bits: stable, so within one id
//      the positions stay in ascending order -- the fixed summation order;
//   3. cub::DeviceRunLengthEncode::Encode -> distinct ids, run lengths, run count (device);
//      cub::DeviceScan::ExclusiveSum of the lengths -> run starts;
//   4. embedding_bwd_rows_kernel: block (b, s) owns the column slice [128 s, 128 s + 128) of
//      runs b, b + G, b + 2G, ... (G = min(N, 1024) blocks per slice: the run count is known
//      only on the device, so the blocks stride over it). Per run, warp w (of 8) sums rows
//      w, w+8, w+16, ... of the run in order (4 rows loaded ahead), lane l owning columns l,
//      l+32, l+64, l+96 of the slice (coalesced 128-byte loads); the 8 warp partials meet in
//      shared memory (8 x 128 floats = 4 KiB), thread j < 128 adds them in warp order and does
//      dtable[id, col] += sum (one writer per element). A long run of one repeated token is
//      spread over D/128 blocks x 8 warps.
// Numerics: fp32 sums; the result depends only on the ids and dx (bitwise reproducible).
#include "cuda/embedding.h"

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_run_length_encode.cuh>
#include <cub/device/device_scan.cuh>

#include <algorithm>
#include <bit>

#include "core/error.h"
#include "cuda/kernel_util.cuh"

namespace deltatron::cuda {

namespace {

constexpr int kFwdThreads = 256;
constexpr int kWarps = 8;                 // row streams per block in the backward
constexpr int kSlice = 128;               // columns per backward block: 32 lanes x 4
constexpr int kPerLane = kSlice / 32;
constexpr int kBatch = 4;                 // rows per warp loaded ahead in the backward
constexpr int kRunBlocks = 1024;          // blocks per column slice; each loops over runs

template <typename T>
__global__ void __launch_bounds__(kFwdThreads)
    embedding_fwd_kernel(const int32_t* __restrict__ ids, const T* __restrict__ table, int64_t V,
                         int64_t D, float* __restrict__ x) {
  const int64_t n = blockIdx.x;
  const int32_t id = ids[n];
  float* row = x + n * D;
  if (id < 0 || id >= V) {  // the caller validates; never read outside the table
    for (int64_t d = threadIdx.x; d < D; d += kFwdThreads) row[d] = 0.f;
    return;
  }
  const T* src = table + int64_t(id) * D;
#pragma unroll 4
  for (int64_t d = threadIdx.x; d < D; d += kFwdThreads) row[d] = load_f32(src, d);
}

__global__ void embedding_keys_kernel(const int32_t* __restrict__ ids, int64_t N, int64_t V,
                                      uint32_t* __restrict__ keys, int32_t* __restrict__ vals) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const int32_t id = ids[n];
  keys[n] = (id >= 0 && id < V) ? uint32_t(id) : uint32_t(V);
  vals[n] = int32_t(n);
}

__global__ void __launch_bounds__(kWarps * 32)
    embedding_bwd_rows_kernel(const uint32_t* __restrict__ run_id,
                              const int32_t* __restrict__ run_len,
                              const int32_t* __restrict__ run_start,
                              const int32_t* __restrict__ num_runs, const int32_t* __restrict__ pos,
                              const float* __restrict__ dx, int64_t D, int64_t V,
                              float* __restrict__ dtable) {
  __shared__ float part[kWarps][kSlice];
  const int runs = *num_runs;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t col0 = int64_t(blockIdx.y) * kSlice;
  for (int r = blockIdx.x; r < runs; r += gridDim.x) {
    const uint32_t id = run_id[r];
    if (id >= uint64_t(V)) continue;  // the invalid-id run (uniform over the block)
    const int start = run_start[r], len = run_len[r];
    float acc[kPerLane];
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) acc[j] = 0.f;
    // Rows k, k+8, k+16, ... in order; kBatch of them loaded before they are added, so a long
    // run keeps 16 loads per lane in flight (the adds keep the row order).
    int k = warp;
    for (; k + (kBatch - 1) * kWarps < len; k += kBatch * kWarps) {
      float v[kBatch][kPerLane];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const float* row = dx + int64_t(pos[start + k + b * kWarps]) * D;
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) {
          const int64_t col = col0 + lane + 32 * j;
          v[b][j] = col < D ? row[col] : 0.f;
        }
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b)
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) acc[j] += v[b][j];
    }
    for (; k < len; k += kWarps) {
      const float* row = dx + int64_t(pos[start + k]) * D;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int64_t col = col0 + lane + 32 * j;
        if (col < D) acc[j] += row[col];
      }
    }
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) part[warp][lane + 32 * j] = acc[j];
    __syncthreads();
    if (threadIdx.x < kSlice) {
      const int64_t col = col0 + threadIdx.x;
      if (col < D) {
        float s = part[0][threadIdx.x];
#pragma unroll
        for (int w = 1; w < kWarps; ++w) s += part[w][threadIdx.x];
        dtable[int64_t(id) * D + col] += s;
      }
    }
    __syncthreads();  // part is reused by the next run
  }
}

// Carves 256-byte aligned pieces out of one stream-ordered allocation.
struct Carver {
  char* base = nullptr;
  size_t used = 0;
  template <typename T>
  T* take(size_t count) {
    T* p = reinterpret_cast<T*>(base + used);
    used += (count * sizeof(T) + 255) / 256 * 256;
    return p;
  }
};

}  // namespace

void embedding_fwd(DType dt, const int32_t* ids_N, const void* table_VD, int64_t N, int64_t V,
                   int64_t D, float* x_ND) {
  DT_CHECK(N >= 0 && V >= 0 && D >= 0, "cuda::embedding_fwd: bad sizes N=", N, " V=", V, " D=", D);
  DT_CHECK(N < (int64_t(1) << 31), "cuda::embedding_fwd: N=", N, " too large for the grid");
  if (N == 0 || D == 0) return;
  DT_DISPATCH_DTYPE(dt, T,
                    embedding_fwd_kernel<T><<<unsigned(N), kFwdThreads>>>(
                        ids_N, static_cast<const T*>(table_VD), V, D, x_ND));
  DT_CUDA_LAUNCH_CHECK("embedding_fwd_kernel");
}

void embedding_bwd(const int32_t* ids_N, const float* dx_ND, int64_t N, int64_t D, int64_t V,
                   float* dtable_VD) {
  DT_CHECK(N >= 0 && V >= 0 && D >= 0, "cuda::embedding_bwd: bad sizes N=", N, " V=", V, " D=", D);
  DT_CHECK(N < (int64_t(1) << 31) && V < (int64_t(1) << 31) && (D + kSlice - 1) / kSlice <= 65535,
           "cuda::embedding_bwd: sizes too large (N=", N, " V=", V, " D=", D, ")");
  if (N == 0 || D == 0 || V == 0) return;
  const int n = int(N);
  const int end_bit = std::bit_width(uint32_t(V));  // keys are in [0, V]

  // Workspace sizes first (null temp pointers only query), then one allocation for everything.
  size_t sort_bytes = 0, rle_bytes = 0, scan_bytes = 0;
  DT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, (const uint32_t*)nullptr,
                                                (uint32_t*)nullptr, (const int32_t*)nullptr,
                                                (int32_t*)nullptr, n, 0, end_bit, cudaStream_t(0)));
  DT_CUDA_CHECK(cub::DeviceRunLengthEncode::Encode(nullptr, rle_bytes, (const uint32_t*)nullptr,
                                                   (uint32_t*)nullptr, (int32_t*)nullptr,
                                                   (int32_t*)nullptr, n, cudaStream_t(0)));
  DT_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, (const int32_t*)nullptr,
                                              (int32_t*)nullptr, n, cudaStream_t(0)));
  const size_t temp_bytes = std::max({sort_bytes, rle_bytes, scan_bytes, size_t(1)});
  const size_t N_ = size_t(n);
  const size_t total = 7 * ((N_ * 4 + 255) / 256 * 256) + 256 + (temp_bytes + 255) / 256 * 256;
  Carver ws;
  DT_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&ws.base), total, 0));
  uint32_t* keys_in = ws.take<uint32_t>(N_);
  uint32_t* keys = ws.take<uint32_t>(N_);
  int32_t* pos_in = ws.take<int32_t>(N_);
  int32_t* pos = ws.take<int32_t>(N_);
  uint32_t* run_id = ws.take<uint32_t>(N_);
  int32_t* run_len = ws.take<int32_t>(N_);
  int32_t* run_start = ws.take<int32_t>(N_);
  int32_t* num_runs = ws.take<int32_t>(1);
  void* temp = ws.take<char>(temp_bytes);

  embedding_keys_kernel<<<unsigned((N + 255) / 256), 256>>>(ids_N, N, V, keys_in, pos_in);
  DT_CUDA_LAUNCH_CHECK("embedding_keys_kernel");
  DT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, sort_bytes, keys_in, keys, pos_in, pos, n, 0,
                                                end_bit, cudaStream_t(0)));
  // Lengths past the run count stay zero, so the scan reads only initialised values.
  DT_CUDA_CHECK(cudaMemsetAsync(run_len, 0, N_ * sizeof(int32_t), 0));
  DT_CUDA_CHECK(cub::DeviceRunLengthEncode::Encode(temp, rle_bytes, keys, run_id, run_len,
                                                   num_runs, n, cudaStream_t(0)));
  DT_CUDA_CHECK(
      cub::DeviceScan::ExclusiveSum(temp, scan_bytes, run_len, run_start, n, cudaStream_t(0)));
  const dim3 grid(unsigned(std::min(n, kRunBlocks)), unsigned((D + kSlice - 1) / kSlice));
  embedding_bwd_rows_kernel<<<grid, kWarps * 32>>>(run_id, run_len, run_start, num_runs, pos,
                                                   dx_ND, D, V, dtable_VD);
  DT_CUDA_LAUNCH_CHECK("embedding_bwd_rows_kernel");
  DT_CUDA_CHECK(cudaFreeAsync(ws.base, 0));
}

}  // namespace deltatron::cuda
