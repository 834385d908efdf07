// CUDA kernels of the token embedding lookup, the weighted bag of rows (the vision tower's
// interpolated position embedding) and their deterministic backward (see embedding.h).
//
// Forward: one block of 256 threads per token row; thread d copies columns d, d+256, ... of the
// table row to the fp32 output (coalesced; rows are independent, no sync). The bag forward is
// the same with each thread adding its columns of the B weighted rows in order, in fp32.
//
// Backward of both: the bag's N x B entries (n, b) are scattered like N * B looked-up rows, entry
// e = n B + b adding w[e] dx[n, :] to its table row (the lookup is B = 1 with w = 1, the same
// kernels instantiated without the weight):
// Backward, a pipeline of stream-ordered steps with no atomics:
//   1. keys[e] = ids[e] (or V for an id outside [0, V): sorts last and is skipped), vals[e] = e;
//   2. cub::DeviceRadixSort::SortPairs over the low bit_width(V) bits: stable, so within one id
//      the entries stay in ascending order -- the fixed summation order (rows n, then b, as the
//      CPU reference);
//   3. cub::DeviceRunLengthEncode::Encode -> distinct ids, run lengths, run count (device);
//      cub::DeviceScan::ExclusiveSum of the lengths -> run starts;
//   4. runs of at most kLong = 64 rows: embedding_bwd_short_kernel, one warp per (run, column
//      slice [128 s, 128 s + 128)) -- the warps stride over the run count, which only the device
//      knows; lane l owns columns l, l+32, l+64, l+96 of the slice (coalesced 128-byte loads)
//      and adds the run's rows in order (4 rows loaded ahead), then does dtable[id, col] += sum;
//   5. longer runs (a token repeated many times; at most N/65 of them), listed by
//      cub::DeviceSelect::Flagged: embedding_bwd_long_kernel, one block of 32 warps per (long
//      run, slice); warp w sums rows w, w+32, ... in order, the 32 warp partials meet in shared
//      memory (32 x 128 floats = 16 KiB) and thread j < 128 adds them in warp order.
//   Every dtable element has exactly one writer, and every sum a fixed order.
// Numerics: fp32 sums; the result depends only on the ids and dx (bitwise reproducible).
#include <algorithm>
#include <bit>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_run_length_encode.cuh>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_select.cuh>
#include <mutex>
#include <type_traits>

#include "core/error.h"
#include "cuda/embedding.h"
#include "cuda/kernel_util.cuh"

namespace deltatron::cuda {

namespace {

constexpr int kFwdThreads = 256;
constexpr int kSlice = 128;  // columns per backward warp task: 32 lanes x 4
constexpr int kPerLane = kSlice / 32;
constexpr int kBatch = 4;          // rows per warp loaded ahead in the backward
constexpr int kLong = 64;          // runs longer than this take the block kernel
constexpr int kShortWarps = 8;     // warps per block of the short-run kernel
constexpr int kShortBlocks = 256;  // blocks per column slice of the short-run kernel (at most)
constexpr int kLongWarps = 32;     // warps sharing one long run

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

template <typename T>
__global__ void __launch_bounds__(kFwdThreads)
    embedding_bag_fwd_kernel(const int32_t* __restrict__ idx, const float* __restrict__ w,
                             const T* __restrict__ table, int64_t B, int64_t V, int64_t D,
                             float* __restrict__ x, bool accumulate) {
  const int64_t n = blockIdx.x;
  float* row = x + n * D;
  for (int64_t d = threadIdx.x; d < D; d += kFwdThreads) {
    float s = accumulate ? row[d] : 0.f;
    for (int64_t b = 0; b < B; ++b) {
      const int32_t id = idx[n * B + b];
      if (id < 0 || id >= V) continue;  // the caller validates; never read outside the table
      s += w[n * B + b] * load_f32(table, int64_t(id) * D + d);
    }
    row[d] = s;
  }
}

__global__ void embedding_keys_kernel(const int32_t* __restrict__ ids, int64_t N, int64_t V,
                                      uint32_t* __restrict__ keys, int32_t* __restrict__ vals) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const int32_t id = ids[n];
  keys[n] = (id >= 0 && id < V) ? uint32_t(id) : uint32_t(V);
  vals[n] = int32_t(n);
}

// The weights of a bag's entries (kWeighted): entry e reads row e / B of dx, scaled by w[e].
struct BagWeights {
  const float* w;
  int64_t B;
};

// acc[j] += w_e dx[row(e), col0 + lane + 32 j] for the entries e = pos[k], k = first, first + step,
// ... < len, in this order (kWeighted false: row(e) = e, w_e = 1); kBatch rows are loaded before
// they are added so that several loads are in flight.
template <bool kWeighted>
__device__ __forceinline__ void add_rows(const int32_t* __restrict__ pos, int first, int len,
                                         int step, const float* __restrict__ dx, int64_t D,
                                         int64_t col0, int lane, float (&acc)[kPerLane],
                                         BagWeights bw) {
  int k = first;
  for (; k + (kBatch - 1) * step < len; k += kBatch * step) {
    float v[kBatch][kPerLane];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int64_t e = pos[k + b * step];
      const float* row = dx + (kWeighted ? e / bw.B : e) * D;
      const float we = kWeighted ? bw.w[e] : 1.f;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int64_t col = col0 + lane + 32 * j;
        v[b][j] = col < D ? (kWeighted ? we * row[col] : row[col]) : 0.f;
      }
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b)
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) acc[j] += v[b][j];
  }
  for (; k < len; k += step) {
    const int64_t e = pos[k];
    const float* row = dx + (kWeighted ? e / bw.B : e) * D;
    const float we = kWeighted ? bw.w[e] : 1.f;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int64_t col = col0 + lane + 32 * j;
      if (col < D) acc[j] += kWeighted ? we * row[col] : row[col];
    }
  }
}

template <bool kWeighted>
__global__ void __launch_bounds__(kShortWarps * 32)
    embedding_bwd_short_kernel(const uint32_t* __restrict__ run_id,
                               const int32_t* __restrict__ run_len,
                               const int32_t* __restrict__ run_start,
                               const int32_t* __restrict__ num_runs,
                               const int32_t* __restrict__ pos, const float* __restrict__ dx,
                               int64_t D, int64_t V, float* __restrict__ dtable, BagWeights bw) {
  const int runs = *num_runs;
  const int lane = threadIdx.x % 32;
  const int64_t col0 = int64_t(blockIdx.y) * kSlice;
  const int warps = gridDim.x * kShortWarps;
  for (int r = blockIdx.x * kShortWarps + threadIdx.x / 32; r < runs; r += warps) {
    const int len = run_len[r];
    const uint32_t id = run_id[r];
    if (len > kLong || id >= uint64_t(V)) continue;  // long runs; the invalid-id run
    float acc[kPerLane];
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) acc[j] = 0.f;
    add_rows<kWeighted>(pos + run_start[r], 0, len, 1, dx, D, col0, lane, acc, bw);
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int64_t col = col0 + lane + 32 * j;
      if (col < D) dtable[int64_t(id) * D + col] += acc[j];
    }
  }
}

__global__ void embedding_long_flags_kernel(const uint32_t* __restrict__ run_id,
                                            const int32_t* __restrict__ run_len,
                                            const int32_t* __restrict__ num_runs, int n, int64_t V,
                                            char* __restrict__ flags) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= n) return;
  flags[r] = r < *num_runs && run_len[r] > kLong && run_id[r] < uint64_t(V);
}

template <bool kWeighted>
__global__ void __launch_bounds__(kLongWarps * 32)
    embedding_bwd_long_kernel(const int32_t* __restrict__ long_runs,
                              const int32_t* __restrict__ num_long,
                              const uint32_t* __restrict__ run_id,
                              const int32_t* __restrict__ run_len,
                              const int32_t* __restrict__ run_start,
                              const int32_t* __restrict__ pos, const float* __restrict__ dx,
                              int64_t D, float* __restrict__ dtable, BagWeights bw) {
  if (int(blockIdx.x) >= *num_long) return;
  const int r = long_runs[blockIdx.x];
  const uint32_t id = run_id[r];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t col0 = int64_t(blockIdx.y) * kSlice;
  float acc[kPerLane];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) acc[j] = 0.f;
  add_rows<kWeighted>(pos + run_start[r], warp, run_len[r], kLongWarps, dx, D, col0, lane, acc, bw);
  __shared__ float part[kLongWarps][kSlice];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) part[warp][lane + 32 * j] = acc[j];
  __syncthreads();
  if (threadIdx.x < kSlice) {
    const int64_t col = col0 + threadIdx.x;
    if (col < D) {
      float s = part[0][threadIdx.x];
#pragma unroll
      for (int w = 1; w < kLongWarps; ++w) s += part[w][threadIdx.x];
      dtable[int64_t(id) * D + col] += s;
    }
  }
}

// Carves 256-byte aligned pieces out of one allocation.
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

namespace {

// The sorted scatter-add of both backwards: N entries (ids_N), entry e adding w[e] dx[e / B, :]
// (bw.w null: dx[e, :]) to dtable[ids[e], :].
void scatter_add_sorted(const char* op, const int32_t* ids_N, BagWeights bw, const float* dx_ND,
                        int64_t N, int64_t D, int64_t V, float* dtable_VD) {
  DT_CHECK(N >= 0 && V >= 0 && D >= 0, op, ": bad sizes N=", N, " V=", V, " D=", D);
  DT_CHECK(N < (int64_t(1) << 31) && V < (int64_t(1) << 31) && (D + kSlice - 1) / kSlice <= 65535,
           op, ": sizes too large (N=", N, " V=", V, " D=", D, ")");
  if (N == 0 || D == 0 || V == 0) return;
  const int n = int(N);
  const int end_bit = std::bit_width(uint32_t(V));  // keys are in [0, V]

  // Workspace sizes first (null temp pointers only query), then one allocation for everything.
  size_t sort_bytes = 0, rle_bytes = 0, scan_bytes = 0, select_bytes = 0;
  DT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, (const uint32_t*)nullptr,
                                                (uint32_t*)nullptr, (const int32_t*)nullptr,
                                                (int32_t*)nullptr, n, 0, end_bit, cudaStream_t(0)));
  DT_CUDA_CHECK(cub::DeviceRunLengthEncode::Encode(nullptr, rle_bytes, (const uint32_t*)nullptr,
                                                   (uint32_t*)nullptr, (int32_t*)nullptr,
                                                   (int32_t*)nullptr, n, cudaStream_t(0)));
  DT_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, (const int32_t*)nullptr,
                                              (int32_t*)nullptr, n, cudaStream_t(0)));
  DT_CUDA_CHECK(cub::DeviceSelect::Flagged(nullptr, select_bytes, (const int32_t*)nullptr,
                                           (const char*)nullptr, (int32_t*)nullptr,
                                           (int32_t*)nullptr, n, cudaStream_t(0)));
  const size_t temp_bytes = std::max({sort_bytes, rle_bytes, scan_bytes, select_bytes, size_t(1)});
  const size_t N_ = size_t(n);
  auto rounded = [](size_t b) { return (b + 255) / 256 * 256; };
  const size_t total = 8 * rounded(N_ * 4) + rounded(N_) + 2 * 256 + rounded(temp_bytes);
  static ScratchBuffer* scratch = new ScratchBuffer("embedding_bwd workspace");  // leaked
  Carver ws;
  ws.base = static_cast<char*>(scratch->get(total));
  uint32_t* keys_in = ws.take<uint32_t>(N_);
  uint32_t* keys = ws.take<uint32_t>(N_);
  int32_t* pos_in = ws.take<int32_t>(N_);  // 0..N-1, also the run indices to select from
  int32_t* pos = ws.take<int32_t>(N_);
  uint32_t* run_id = ws.take<uint32_t>(N_);
  int32_t* run_len = ws.take<int32_t>(N_);
  int32_t* run_start = ws.take<int32_t>(N_);
  int32_t* long_runs = ws.take<int32_t>(N_);
  char* flags = ws.take<char>(N_);
  int32_t* num_runs = ws.take<int32_t>(1);
  int32_t* num_long = ws.take<int32_t>(1);
  void* temp = ws.take<char>(temp_bytes);

  const unsigned blocks_n = unsigned((N + 255) / 256);
  embedding_keys_kernel<<<blocks_n, 256>>>(ids_N, N, V, keys_in, pos_in);
  DT_CUDA_LAUNCH_CHECK("embedding_keys_kernel");
  DT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, sort_bytes, keys_in, keys, pos_in, pos, n, 0,
                                                end_bit, cudaStream_t(0)));
  // Lengths past the run count stay zero, so the scan reads only initialised values.
  DT_CUDA_CHECK(cudaMemsetAsync(run_len, 0, N_ * sizeof(int32_t), 0));
  DT_CUDA_CHECK(cub::DeviceRunLengthEncode::Encode(temp, rle_bytes, keys, run_id, run_len, num_runs,
                                                   n, cudaStream_t(0)));
  DT_CUDA_CHECK(
      cub::DeviceScan::ExclusiveSum(temp, scan_bytes, run_len, run_start, n, cudaStream_t(0)));
  embedding_long_flags_kernel<<<blocks_n, 256>>>(run_id, run_len, num_runs, n, V, flags);
  DT_CUDA_LAUNCH_CHECK("embedding_long_flags_kernel");
  DT_CUDA_CHECK(cub::DeviceSelect::Flagged(temp, select_bytes, pos_in, flags, long_runs, num_long,
                                           n, cudaStream_t(0)));

  const unsigned slices = unsigned((D + kSlice - 1) / kSlice);
  const int short_blocks = std::min((n + kShortWarps - 1) / kShortWarps, kShortBlocks);
  const int max_long = std::max(1, n / (kLong + 1));
  auto launch = [&](auto weighted) {
    constexpr bool kW = decltype(weighted)::value;
    embedding_bwd_short_kernel<kW><<<dim3(unsigned(short_blocks), slices), kShortWarps * 32>>>(
        run_id, run_len, run_start, num_runs, pos, dx_ND, D, V, dtable_VD, bw);
    DT_CUDA_LAUNCH_CHECK("embedding_bwd_short_kernel");
    embedding_bwd_long_kernel<kW><<<dim3(unsigned(max_long), slices), kLongWarps * 32>>>(
        long_runs, num_long, run_id, run_len, run_start, pos, dx_ND, D, dtable_VD, bw);
    DT_CUDA_LAUNCH_CHECK("embedding_bwd_long_kernel");
  };
  if (bw.w)
    launch(std::true_type{});
  else
    launch(std::false_type{});
}

}  // namespace

void embedding_bwd(const int32_t* ids_N, const float* dx_ND, int64_t N, int64_t D, int64_t V,
                   float* dtable_VD) {
  scatter_add_sorted("cuda::embedding_bwd", ids_N, BagWeights{nullptr, 1}, dx_ND, N, D, V,
                     dtable_VD);
}

void embedding_bag_fwd(DType dt, const int32_t* idx_NB, const float* w_NB, const void* table_VD,
                       int64_t N, int64_t B, int64_t V, int64_t D, float* x_ND, bool accumulate) {
  DT_CHECK(N >= 0 && B >= 0 && V >= 0 && D >= 0, "cuda::embedding_bag_fwd: bad sizes N=", N,
           " B=", B, " V=", V, " D=", D);
  DT_CHECK(N < (int64_t(1) << 31), "cuda::embedding_bag_fwd: N=", N, " too large for the grid");
  if (N == 0 || D == 0) return;
  DT_DISPATCH_DTYPE(dt, T,
                    embedding_bag_fwd_kernel<T><<<unsigned(N), kFwdThreads>>>(
                        idx_NB, w_NB, static_cast<const T*>(table_VD), B, V, D, x_ND, accumulate));
  DT_CUDA_LAUNCH_CHECK("embedding_bag_fwd_kernel");
}

void embedding_bag_bwd(const int32_t* idx_NB, const float* w_NB, const float* dx_ND, int64_t N,
                       int64_t B, int64_t V, int64_t D, float* dtable_VD) {
  DT_CHECK(N >= 0 && B >= 1, "cuda::embedding_bag_bwd: bad sizes N=", N, " B=", B);
  scatter_add_sorted("cuda::embedding_bag_bwd", idx_NB, BagWeights{w_NB, B}, dx_ND, N * B, D, V,
                     dtable_VD);
}

}  // namespace deltatron::cuda
