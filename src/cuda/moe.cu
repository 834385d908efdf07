// CUDA kernels of the MoE op family (see moe.h; the CPU reference is cpu/moe.cpp).
//
// Parallel mappings:
//   router fwd/bwd, aux-loss fwd, expert-weight bwd: one warp per row (token or expert row);
//     lanes stride the row; sums are xor-butterfly warp reductions (every lane gets the same,
//     order-fixed value). Top-k: K passes, each a warp arg-max over the elements that come after
//     the previous pick in the total order (p descending, expert id ascending) -- no mask needed.
//   loss sums: per-token values in double, then one block sums them in a fixed tree.
//   permute: chunks of 256 slots (one block each): shared-memory expert histogram (integer
//     atomics: exact), then per expert an exclusive scan over the chunks (one block per expert),
//     a scan over the experts (one block), and the scatter, where a slot's rank is the number of
//     earlier slots of its chunk with the same expert (a 256-step shared-memory loop).
//   gather / combine / shared gate: one block per row, 16-byte vector accesses when every
//     pointer is 16-byte aligned and the row length is a multiple of the vector width.
// Numerics: fp32 (expf/logf, no fast math), double where cpu/moe.cpp uses double for a loss or a
// count. No float atomics anywhere, so every result is bitwise reproducible.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <cub/block/block_scan.cuh>
#include <mutex>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "cuda/kernel_util.cuh"
#include "cuda/memory.h"
#include "cuda/moe.h"

namespace deltatron::cuda {

namespace {

constexpr int kWarpsPerBlock = 8;              // row kernels: 8 warps = 8 rows per 256-thread block
constexpr int kChunk = 256;                    // permute: slots per chunk (= threads per block)
constexpr int64_t kMaxPermuteExperts = 12288;  // 48 KiB of int32 histogram in shared memory
constexpr int kMaxCombineK = 64;  // combine: a token's slots are sorted in shared memory

// ---- small device helpers -------------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
__device__ float block_sum(float v) {
  __shared__ float part[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // part[] may still be read by a previous call
  if (lane == 0) part[warp] = v;
  __syncthreads();
  float s = lane < nw ? part[lane] : 0.f;
  return warp_sum(s);
}

__device__ __forceinline__ float sigmoid_f(float x) {  // as cpu/activation.h
  if (x >= 0.f) return 1.f / (1.f + expf(-x));
  const float e = expf(x);
  return e / (1.f + e);
}

// 16-byte vectors of storage type T as fp32 arrays.
template <typename T>
constexpr int kVec = 16 / sizeof(T);

template <typename T>
__device__ __forceinline__ void load_vec(const T* p, float (&v)[kVec<T>]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < kVec<T>; ++i) v[i] = load_f32(e, i);
}
template <typename T>
__device__ __forceinline__ void store_vec(T* p, const float (&v)[kVec<T>]) {
  uint4 raw;
  T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int i = 0; i < kVec<T>; ++i) store_f32(e, i, v[i]);
  *reinterpret_cast<uint4*>(p) = raw;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// A counted device -> host copy (cuda/memory.h); waits for the queued work.
void copy_d2h(void* dst_host, const void* src, size_t bytes) {
  note_device_to_host_copy();
  DT_CUDA_CHECK(cudaMemcpy(dst_host, src, bytes, cudaMemcpyDeviceToHost));
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

unsigned row_blocks(int64_t rows) { return unsigned(ceil_div(rows, kWarpsPerBlock)); }

void check_router_dims(const char* op, int64_t N, int64_t E, int64_t K) {
  DT_CHECK(N >= 0 && E > 0 && K > 0 && K <= E, op, ": need N >= 0 and 0 < K <= E, got N=", N,
           " E=", E, " K=", K);
  DT_CHECK(E <= INT32_MAX && N * K <= INT32_MAX, op, ": N*K = ", N * K, " or E = ", E,
           " exceeds the int32 index range");
}

// ---- router ---------------------------------------------------------------------------------

__global__ void router_fwd_kernel(const float* __restrict__ logits, int64_t N, int E, int K,
                                  float* __restrict__ probs, float* __restrict__ lse_out,
                                  int32_t* __restrict__ idx_out, float* __restrict__ w_out,
                                  int32_t* bad) {
  const int lane = threadIdx.x & 31;
  const int64_t n = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (n >= N) return;
  const float* l = logits + n * E;
  float* p = probs + n * E;
  int32_t* idx = idx_out + n * K;
  float* w = w_out + n * K;
  float m = -INFINITY;
  bool finite = true;
  for (int e = lane; e < E; e += 32) {
    const float v = l[e];
    finite = finite && isfinite(v);
    m = fmaxf(m, v);
  }
  finite = __all_sync(0xffffffffu, finite);
  if (!finite) {  // as the CPU: zero row, experts 0..K-1, zero weights; reported via *bad
    for (int e = lane; e < E; e += 32) p[e] = 0.f;
    for (int j = lane; j < K; j += 32) idx[j] = j, w[j] = 0.f;
    if (lane == 0) {
      lse_out[n] = 0.f;
      if (bad) atomicMin(bad, int32_t(n));
    }
    return;
  }
  m = warp_max(m);
  float s = 0.f;
  for (int e = lane; e < E; e += 32) s += expf(l[e] - m);
  s = warp_sum(s);
  const float lse = m + logf(s);
  for (int e = lane; e < E; e += 32) p[e] = expf(l[e] - lse);
  if (lane == 0) lse_out[n] = lse;
  // Pick j: the largest (p, -e) strictly after pick j-1 in the order (p desc, e asc).
  float prev_p = INFINITY;
  int prev_e = -1;
  for (int j = 0; j < K; ++j) {
    float bp = -1.f;  // below every probability
    int be = INT_MAX;
    for (int e = lane; e < E; e += 32) {
      const float v = p[e];  // written by this lane above
      const bool after = v < prev_p || (v == prev_p && e > prev_e);
      if (after && (v > bp || (v == bp && e < be))) bp = v, be = e;
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bp, o);
      const int oe = __shfl_xor_sync(0xffffffffu, be, o);
      if (ov > bp || (ov == bp && oe < be)) bp = ov, be = oe;
    }
    prev_p = bp, prev_e = be;
    if (lane == 0) idx[j] = be, w[j] = bp;
  }
  if (lane == 0) {
    float sel = 0.f;
    for (int j = 0; j < K; ++j) sel += w[j];
    for (int j = 0; j < K; ++j) w[j] = w[j] / sel;
  }
}

__global__ void router_bwd_kernel(const float* __restrict__ probs, const int32_t* __restrict__ idx,
                                  const float* __restrict__ topk_w, const float* __restrict__ dw,
                                  const float* __restrict__ dprobs, const float* __restrict__ dlse,
                                  int64_t N, int E, int K, float* __restrict__ dlogits) {
  const int lane = threadIdx.x & 31;
  const int64_t n = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (n >= N) return;
  const float* p = probs + n * E;
  float* dl = dlogits + n * E;
  bool ok = true;
  for (int j = lane; j < K; j += 32) {
    const int e = idx[n * K + j];
    ok = ok && e >= 0 && e < E;
  }
  ok = __all_sync(0xffffffffu, ok);
  float a = 0.f;
  if (dprobs) {
    for (int e = lane; e < E; e += 32) a += p[e] * dprobs[n * E + e];
    a = warp_sum(a);
  }
  const float g_lse = dlse ? dlse[n] : 0.f;
  for (int e = lane; e < E; e += 32) {
    float v = dprobs ? p[e] * (dprobs[n * E + e] - a) : 0.f;
    if (dlse) v += g_lse * p[e];
    dl[e] = ok ? v : NAN;
  }
  if (!ok || !dw) return;
  float b = 0.f;
  for (int j = lane; j < K; j += 32) b += topk_w[n * K + j] * dw[n * K + j];
  b = warp_sum(b);
  __syncwarp();  // the row above is visible to every lane; the K experts are distinct
  for (int j = lane; j < K; j += 32) {
    const float wj = topk_w[n * K + j];
    dl[idx[n * K + j]] += wj * (dw[n * K + j] - b);
  }
}

// ---- router losses ----------------------------------------------------------------------------

__device__ __forceinline__ int32_t group_of(const int32_t* group, int64_t t) {
  return group ? group[t] : 0;
}

// contrib[t] = c_g sum_e F_ge p_te (double) for g = group[t] >= 0, else 0.
__global__ void aux_token_kernel(const float* __restrict__ probs, const int32_t* __restrict__ group,
                                 int64_t N, int E, int G, const double* __restrict__ F,
                                 const double* __restrict__ c, double* __restrict__ contrib,
                                 int32_t* bad) {
  const int lane = threadIdx.x & 31;
  const int64_t t = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (t >= N) return;
  const int32_t g = group_of(group, t);
  if (g < 0 || g >= G) {
    if (lane == 0) {
      contrib[t] = 0.0;
      if (g < -1 || g >= G) atomicMin(bad, int32_t(t));
    }
    return;
  }
  double acc = 0.0;
  for (int e = lane; e < E; e += 32) acc += F[int64_t(g) * E + e] * double(probs[t * E + e]);
  acc = warp_sum(acc);
  if (lane == 0) contrib[t] = c[g] * acc;
}

// contrib[t] = lse_t^2 (double) for counted tokens; group ids below -1 are reported.
__global__ void z_token_kernel(const float* __restrict__ lse, const int32_t* __restrict__ group,
                               int64_t N, double* __restrict__ contrib, int32_t* bad) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= N) return;
  const int32_t g = group_of(group, t);
  if (g < -1) atomicMin(bad, int32_t(t));
  contrib[t] = g >= 0 ? double(lse[t]) * double(lse[t]) : 0.0;
}

// *out = sum_i x[i]: thread i sums i, i + 1024, ... in order, then a fixed tree. One block.
constexpr int kSumThreads = 1024;
__global__ void sum_f64_kernel(const double* __restrict__ x, int64_t n, double* out) {
  __shared__ double part[kSumThreads];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kSumThreads) s += x[i];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int h = kSumThreads / 2; h > 0; h >>= 1) {
    if (int(threadIdx.x) < h) part[threadIdx.x] += part[threadIdx.x + h];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = part[0];
}

__global__ void aux_bwd_kernel(const int32_t* __restrict__ group, int64_t N, int E, int G,
                               const double* __restrict__ F, const double* __restrict__ c,
                               double scale, float* __restrict__ dprobs) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * E) return;
  const int64_t t = i / E;
  const int e = int(i - t * E);
  const int32_t g = group_of(group, t);
  float v = 0.f;
  if (g < -1 || g >= G)
    v = G == 0 ? 0.f : NAN;
  else if (g >= 0)
    v = float(scale * c[g] * F[int64_t(g) * E + e]);
  dprobs[i] = v;
}

__global__ void z_bwd_kernel(const float* __restrict__ lse, const int32_t* __restrict__ group,
                             int64_t N, double z_coef, double scale, float* __restrict__ dlse) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= N) return;
  const int32_t g = group_of(group, t);
  dlse[t] = g < -1 ? NAN : g >= 0 ? float(scale * 2.0 * z_coef * double(lse[t])) : 0.f;
}

// counts[g*E + e] += 1 per selection, tokens[g] += 1 per token (integer atomics: exact).
// bad[0] = smallest token with a bad group id, bad[1] = smallest token with a bad expert id.
__global__ void count_routes_kernel(const int32_t* __restrict__ idx,
                                    const int32_t* __restrict__ group, int64_t N, int K, int E,
                                    int G, unsigned long long* counts, unsigned long long* tokens,
                                    int32_t* bad) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= N) return;
  const int32_t g = group_of(group, t);
  if (g < -1 || g >= G) atomicMin(&bad[0], int32_t(t));
  bool experts_ok = true;
  for (int j = 0; j < K; ++j) {
    const int e = idx[t * K + j];
    experts_ok = experts_ok && e >= 0 && e < E;
  }
  if (!experts_ok) atomicMin(&bad[1], int32_t(t));
  if (g < 0 || g >= G || !experts_ok) return;
  atomicAdd(&tokens[g], 1ull);
  for (int j = 0; j < K; ++j) atomicAdd(&counts[int64_t(g) * E + idx[t * K + j]], 1ull);
}

// ---- permutation ----------------------------------------------------------------------------

// counts[c*E + e] = #{slots of chunk c routed to e}; bad = smallest slot with a bad expert id.
__global__ void permute_count_kernel(const int32_t* __restrict__ idx, int64_t P, int E,
                                     int32_t* __restrict__ counts, int32_t* bad) {
  extern __shared__ int32_t hist[];
  for (int e = threadIdx.x; e < E; e += kChunk) hist[e] = 0;
  __syncthreads();
  const int64_t i = int64_t(blockIdx.x) * kChunk + threadIdx.x;
  if (i < P) {
    const int e = idx[i];
    if (e >= 0 && e < E)
      atomicAdd(&hist[e], 1);
    else
      atomicMin(bad, int32_t(i));
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += kChunk) counts[int64_t(blockIdx.x) * E + e] = hist[e];
}

// Block e: base[c*E + e] = sum_{c' < c} counts[c'*E + e];  total[e] = the sum over all chunks.
__global__ void permute_chunk_scan_kernel(const int32_t* __restrict__ counts, int64_t chunks, int E,
                                          int32_t* __restrict__ base, int64_t* __restrict__ total) {
  using Scan = cub::BlockScan<int32_t, kChunk>;
  __shared__ typename Scan::TempStorage tmp;
  const int e = blockIdx.x;
  int32_t carry = 0;
  for (int64_t c0 = 0; c0 < chunks; c0 += kChunk) {
    const int64_t c = c0 + threadIdx.x;
    const int32_t v = c < chunks ? counts[c * E + e] : 0;
    int32_t ex, agg;
    Scan(tmp).ExclusiveSum(v, ex, agg);
    if (c < chunks) base[c * E + e] = carry + ex;
    carry += agg;
    __syncthreads();  // tmp is reused
  }
  if (threadIdx.x == 0) total[e] = carry;
}

// offsets[0] = 0, offsets[e+1] = offsets[e] + total[e] (one block). Host path: also copies the
// router's bad-token word next to the offsets so that one host copy brings everything back.
// Device path (flag_3 != nullptr): merges this call's smallest bad slot (*slot_bad) into the
// caller's flag, flag_3[1] = its token and flag_3[2] = its expert id when that token is smaller
// than the one recorded (one thread, in stream order: deterministic across layers).
__global__ void permute_offsets_kernel(const int64_t* __restrict__ total, int E,
                                       int64_t* __restrict__ offsets, const int32_t* router_bad,
                                       int32_t* router_bad_copy, const int32_t* slot_bad,
                                       const int32_t* idx, int K, int32_t* flag_3) {
  using Scan = cub::BlockScan<int64_t, kChunk>;
  __shared__ typename Scan::TempStorage tmp;
  int64_t carry = 0;
  for (int e0 = 0; e0 < E; e0 += kChunk) {
    const int e = e0 + threadIdx.x;
    const int64_t v = e < E ? total[e] : 0;
    int64_t ex, agg;
    Scan(tmp).ExclusiveSum(v, ex, agg);
    if (e < E) offsets[e] = carry + ex;
    carry += agg;
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    offsets[E] = carry;
    *router_bad_copy = router_bad ? *router_bad : kNoBadToken;
    const int32_t slot = *slot_bad;
    if (flag_3 && slot != kNoBadToken && slot / K < flag_3[1]) {
      flag_3[1] = slot / K;
      flag_3[2] = idx[slot];
    }
  }
}

// rows[offsets[e] + base[c][e] + rank] = slot, rank = #{earlier slots of the chunk with e}.
__global__ void permute_scatter_kernel(const int32_t* __restrict__ idx, int64_t P, int E,
                                       const int64_t* __restrict__ offsets,
                                       const int32_t* __restrict__ base, int32_t* __restrict__ rows,
                                       int32_t* __restrict__ pos) {
  __shared__ int32_t ex[kChunk];
  const int64_t i = int64_t(blockIdx.x) * kChunk + threadIdx.x;
  const int32_t e = i < P ? idx[i] : -1;
  ex[threadIdx.x] = e >= 0 && e < E ? e : -1;
  __syncthreads();
  if (i >= P || e < 0 || e >= E) return;
  int rank = 0;
  for (int k = 0; k < int(threadIdx.x); ++k) rank += ex[k] == e;
  const int64_t r = offsets[e] + base[int64_t(blockIdx.x) * E + e] + rank;
  rows[r] = int32_t(i);
  pos[i] = int32_t(r);
}

// ---- gather / combine / weights / shared gate -------------------------------------------------

// out[r,:] = s x[rows[r] / K, :]. One block per row; V = vector width (1: scalar path).
template <typename T, int V>
__global__ void gather_kernel(const T* __restrict__ x, const int32_t* __restrict__ rows,
                              const float* __restrict__ w, int K, int64_t D, T* __restrict__ out) {
  const int64_t r = blockIdx.x;
  const int32_t slot = rows[r];
  const T* src = x + int64_t(slot / K) * D;
  T* dst = out + r * D;
  const float s = w ? w[slot] : 1.f;
  if constexpr (V > 1) {
    for (int64_t d = int64_t(threadIdx.x) * V; d < D; d += int64_t(blockDim.x) * V) {
      float v[V];
      load_vec(src + d, v);
#pragma unroll
      for (int i = 0; i < V; ++i) v[i] *= s;
      store_vec(dst + d, v);
    }
  } else {
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) store_f32(dst, d, s * load_f32(src, d));
  }
}

// y[n,:] (=/+=) sum over the token's slots in ascending permuted row of s src[row,:].
template <typename TS, typename TY, int V>
__global__ void combine_kernel(const TS* __restrict__ src, const int32_t* __restrict__ pos,
                               const float* __restrict__ w, int K, int64_t D, TY* __restrict__ y,
                               bool accumulate) {
  __shared__ int32_t s_row[kMaxCombineK];
  __shared__ float s_w[kMaxCombineK];
  const int64_t n = blockIdx.x;
  if (threadIdx.x == 0) {  // insertion sort of the K (distinct) rows, weights alongside
    for (int j = 0; j < K; ++j) {
      const int32_t r = pos[n * K + j];
      const float wj = w ? w[n * K + j] : 1.f;
      int k = j;
      for (; k > 0 && s_row[k - 1] > r; --k) s_row[k] = s_row[k - 1], s_w[k] = s_w[k - 1];
      s_row[k] = r, s_w[k] = wj;
    }
  }
  __syncthreads();
  TY* yn = y + n * D;
  for (int64_t d = int64_t(threadIdx.x) * V; d < D; d += int64_t(blockDim.x) * V) {
    float acc[V];
#pragma unroll
    for (int i = 0; i < V; ++i) acc[i] = accumulate ? load_f32(yn, d + i) : 0.f;
    for (int j = 0; j < K; ++j) {
      const TS* s = src + int64_t(s_row[j]) * D + d;
      const float wj = s_w[j];
      if constexpr (V > 1) {
        float v[V];
        load_vec(s, v);
#pragma unroll
        for (int i = 0; i < V; ++i) acc[i] += wj * v[i];
      } else {
        acc[0] += wj * load_f32(s, 0);
      }
    }
#pragma unroll
    for (int i = 0; i < V; ++i) store_f32(yn, d + i, acc[i]);
  }
}

// dw[rows[r]] = g[r] . h[r];  dh[r] = w[rows[r]] g[r]. One warp per row; each lane reads and
// then writes only its own elements, so dh may alias g.
template <typename T>
__global__ void expert_weight_bwd_kernel(const T* __restrict__ h, const T* g,
                                         const int32_t* __restrict__ rows,
                                         const float* __restrict__ w, int64_t R, int64_t F,
                                         float* __restrict__ dw, T* dh) {
  const int lane = threadIdx.x & 31;
  const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (r >= R) return;
  const T* hr = h + r * F;
  const T* gr = g + r * F;
  float dot = 0.f;
  for (int64_t f = lane; f < F; f += 32) dot += load_f32(gr, f) * load_f32(hr, f);
  dot = warp_sum(dot);
  const int32_t slot = rows[r];
  const float ws = w[slot];
  for (int64_t f = lane; f < F; f += 32) store_f32(dh + r * F, f, ws * load_f32(gr, f));
  if (lane == 0) dw[slot] = dot;
}

// y[t,:] += o[t,:] sigmoid(g[t]). One block per token.
template <typename T, typename TY, int V>
__global__ void shared_gate_fwd_kernel(const T* __restrict__ o, const float* __restrict__ g,
                                       int64_t D, TY* __restrict__ y) {
  const int64_t t = blockIdx.x;
  const float s = sigmoid_f(g[t]);
  for (int64_t d = int64_t(threadIdx.x) * V; d < D; d += int64_t(blockDim.x) * V) {
    float v[V];
    if constexpr (V > 1)
      load_vec(o + t * D + d, v);
    else
      v[0] = load_f32(o, t * D + d);
#pragma unroll
    for (int i = 0; i < V; ++i) store_f32(y, t * D + d + i, load_f32(y, t * D + d + i) + v[i] * s);
  }
}

// do = dy s, dg = s (1 - s) sum_d dy o. One block per token; do may alias dy (each element is
// read and then written by the same thread).
template <typename T, int V>
__global__ void shared_gate_bwd_kernel(const T* __restrict__ o, const float* __restrict__ g,
                                       const T* dy, int64_t D, T* d_o, float* __restrict__ dg) {
  const int64_t t = blockIdx.x;
  const float s = sigmoid_f(g[t]);
  float dot = 0.f;
  for (int64_t d = int64_t(threadIdx.x) * V; d < D; d += int64_t(blockDim.x) * V) {
    float a[V], b[V];
    if constexpr (V > 1) {
      load_vec(dy + t * D + d, a);
      load_vec(o + t * D + d, b);
    } else {
      a[0] = load_f32(dy, t * D + d);
      b[0] = load_f32(o, t * D + d);
    }
#pragma unroll
    for (int i = 0; i < V; ++i) dot += a[i] * b[i], a[i] *= s;
    if constexpr (V > 1)
      store_vec(d_o + t * D + d, a);
    else
      store_f32(d_o, t * D + d, a[0]);
  }
  dot = block_sum(dot);
  if (threadIdx.x == 0) dg[t] = dot * s * (1.f - s);
}

constexpr int kRowThreads = 256;  // gather / combine / shared gate: threads per row block

}  // namespace

// ---- router ---------------------------------------------------------------------------------

void moe_router_fwd(const float* logits_NE, int64_t N, int64_t E, int64_t K, float* probs_NE,
                    float* lse_N, int32_t* topk_idx_NK, float* topk_w_NK, int32_t* bad_token_1) {
  check_router_dims("cuda::moe_router_fwd", N, E, K);
  if (N == 0) return;
  router_fwd_kernel<<<row_blocks(N), kWarpsPerBlock * 32>>>(
      logits_NE, N, int(E), int(K), probs_NE, lse_N, topk_idx_NK, topk_w_NK, bad_token_1);
  DT_CUDA_LAUNCH_CHECK("router_fwd_kernel");
}

void moe_router_bwd(const float* probs_NE, const int32_t* topk_idx_NK, const float* topk_w_NK,
                    const float* dw_NK, const float* dprobs_NE, const float* dlse_N, int64_t N,
                    int64_t E, int64_t K, float* dlogits_NE) {
  check_router_dims("cuda::moe_router_bwd", N, E, K);
  if (N == 0) return;
  router_bwd_kernel<<<row_blocks(N), kWarpsPerBlock * 32>>>(
      probs_NE, topk_idx_NK, topk_w_NK, dw_NK, dprobs_NE, dlse_N, N, int(E), int(K), dlogits_NE);
  DT_CUDA_LAUNCH_CHECK("router_bwd_kernel");
}

// ---- router losses ----------------------------------------------------------------------------

namespace {

ScratchBuffer& loss_scratch() {
  static ScratchBuffer* s =
      new ScratchBuffer("MoE router-loss scratch");  // leaked: no exit-order issues
  return *s;
}

// Runs the per-token kernel `launch(contrib, bad)`, sums contrib in a fixed tree and returns the
// sum and the bad-token word (SYNCS). `coef_bytes` of host data are staged first at `coef`.
template <typename Launch>
std::pair<double, int32_t> reduce_tokens(int64_t N, const std::vector<const void*>& host,
                                         const std::vector<size_t>& host_bytes,
                                         std::vector<void*>& staged, Launch launch) {
  ScratchBuffer& sc = loss_scratch();
  std::lock_guard<std::mutex> lock(sc.mu);
  Layout lay;
  const size_t o_res = lay.add(16), o_contrib = lay.add(size_t(N) * sizeof(double));
  std::vector<size_t> o_host;
  for (size_t b : host_bytes) o_host.push_back(lay.add(b));
  void* base = sc.get(lay.bytes);
  staged.clear();
  for (size_t i = 0; i < host.size(); ++i) {
    staged.push_back(at<char>(base, o_host[i]));
    if (host_bytes[i])
      DT_CUDA_CHECK(cudaMemcpyAsync(staged[i], host[i], host_bytes[i], cudaMemcpyHostToDevice, 0));
  }
  double* res = at<double>(base, o_res);
  int32_t* bad = at<int32_t>(base, o_res + 8);
  DT_CUDA_CHECK(cudaMemsetAsync(res, 0, 8, 0));
  DT_CUDA_CHECK(cudaMemsetAsync(bad, 0x7f, 4, 0));
  double* contrib = at<double>(base, o_contrib);
  if (N > 0) {
    launch(contrib, bad);
    sum_f64_kernel<<<1, kSumThreads>>>(contrib, N, res);
    DT_CUDA_LAUNCH_CHECK("sum_f64_kernel");
  }
  struct {
    double sum;
    int32_t bad;
  } out;
  static_assert(sizeof(out) == 16);
  copy_d2h(&out, res, 12);
  return {out.sum, out.bad};
}

}  // namespace

double moe_aux_loss_fwd(const float* probs_NE, const int32_t* group_N, int64_t N, int64_t E,
                        int64_t G, const double* F_GE_host, const double* c_G_host) {
  DT_CHECK(G >= 0, "cuda::moe_aux_loss_fwd: negative number of groups ", G);
  if (G == 0) return 0.0;
  DT_CHECK(N >= 0 && E > 0 && G <= INT32_MAX && N <= INT32_MAX,
           "cuda::moe_aux_loss_fwd: bad shape N=", N, " E=", E);
  std::vector<void*> st;
  auto [sum, bad] =
      reduce_tokens(N, {F_GE_host, c_G_host}, {size_t(G * E) * 8, size_t(G) * 8}, st,
                    [&](double* contrib, int32_t* badp) {
                      aux_token_kernel<<<row_blocks(N), kWarpsPerBlock * 32>>>(
                          probs_NE, group_N, N, int(E), int(G), static_cast<const double*>(st[0]),
                          static_cast<const double*>(st[1]), contrib, badp);
                      DT_CUDA_LAUNCH_CHECK("aux_token_kernel");
                    });
  if (bad != kNoBadToken) {
    int32_t g = 0;
    copy_d2h(&g, group_N + bad, 4);
    core::fail("moe_aux_loss_fwd: group id ", g, " of token ", bad, " is outside [-1, ", G, ")");
  }
  return sum;
}

void moe_aux_loss_bwd(const int32_t* group_N, int64_t N, int64_t E, int64_t G,
                      const double* F_GE_host, const double* c_G_host, double scale,
                      float* dprobs_NE) {
  DT_CHECK(G >= 0, "cuda::moe_aux_loss_bwd: negative number of groups ", G);
  DT_CHECK(N >= 0 && E > 0 && G <= INT32_MAX, "cuda::moe_aux_loss_bwd: bad shape N=", N, " E=", E);
  if (N == 0) return;
  ScratchBuffer& sc = loss_scratch();
  std::lock_guard<std::mutex> lock(sc.mu);
  Layout lay;
  const size_t oF = lay.add(size_t(G * E) * 8), oc = lay.add(size_t(G) * 8);
  void* base = sc.get(std::max<size_t>(lay.bytes, 16));
  if (G > 0) {
    DT_CUDA_CHECK(cudaMemcpyAsync(at<char>(base, oF), F_GE_host, size_t(G * E) * 8,
                                  cudaMemcpyHostToDevice, 0));
    DT_CUDA_CHECK(
        cudaMemcpyAsync(at<char>(base, oc), c_G_host, size_t(G) * 8, cudaMemcpyHostToDevice, 0));
  }
  const int64_t n = N * E;
  aux_bwd_kernel<<<unsigned(ceil_div(n, 256)), 256>>>(
      group_N, N, int(E), int(G), at<double>(base, oF), at<double>(base, oc), scale, dprobs_NE);
  DT_CUDA_LAUNCH_CHECK("aux_bwd_kernel");
}

double moe_z_loss_fwd(const float* lse_N, const int32_t* group_N, int64_t N, double z_coef) {
  DT_CHECK(N >= 0 && N <= INT32_MAX, "cuda::moe_z_loss_fwd: bad N=", N);
  std::vector<void*> st;
  auto [sum, bad] = reduce_tokens(N, {}, {}, st, [&](double* contrib, int32_t* badp) {
    z_token_kernel<<<unsigned(ceil_div(N, 256)), 256>>>(lse_N, group_N, N, contrib, badp);
    DT_CUDA_LAUNCH_CHECK("z_token_kernel");
  });
  if (bad != kNoBadToken) {
    int32_t g = 0;
    copy_d2h(&g, group_N + bad, 4);
    core::fail("moe_z_loss_fwd: group id ", g, " of token ", bad, " is outside [-1, -1)");
  }
  return z_coef * sum;
}

void moe_z_loss_bwd(const float* lse_N, const int32_t* group_N, int64_t N, double z_coef,
                    double scale, float* dlse_N) {
  DT_CHECK(N >= 0, "cuda::moe_z_loss_bwd: bad N=", N);
  if (N == 0) return;
  z_bwd_kernel<<<unsigned(ceil_div(N, 256)), 256>>>(lse_N, group_N, N, z_coef, scale, dlse_N);
  DT_CUDA_LAUNCH_CHECK("z_bwd_kernel");
}

void moe_count_routes_to_host(const int32_t* topk_idx_NK, const int32_t* group_N, int64_t N,
                              int64_t K, int64_t E, int64_t G, double* counts_GE_host,
                              double* tokens_G_host) {
  DT_CHECK(G > 0, "moe_count_routes: need at least one group, got ", G);
  DT_CHECK(N >= 0 && K > 0 && E > 0 && N * K <= INT32_MAX && G * E <= INT32_MAX,
           "cuda::moe_count_routes: bad shape N=", N, " K=", K, " E=", E, " G=", G);
  ScratchBuffer& sc = loss_scratch();
  std::lock_guard<std::mutex> lock(sc.mu);
  Layout lay;
  const size_t o_bad = lay.add(8), o_tok = lay.add(size_t(G) * 8),
               o_cnt = lay.add(size_t(G * E) * 8);
  void* base = sc.get(lay.bytes);
  DT_CUDA_CHECK(cudaMemsetAsync(base, 0, lay.bytes, 0));
  DT_CUDA_CHECK(cudaMemsetAsync(base, 0x7f, 8, 0));
  if (N > 0) {
    count_routes_kernel<<<unsigned(ceil_div(N, 256)), 256>>>(
        topk_idx_NK, group_N, N, int(K), int(E), int(G), at<unsigned long long>(base, o_cnt),
        at<unsigned long long>(base, o_tok), at<int32_t>(base, o_bad));
    DT_CUDA_LAUNCH_CHECK("count_routes_kernel");
  }
  std::vector<unsigned long long> host(lay.bytes / 8);
  copy_d2h(host.data(), base, lay.bytes);
  int32_t bad[2];
  std::memcpy(bad, host.data(), 8);
  if (bad[0] != kNoBadToken) {
    int32_t g = 0;
    copy_d2h(&g, group_N + bad[0], 4);
    core::fail("moe_count_routes: group id ", g, " of token ", bad[0], " is outside [-1, ", G, ")");
  }
  if (bad[1] != kNoBadToken) {
    std::vector<int32_t> ids(K);
    copy_d2h(ids.data(), topk_idx_NK + int64_t(bad[1]) * K, K * 4);
    int32_t e = ids[0];
    for (int32_t v : ids)
      if (v < 0 || v >= E) e = v;
    core::fail("moe_count_routes: expert id ", e, " of token ", bad[1], " is outside [0, ", E, ")");
  }
  const unsigned long long* tok = host.data() + o_tok / 8;
  const unsigned long long* cnt = host.data() + o_cnt / 8;
  for (int64_t g = 0; g < G; ++g) tokens_G_host[g] += double(tok[g]);
  for (int64_t i = 0; i < G * E; ++i) counts_GE_host[i] += double(cnt[i]);
}

// ---- permutation ----------------------------------------------------------------------------

void moe_permute(const int32_t* topk_idx_NK, int64_t N, int64_t K, int64_t E, int32_t* bad_3,
                 int64_t* offsets_E1, int64_t* offsets_E1_host, int32_t* rows_P, int32_t* pos_NK) {
  check_router_dims("cuda::moe_permute", N, E, K);
  DT_CHECK(E <= kMaxPermuteExperts, "cuda::moe_permute: at most ", kMaxPermuteExperts,
           " experts, got ", E);
  const bool to_host = offsets_E1_host != nullptr;
  DT_CHECK(to_host || (offsets_E1 && bad_3),
           "cuda::moe_permute: without offsets_E1_host, offsets_E1 and bad_3 are required");
  static ScratchBuffer* scratch = new ScratchBuffer("MoE permute scratch");
  std::lock_guard<std::mutex> lock(scratch->mu);
  const int64_t P = N * K, chunks = ceil_div(P, kChunk);
  Layout lay;
  const size_t o_off = lay.add(size_t(E + 1) * 8), o_bad = lay.add(8),
               o_tot = lay.add(size_t(E) * 8), o_cnt = lay.add(size_t(chunks * E) * 4),
               o_base = lay.add(size_t(chunks * E) * 4);
  void* base = scratch->get(lay.bytes);
  int64_t* off = at<int64_t>(base, o_off);
  int32_t* bad = at<int32_t>(base, o_bad);  // [0] bad expert slot, [1] router's bad token
  DT_CUDA_CHECK(cudaMemsetAsync(bad, 0x7f, 8, 0));
  if (!to_host && P > 0) {  // a slot with a bad expert id is not placed: keep its row in range
    DT_CUDA_CHECK(cudaMemsetAsync(rows_P, 0, size_t(P) * 4, 0));
    DT_CUDA_CHECK(cudaMemsetAsync(pos_NK, 0, size_t(P) * 4, 0));
  }
  if (P > 0) {
    permute_count_kernel<<<unsigned(chunks), kChunk, size_t(E) * 4>>>(
        topk_idx_NK, P, int(E), at<int32_t>(base, o_cnt), bad);
    DT_CUDA_LAUNCH_CHECK("permute_count_kernel");
    permute_chunk_scan_kernel<<<unsigned(E), kChunk>>>(at<int32_t>(base, o_cnt), chunks, int(E),
                                                       at<int32_t>(base, o_base),
                                                       at<int64_t>(base, o_tot));
    DT_CUDA_LAUNCH_CHECK("permute_chunk_scan_kernel");
  } else {
    DT_CUDA_CHECK(cudaMemsetAsync(at<int64_t>(base, o_tot), 0, size_t(E) * 8, 0));
  }
  permute_offsets_kernel<<<1, kChunk>>>(at<int64_t>(base, o_tot), int(E), off, bad_3, bad + 1, bad,
                                        topk_idx_NK, int(K), to_host ? nullptr : bad_3);
  DT_CUDA_LAUNCH_CHECK("permute_offsets_kernel");
  if (P > 0) {
    permute_scatter_kernel<<<unsigned(chunks), kChunk>>>(topk_idx_NK, P, int(E), off,
                                                         at<int32_t>(base, o_base), rows_P, pos_NK);
    DT_CUDA_LAUNCH_CHECK("permute_scatter_kernel");
  }
  if (offsets_E1)
    DT_CUDA_CHECK(cudaMemcpyAsync(offsets_E1, off, size_t(E + 1) * 8, cudaMemcpyDeviceToDevice, 0));
  if (!to_host) return;
  std::vector<int64_t> host((o_bad + 8) / 8);  // the offsets, then the two bad words
  copy_d2h(host.data(), off, o_bad + 8);
  int32_t bads[2];
  std::memcpy(bads, reinterpret_cast<const char*>(host.data()) + o_bad, 8);
  if (bads[1] != kNoBadToken)
    core::fail("moe_router_fwd: router logits of token ", bads[1], " are not finite");
  if (bads[0] != kNoBadToken) {
    int32_t e = 0;
    copy_d2h(&e, topk_idx_NK + bads[0], 4);
    core::fail("moe_permute: expert id ", e, " of token ", bads[0] / K, " is outside [0, ", E, ")");
  }
  std::copy(host.begin(), host.begin() + E + 1, offsets_E1_host);
}

// ---- gather / combine / weights / shared gate -------------------------------------------------

void moe_gather(DType dt, const void* x_ND, const int32_t* rows_R, const float* w_NK, int64_t R,
                int64_t K, int64_t D, void* out_RD) {
  DT_CHECK(R >= 0 && K > 0 && D >= 0 && R <= INT32_MAX, "cuda::moe_gather: bad shape R=", R,
           " K=", K, " D=", D);
  if (R == 0 || D == 0) return;
  DT_DISPATCH_DTYPE(dt, T, {
    const T* x = static_cast<const T*>(x_ND);
    T* out = static_cast<T*>(out_RD);
    if (D % kVec<T> == 0 && aligned16(x) && aligned16(out))
      gather_kernel<T, kVec<T>><<<unsigned(R), kRowThreads>>>(x, rows_R, w_NK, int(K), D, out);
    else
      gather_kernel<T, 1><<<unsigned(R), kRowThreads>>>(x, rows_R, w_NK, int(K), D, out);
  });
  DT_CUDA_LAUNCH_CHECK("gather_kernel");
}

void moe_scatter_add(DType dt_src, const void* src_PD, const int32_t* pos_NK, const float* w_NK,
                     int64_t N, int64_t K, int64_t D, DType dt_y, void* y_ND, bool accumulate) {
  DT_CHECK(N >= 0 && K > 0 && D >= 0 && N <= INT32_MAX && K <= kMaxCombineK,
           "cuda::moe_scatter_add: bad shape N=", N, " K=", K, " (at most ", kMaxCombineK,
           ") D=", D);
  if (N == 0 || D == 0) return;
  DT_DISPATCH_DTYPE(dt_src, TS, {
    DT_DISPATCH_DTYPE(dt_y, TY, {
      const TS* src = static_cast<const TS*>(src_PD);
      TY* y = static_cast<TY*>(y_ND);
      if (D % kVec<TS> == 0 && aligned16(src))
        combine_kernel<TS, TY, kVec<TS>>
            <<<unsigned(N), kRowThreads>>>(src, pos_NK, w_NK, int(K), D, y, accumulate);
      else
        combine_kernel<TS, TY, 1>
            <<<unsigned(N), kRowThreads>>>(src, pos_NK, w_NK, int(K), D, y, accumulate);
    });
  });
  DT_CUDA_LAUNCH_CHECK("combine_kernel");
}

void moe_expert_weight_bwd(DType dt, const void* h_RF, const void* g_RF, const int32_t* rows_R,
                           const float* w_NK, int64_t R, int64_t K, int64_t F, float* dw_NK,
                           void* dh_RF) {
  DT_CHECK(R >= 0 && F >= 0 && K > 0, "cuda::moe_expert_weight_bwd: bad shape R=", R, " F=", F);
  if (R == 0) return;
  DT_DISPATCH_DTYPE(dt, T, {
    expert_weight_bwd_kernel<T><<<row_blocks(R), kWarpsPerBlock * 32>>>(
        static_cast<const T*>(h_RF), static_cast<const T*>(g_RF), rows_R, w_NK, R, F, dw_NK,
        static_cast<T*>(dh_RF));
  });
  DT_CUDA_LAUNCH_CHECK("expert_weight_bwd_kernel");
}

void moe_shared_gate_fwd(DType dt, const void* o_ND, const float* g_N, int64_t N, int64_t D,
                         DType dt_y, void* y_ND) {
  DT_CHECK(N >= 0 && D >= 0 && N <= INT32_MAX, "cuda::moe_shared_gate_fwd: bad shape N=", N,
           " D=", D);
  if (N == 0 || D == 0) return;
  DT_DISPATCH_DTYPE(dt, T, {
    DT_DISPATCH_DTYPE(dt_y, TY, {
      const T* o = static_cast<const T*>(o_ND);
      TY* y = static_cast<TY*>(y_ND);
      if (D % kVec<T> == 0 && aligned16(o))
        shared_gate_fwd_kernel<T, TY, kVec<T>><<<unsigned(N), kRowThreads>>>(o, g_N, D, y);
      else
        shared_gate_fwd_kernel<T, TY, 1><<<unsigned(N), kRowThreads>>>(o, g_N, D, y);
    });
  });
  DT_CUDA_LAUNCH_CHECK("shared_gate_fwd_kernel");
}

void moe_shared_gate_bwd(DType dt, const void* o_ND, const float* g_N, const void* dy_ND, int64_t N,
                         int64_t D, void* do_ND, float* dg_N) {
  DT_CHECK(N >= 0 && D >= 0 && N <= INT32_MAX, "cuda::moe_shared_gate_bwd: bad shape N=", N,
           " D=", D);
  if (N == 0) return;
  DT_DISPATCH_DTYPE(dt, T, {
    const T* o = static_cast<const T*>(o_ND);
    const T* dy = static_cast<const T*>(dy_ND);
    T* d_o = static_cast<T*>(do_ND);
    if (D % kVec<T> == 0 && aligned16(o) && aligned16(dy) && aligned16(d_o))
      shared_gate_bwd_kernel<T, kVec<T>><<<unsigned(N), kRowThreads>>>(o, g_N, dy, D, d_o, dg_N);
    else
      shared_gate_bwd_kernel<T, 1><<<unsigned(N), kRowThreads>>>(o, g_N, dy, D, d_o, dg_N);
  });
  DT_CUDA_LAUNCH_CHECK("shared_gate_bwd_kernel");
}

}  // namespace deltatron::cuda
