// CUDA RMSNorm, gated RMSNorm and L2 norm kernels, fwd + bwd (contracts in norms.h).
//
// Parallel mapping ("row teams"): a row of D values is owned by a team of `team` threads (a power
// of two, 1..512). Lane l of a team owns the V-wide column chunks l, l + team, l + 2 team, ...:
// at most KMAX = CAP / V chunks, i.e. at most CAP values per thread (CAP = 8, or 16 when D needs
// more than 512 x 8), kept in registers between the row statistic and the output, so every row
// is read from memory once.
//   team <= 32: blocks of 256 threads hold 256 / team teams (rows) side by side inside warps;
//     row sums are xor-shuffles within the team.
//   team > 32: the block is one team (blockDim = team); row sums are warp shuffles, then the
//     warp sums in shared memory (32 floats), then every thread adds them in warp order.
//   A xor butterfly gives every lane the same bits (a + b == b + a), so all threads agree on r.
// Team size: the smallest power of two with ceil(D / V) / team <= KMAX, e.g. bf16 with V = 8:
// D = 128 -> 16-thread teams, D = 256 -> warps, D = 2048 -> 256-thread blocks; 512 threads x 16
// values bound D <= 8192.
// Vector width V: 16-byte accesses of the widest storage type involved (V = 8 when every tensor
// is bf16, 4 when one is fp32) if D % V == 0 and every pointer is aligned for it; else 8-byte
// bf16 accesses (V = 4) if those fit; else V = 1.
// Rows: block b walks the contiguous rows [b * rows_per_part, (b + 1) * rows_per_part). Every
// thread of a block runs the same number of iterations (rows past the end are masked, not
// skipped), so shuffles and __syncthreads see all threads.
// Weight gradients (no float atomics): each thread adds its columns' terms over the block's rows
// (in registers; the gated backward, short of registers, in its team's row of shared memory);
// at the end the block adds its teams' sums in team order (shared memory: rows_per_block x D
// floats, <= 8 KiB for teams <= 32, <= 32 KiB for one team per block) into partial[b, :], and
// col_sum_add (pointwise.cu) sums the parts in a fixed order. The number of parts depends only
// on N and D (max_parts), so results are bitwise reproducible.
// Numerics: fp32 everywhere; r = rsqrtf(mean + eps); silu/sigmoid with expf.
#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <mutex>
#include <type_traits>
#include <utility>

#include "core/error.h"
#include "cuda/kernel_util.cuh"
#include "cuda/norms.h"
#include "cuda/pointwise.h"

namespace deltatron::cuda {

namespace {

constexpr int kBlock = 256;       // threads per block when teams have <= 32 threads
constexpr int kMaxThreads = 512;  // largest team (block)
constexpr int64_t kMaxD = 8192;   // kMaxThreads threads x 16 register values
// Row parts (blocks) of a weight-gradient pass: enough blocks to fill the GPU (8 per SM on 132
// SMs) while the partials (parts x D floats) stay small next to the pass's own traffic.
int64_t max_parts(int64_t D) { return D <= 512 ? 1024 : 512; }

// ---- device helpers ------------------------------------------------------------------------

// Sum of v over the team (result identical in every thread of it). `red`: 32 shared floats.
__device__ __forceinline__ float team_sum(float v, int team, float* red) {
  const int width = team < 32 ? team : 32;
  for (int o = width / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (team <= 32) return v;
  __syncthreads();  // readers of the previous call are done with red
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  float s = 0.0f;
  for (int w = 0; w < team / 32; ++w) s += red[w];
  return s;
}

// A thread's place: lane in its team, team index in the block, row range of the block.
struct RowCursor {
  int lane, team_idx, rows_per_block;
  int64_t begin, end;
  __device__ RowCursor(int team, int64_t N, int64_t rows_per_part) {
    lane = threadIdx.x & (team - 1);
    team_idx = threadIdx.x / team;
    rows_per_block = blockDim.x / team;
    begin = int64_t(blockIdx.x) * rows_per_part;
    end = begin + rows_per_part < N ? begin + rows_per_part : N;
  }
};

// Column of chunk k of this lane.
__device__ __forceinline__ int chunk_col(int k, int team, int lane, int V) {
  return (k * team + lane) * V;
}

// This lane's chunks of row n of a row-major [*, D] tensor into v, as fp32; chunks past D, and
// every chunk when !valid, are left as they are (callers zero-initialise v).
template <int V, int KMAX, typename T>
__device__ __forceinline__ void load_row(const T* p, int64_t n, int D, bool valid, int team,
                                         int lane, float (&v)[KMAX][V]) {
#pragma unroll
  for (int k = 0; k < KMAX; ++k) {
    const int c = chunk_col(k, team, lane, V);
    if (valid && c < D) load_vec<V>(p + n * D + c, v[k]);
  }
}

// The weight of this lane's columns (kPlusOne: 1 + w, Qwen3.5's RMSNorm scale) into the
// zero-initialised v.
template <bool kPlusOne, int V, int KMAX, typename T>
__device__ __forceinline__ void load_weight(const T* w, int D, int team, int lane,
                                            float (&v)[KMAX][V]) {
#pragma unroll
  for (int k = 0; k < KMAX; ++k) {
    const int c = chunk_col(k, team, lane, V);
    if (c < D) {
      load_vec<V>(w + c, v[k]);
      if constexpr (kPlusOne) {
#pragma unroll
        for (int i = 0; i < V; ++i) v[k][i] += 1.0f;
      }
    }
  }
}

// Sum over this lane's values of a * b, chunk by chunk in order.
template <int V, int KMAX>
__device__ __forceinline__ float lane_dot(const float (&a)[KMAX][V], const float (&b)[KMAX][V]) {
  float s = 0.0f;
#pragma unroll
  for (int k = 0; k < KMAX; ++k)
#pragma unroll
    for (int i = 0; i < V; ++i) s += a[k][i] * b[k][i];
  return s;
}

// part[blockIdx.x, c] = sum over the block's teams t (in order) of sbuf[t, c].
__device__ void reduce_partials(const RowCursor& rc, int D, const float* sbuf, float* part) {
  __syncthreads();
  for (int c = threadIdx.x; c < D; c += blockDim.x) {
    float s = 0.0f;
    for (int t = 0; t < rc.rows_per_block; ++t) s += sbuf[t * D + c];
    part[int64_t(blockIdx.x) * D + c] = s;
  }
}

// Teams of the block add their per-column sums acc (team order) into part[blockIdx.x, :].
template <int V, int KMAX>
__device__ void write_partials(const float (&acc)[KMAX][V], const RowCursor& rc, int team, int D,
                               float* sbuf, float* part) {
#pragma unroll
  for (int k = 0; k < KMAX; ++k) {
    const int c = chunk_col(k, team, rc.lane, V);
    if (c < D) {
#pragma unroll
      for (int i = 0; i < V; ++i) sbuf[rc.team_idx * D + c + i] = acc[k][i];
    }
  }
  reduce_partials(rc, D, sbuf, part);
}

// ---- kernels -------------------------------------------------------------------------------

template <typename TX, typename T, int V, int CAP>
__global__ void __launch_bounds__(kMaxThreads)
    rmsnorm_fwd_kernel(const TX* x, const T* w, int64_t N, int D, float eps, int team,
                       int64_t rows_per_part, T* y, float* rstd, TX* x_copy) {
  constexpr int KMAX = CAP / V;
  __shared__ float red[32];
  const RowCursor rc(team, N, rows_per_part);
  float w1[KMAX][V] = {};  // 1 + w of this thread's columns
  load_weight<true>(w, D, team, rc.lane, w1);
  for (int64_t base = rc.begin; base < rc.end; base += rc.rows_per_block) {
    const int64_t n = base + rc.team_idx;
    const bool valid = n < rc.end;
    float xv[KMAX][V] = {};
    load_row(x, n, D, valid, team, rc.lane, xv);
    const float ss = team_sum(lane_dot(xv, xv), team, red);
    const float r = rsqrtf(ss / float(D) + eps);
    if (!valid) continue;  // after the last collective of the iteration
    if (rc.lane == 0) rstd[n] = r;
#pragma unroll
    for (int k = 0; k < KMAX; ++k) {
      const int c = chunk_col(k, team, rc.lane, V);
      if (c >= D) continue;
      float o[V];
#pragma unroll
      for (int i = 0; i < V; ++i) o[i] = xv[k][i] * r * w1[k][i];
      store_vec<V>(y + n * D + c, o);
      if (x_copy) store_vec<V>(x_copy + n * D + c, xv[k]);  // x as read: exact in TX
    }
  }
}

// part == nullptr skips the weight gradient.
template <typename TX, typename T, int V, int CAP>
__global__ void __launch_bounds__(kMaxThreads)
    rmsnorm_bwd_kernel(const TX* x, const T* w, const float* rstd, const T* dy, int64_t N, int D,
                       int team, int64_t rows_per_part, TX* dx, bool accumulate, float* part,
                       T* dx_cast) {
  constexpr int KMAX = CAP / V;
  extern __shared__ float sbuf[];
  __shared__ float red[32];
  const RowCursor rc(team, N, rows_per_part);
  float w1[KMAX][V] = {}, acc[KMAX][V] = {};
  load_weight<true>(w, D, team, rc.lane, w1);
  for (int64_t base = rc.begin; base < rc.end; base += rc.rows_per_block) {
    const int64_t n = base + rc.team_idx;
    const bool valid = n < rc.end;
    float xv[KMAX][V] = {}, gv[KMAX][V] = {};
    load_row(x, n, D, valid, team, rc.lane, xv);
    load_row(dy, n, D, valid, team, rc.lane, gv);
    float gx = 0.0f;
#pragma unroll
    for (int k = 0; k < KMAX; ++k)
#pragma unroll
      for (int i = 0; i < V; ++i) gx += gv[k][i] * w1[k][i] * xv[k][i];
    gx = team_sum(gx, team, red);
    if (!valid) continue;
    const float r = rstd[n];
    const float cr = r * r * r * gx / float(D);
#pragma unroll
    for (int k = 0; k < KMAX; ++k) {
      const int c = chunk_col(k, team, rc.lane, V);
      if (c >= D) continue;
      float o[V];
      if (accumulate) load_vec<V>(dx + n * D + c, o);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float v = r * gv[k][i] * w1[k][i] - cr * xv[k][i];
        o[i] = accumulate ? o[i] + v : v;
        acc[k][i] += gv[k][i] * xv[k][i] * r;
      }
      store_vec<V>(dx + n * D + c, o);
      if (dx_cast) {  // dx rounded to T from its stored value (ops::cast of dx)
        if constexpr (!std::is_same_v<TX, float>) load_vec<V>(dx + n * D + c, o);
        store_vec<V>(dx_cast + n * D + c, o);
      }
    }
  }
  if (part) write_partials<V, KMAX>(acc, rc, team, D, sbuf, part);
}

template <typename T, int V, int CAP>
__global__ void __launch_bounds__(kMaxThreads)
    rmsnorm_gated_fwd_kernel(const T* x, const T* z, const T* w, int64_t N, int D, float eps,
                             int team, int64_t rows_per_part, T* y, float* rstd) {
  constexpr int KMAX = CAP / V;
  __shared__ float red[32];
  const RowCursor rc(team, N, rows_per_part);
  float wv[KMAX][V] = {};
  load_weight<false>(w, D, team, rc.lane, wv);
  for (int64_t base = rc.begin; base < rc.end; base += rc.rows_per_block) {
    const int64_t n = base + rc.team_idx;
    const bool valid = n < rc.end;
    float xv[KMAX][V] = {}, zv[KMAX][V] = {};  // z loaded with x: twice the bytes in flight
    load_row(x, n, D, valid, team, rc.lane, xv);
    load_row(z, n, D, valid, team, rc.lane, zv);
    const float ss = team_sum(lane_dot(xv, xv), team, red);
    const float r = rsqrtf(ss / float(D) + eps);
    if (!valid) continue;
    if (rc.lane == 0) rstd[n] = r;
#pragma unroll
    for (int k = 0; k < KMAX; ++k) {
      const int c = chunk_col(k, team, rc.lane, V);
      if (c >= D) continue;
      float o[V];
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float zi = zv[k][i];
        o[i] = xv[k][i] * r * wv[k][i] * (zi * sigmoid_f(zi));
      }
      store_vec<V>(y + n * D + c, o);
    }
  }
}

template <typename T, int V, int CAP>
__global__ void __launch_bounds__(kMaxThreads)
    rmsnorm_gated_bwd_kernel(const T* x, const T* z, const T* w, const float* rstd, const T* dy,
                             int64_t N, int D, int team, int64_t rows_per_part, T* dx, T* dz,
                             float* part) {
  constexpr int KMAX = CAP / V;
  extern __shared__ float sbuf[];
  __shared__ float red[32];
  const RowCursor rc(team, N, rows_per_part);
  // dw terms accumulate in this team's row of sbuf (registers are the occupancy limit here)
  float* acc = part ? sbuf + rc.team_idx * D : nullptr;
  float wv[KMAX][V] = {};
#pragma unroll
  for (int k = 0; k < KMAX; ++k) {
    const int c = chunk_col(k, team, rc.lane, V);
    if (c < D) {
      load_vec<V>(w + c, wv[k]);
      if (acc) {
        const float zero[V] = {};
        store_vec<V>(acc + c, zero);
      }
    }
  }
  for (int64_t base = rc.begin; base < rc.end; base += rc.rows_per_block) {
    const int64_t n = base + rc.team_idx;
    const bool valid = n < rc.end;
    // Raw storage-type copies (bf16 pairs take half the registers of fp32 values); the
    // sigmoid is recomputed in the second loop rather than kept.
    VecPack<T, V> xr[KMAX], zr[KMAX], gr[KMAX];
    float gx = 0.0f;
#pragma unroll
    for (int k = 0; k < KMAX; ++k) {
      const int c = chunk_col(k, team, rc.lane, V);
      if (valid && c < D) {
        xr[k] = *reinterpret_cast<const VecPack<T, V>*>(x + n * D + c);
        zr[k] = *reinterpret_cast<const VecPack<T, V>*>(z + n * D + c);
        gr[k] = *reinterpret_cast<const VecPack<T, V>*>(dy + n * D + c);
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) {
          store_f32(xr[k].v, i, 0.0f);
          store_f32(zr[k].v, i, 0.0f);
          store_f32(gr[k].v, i, 0.0f);
        }
      }
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float zi = load_f32(zr[k].v, i);
        gx += load_f32(gr[k].v, i) * wv[k][i] * (zi * sigmoid_f(zi)) * load_f32(xr[k].v, i);
      }
    }
    gx = team_sum(gx, team, red);
    if (!valid) continue;
    const float r = rstd[n];
    const float cr = r * r * r * gx / float(D);
#pragma unroll
    for (int k = 0; k < KMAX; ++k) {
      const int c = chunk_col(k, team, rc.lane, V);
      if (c >= D) continue;
      float ox[V], oz[V], a[V];
      if (acc) load_vec<V>(acc + c, a);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float xi = load_f32(xr[k].v, i), zi = load_f32(zr[k].v, i);
        const float dyi = load_f32(gr[k].v, i), g = dyi * wv[k][i];
        const float s = sigmoid_f(zi), silu = zi * s;
        ox[i] = r * g * silu - cr * xi;
        oz[i] = g * xi * r * (s + silu * (1.0f - s));  // silu' = s (1 + z (1 - s))
        a[i] += dyi * xi * r * silu;
      }
      store_vec<V>(dx + n * D + c, ox);
      store_vec<V>(dz + n * D + c, oz);
      if (acc) store_vec<V>(acc + c, a);
    }
  }
  if (part) reduce_partials(rc, D, sbuf, part);
}

// Element offset of row n laid out as `heads` rows of D per token at a token pitch ld
// (ops::RowPitch).
__device__ __forceinline__ int64_t pitched_row(int64_t n, int D, int heads, int64_t ld) {
  return n / heads * ld + n % heads * D;
}

template <typename T, int V, int CAP>
__global__ void __launch_bounds__(kMaxThreads)
    l2norm_fwd_kernel(const T* x, int64_t N, int D, float eps, int team, int64_t rows_per_part,
                      T* y, float* rstd, int heads, int64_t ld) {
  constexpr int KMAX = CAP / V;
  __shared__ float red[32];
  const RowCursor rc(team, N, rows_per_part);
  for (int64_t base = rc.begin; base < rc.end; base += rc.rows_per_block) {
    const int64_t n = base + rc.team_idx;
    const bool valid = n < rc.end;
    float xv[KMAX][V] = {};
    load_row(x + pitched_row(n, D, heads, ld), 0, D, valid, team, rc.lane, xv);
    const float ss = team_sum(lane_dot(xv, xv), team, red);
    const float r = rsqrtf(ss + eps);
    if (!valid) continue;
    if (rc.lane == 0) rstd[n] = r;
#pragma unroll
    for (int k = 0; k < KMAX; ++k) {
      const int c = chunk_col(k, team, rc.lane, V);
      if (c >= D) continue;
      float o[V];
#pragma unroll
      for (int i = 0; i < V; ++i) o[i] = xv[k][i] * r;
      store_vec<V>(y + n * D + c, o);
    }
  }
}

template <typename T, int V, int CAP>
__global__ void __launch_bounds__(kMaxThreads)
    l2norm_bwd_kernel(const T* y, const float* rstd, const T* dy, int64_t N, int D, int team,
                      int64_t rows_per_part, T* dx, int heads, int64_t ld) {
  constexpr int KMAX = CAP / V;
  __shared__ float red[32];
  const RowCursor rc(team, N, rows_per_part);
  for (int64_t base = rc.begin; base < rc.end; base += rc.rows_per_block) {
    const int64_t n = base + rc.team_idx;
    const bool valid = n < rc.end;
    float yv[KMAX][V] = {}, gv[KMAX][V] = {};
    load_row(y, n, D, valid, team, rc.lane, yv);
    load_row(dy, n, D, valid, team, rc.lane, gv);
    const float p = team_sum(lane_dot(yv, gv), team, red);
    if (!valid) continue;
    const float r = rstd[n];
#pragma unroll
    for (int k = 0; k < KMAX; ++k) {
      const int c = chunk_col(k, team, rc.lane, V);
      if (c >= D) continue;
      float o[V];
#pragma unroll
      for (int i = 0; i < V; ++i) o[i] = r * (gv[k][i] - yv[k][i] * p);
      store_vec<V>(dx + pitched_row(n, D, heads, ld) + c, o);
    }
  }
}

// ---- host side -----------------------------------------------------------------------------

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Launch geometry of one row-team kernel call.
struct RowPlan {
  int V = 1, cap = 8, team = 1, block = kBlock;  // cap: values per thread (8 or 16)
  int64_t parts = 0, rows_per_part = 0;
  size_t smem = 0;  // dynamic shared memory (weight-gradient partials)
  unsigned grid() const { return unsigned(parts); }
};

// vec: the vector width when aligned (8 all-bf16, 4 with an fp32 tensor). ptrs/sizes: every
// tensor pointer with its element size. max_parts: blocks for the weight-gradient partials
// (0: one block per rows_per_block rows, no partials).
RowPlan plan_rows(int64_t N, int64_t D, int vec,
                  std::initializer_list<std::pair<const void*, size_t>> ptrs, int64_t max_parts,
                  int64_t ld = 0) {
  RowPlan p;
  auto fits = [&](int v) {
    bool ok = D % v == 0 && ld % v == 0;  // ld: a strided operand's token pitch (0: none)
    for (auto [ptr, esize] : ptrs) ok = ok && aligned(ptr, std::min<size_t>(16, esize * v));
    return ok;
  };
  p.V = fits(vec) ? vec : vec == 8 && fits(4) ? 4 : 1;
  const int64_t chunks = (D + p.V - 1) / p.V;
  p.cap = (chunks + 8 / p.V - 1) / (8 / p.V) <= kMaxThreads ? 8 : 16;
  const int64_t kmax = p.cap / p.V, need = (chunks + kmax - 1) / kmax;
  while (p.team < need) p.team *= 2;
  p.block = p.team > 32 ? p.team : kBlock;
  const int64_t rpb = p.block / p.team;
  const int64_t blocks = (N + rpb - 1) / rpb;
  p.parts = max_parts > 0 ? std::min(blocks, max_parts) : blocks;
  if (p.parts == 0) return p;
  p.rows_per_part = (blocks + p.parts - 1) / p.parts * rpb;
  p.parts = (N + p.rows_per_part - 1) / p.rows_per_part;
  p.smem = max_parts > 0 ? size_t(rpb * D) * sizeof(float) : 0;
  return p;
}

// The token pitch of a strided l2norm operand (ld 0: heads D, rows back to back), checked.
int64_t checked_pitch(const char* op, const char* what, int64_t heads, int64_t D, int64_t ld) {
  if (ld == 0) ld = heads * D;
  DT_CHECK(heads >= 1 && heads <= (1 << 30) && ld >= heads * D, op, ": ", what, " rows of ", heads,
           " heads at a token pitch of ", ld);
  return ld;
}

void check_shape(const char* op, int64_t N, int64_t D) {
  DT_CHECK(N >= 0, op, ": negative row count N=", N);
  DT_CHECK(D >= 1 && D <= kMaxD, op, ": width D=", D, " outside [1, ", kMaxD, "]");
}

// Scratch for the weight-gradient partials (see cuda::ScratchBuffer).
float* partials(int64_t n) {
  static ScratchBuffer* s = new ScratchBuffer("norm weight-gradient partials");  // leaked
  return static_cast<float*>(s->get(size_t(n) * sizeof(float)));
}

// Calls f(integral_constant V, integral_constant CAP) for the planned vector width and register
// capacity; V = 8 exists only for all-bf16 kernels (kWide), where plan_rows can pick it.
template <bool kWide, typename F>
void with_vec(int v, int cap, F&& f) {
  auto with_cap = [&](auto vc) {
    if (cap == 16) return f(vc, std::integral_constant<int, 16>{});
    f(vc, std::integral_constant<int, 8>{});
  };
  if constexpr (kWide) {
    if (v == 8) return with_cap(std::integral_constant<int, 8>{});
  }
  if (v == 4) return with_cap(std::integral_constant<int, 4>{});
  with_cap(std::integral_constant<int, 1>{});
}

template <typename... Ts>
constexpr bool kAllBf16 = (std::is_same_v<Ts, __nv_bfloat16> && ...);

}  // namespace

void rmsnorm_fwd(DType xt, const void* x_ND, DType dt, const void* w_D, int64_t N, int64_t D,
                 double eps, void* y_ND, float* rstd_N, void* x_copy) {
  check_shape("cuda::rmsnorm_fwd", N, D);
  if (N == 0) return;
  const int vec = xt == DType::bf16 && dt == DType::bf16 ? 8 : 4;
  const RowPlan p = plan_rows(N, D, vec,
                              {{x_ND, dtype_size(xt)},
                               {w_D, dtype_size(dt)},
                               {y_ND, dtype_size(dt)},
                               {x_copy ? x_copy : x_ND, dtype_size(xt)}},
                              0);
  DT_DISPATCH_DTYPE(
      xt, TX,
      DT_DISPATCH_DTYPE(dt, T, with_vec<kAllBf16<TX, T>>(p.V, p.cap, [&](auto v, auto cap) {
                          rmsnorm_fwd_kernel<TX, T, decltype(v)::value, decltype(cap)::value>
                              <<<p.grid(), p.block>>>(
                                  static_cast<const TX*>(x_ND), static_cast<const T*>(w_D), N,
                                  int(D), float(eps), p.team, p.rows_per_part,
                                  static_cast<T*>(y_ND), rstd_N, static_cast<TX*>(x_copy));
                        })));
  DT_CUDA_LAUNCH_CHECK("rmsnorm_fwd");
}

void rmsnorm_bwd(DType xt, const void* x_ND, DType dt, const void* w_D, const float* rstd_N,
                 const void* dy_ND, int64_t N, int64_t D, void* dx_ND, bool accumulate_dx,
                 float* dw_D, void* dx_cast) {
  check_shape("cuda::rmsnorm_bwd", N, D);
  if (N == 0) return;
  const int vec = xt == DType::bf16 && dt == DType::bf16 ? 8 : 4;
  const size_t xs = dtype_size(xt), ds = dtype_size(dt);
  const RowPlan p = plan_rows(
      N, D, vec, {{x_ND, xs}, {w_D, ds}, {dy_ND, ds}, {dx_ND, xs}, {dx_cast ? dx_cast : dy_ND, ds}},
      dw_D ? max_parts(D) : 0);
  float* part = dw_D ? partials(p.parts * D) : nullptr;
  DT_DISPATCH_DTYPE(
      xt, TX,
      DT_DISPATCH_DTYPE(dt, T, with_vec<kAllBf16<TX, T>>(p.V, p.cap, [&](auto v, auto cap) {
                          rmsnorm_bwd_kernel<TX, T, decltype(v)::value, decltype(cap)::value>
                              <<<p.grid(), p.block, p.smem>>>(
                                  static_cast<const TX*>(x_ND), static_cast<const T*>(w_D), rstd_N,
                                  static_cast<const T*>(dy_ND), N, int(D), p.team, p.rows_per_part,
                                  static_cast<TX*>(dx_ND), accumulate_dx, part,
                                  static_cast<T*>(dx_cast));
                        })));
  DT_CUDA_LAUNCH_CHECK("rmsnorm_bwd");
  if (dw_D) col_sum_add(part, p.parts, D, dw_D);
}

void rmsnorm_gated_fwd(DType dt, const void* x_ND, const void* z_ND, const void* w_D, int64_t N,
                       int64_t D, double eps, void* y_ND, float* rstd_N) {
  check_shape("cuda::rmsnorm_gated_fwd", N, D);
  if (N == 0) return;
  const size_t es = dtype_size(dt);
  const int vec = dt == DType::bf16 ? 8 : 4;
  const RowPlan p = plan_rows(N, D, vec, {{x_ND, es}, {z_ND, es}, {w_D, es}, {y_ND, es}}, 0);
  DT_DISPATCH_DTYPE(dt, T, with_vec<kAllBf16<T>>(p.V, p.cap, [&](auto v, auto cap) {
                      rmsnorm_gated_fwd_kernel<T, decltype(v)::value, decltype(cap)::value>
                          <<<p.grid(), p.block>>>(
                              static_cast<const T*>(x_ND), static_cast<const T*>(z_ND),
                              static_cast<const T*>(w_D), N, int(D), float(eps), p.team,
                              p.rows_per_part, static_cast<T*>(y_ND), rstd_N);
                    }));
  DT_CUDA_LAUNCH_CHECK("rmsnorm_gated_fwd");
}

void rmsnorm_gated_bwd(DType dt, const void* x_ND, const void* z_ND, const void* w_D,
                       const float* rstd_N, const void* dy_ND, int64_t N, int64_t D, void* dx_ND,
                       void* dz_ND, float* dw_D) {
  check_shape("cuda::rmsnorm_gated_bwd", N, D);
  if (N == 0) return;
  const size_t es = dtype_size(dt);
  const int vec = dt == DType::bf16 ? 8 : 4;
  const RowPlan p = plan_rows(
      N, D, vec, {{x_ND, es}, {z_ND, es}, {w_D, es}, {dy_ND, es}, {dx_ND, es}, {dz_ND, es}},
      dw_D ? max_parts(D) : 0);
  float* part = dw_D ? partials(p.parts * D) : nullptr;
  DT_DISPATCH_DTYPE(dt, T, with_vec<kAllBf16<T>>(p.V, p.cap, [&](auto v, auto cap) {
                      rmsnorm_gated_bwd_kernel<T, decltype(v)::value, decltype(cap)::value>
                          <<<p.grid(), p.block, p.smem>>>(
                              static_cast<const T*>(x_ND), static_cast<const T*>(z_ND),
                              static_cast<const T*>(w_D), rstd_N, static_cast<const T*>(dy_ND), N,
                              int(D), p.team, p.rows_per_part, static_cast<T*>(dx_ND),
                              static_cast<T*>(dz_ND), part);
                    }));
  DT_CUDA_LAUNCH_CHECK("rmsnorm_gated_bwd");
  if (dw_D) col_sum_add(part, p.parts, D, dw_D);
}

void l2norm_fwd(DType dt, const void* x_ND, int64_t N, int64_t D, double eps, void* y_ND,
                float* rstd_N, int64_t heads, int64_t ld) {
  check_shape("cuda::l2norm_fwd", N, D);
  ld = checked_pitch("cuda::l2norm_fwd", "x", heads, D, ld);
  if (N == 0) return;
  const size_t es = dtype_size(dt);
  const RowPlan p = plan_rows(N, D, dt == DType::bf16 ? 8 : 4, {{x_ND, es}, {y_ND, es}}, 0, ld);
  DT_DISPATCH_DTYPE(dt, T, with_vec<kAllBf16<T>>(p.V, p.cap, [&](auto v, auto cap) {
                      l2norm_fwd_kernel<T, decltype(v)::value, decltype(cap)::value>
                          <<<p.grid(), p.block>>>(static_cast<const T*>(x_ND), N, int(D),
                                                  float(eps), p.team, p.rows_per_part,
                                                  static_cast<T*>(y_ND), rstd_N, int(heads), ld);
                    }));
  DT_CUDA_LAUNCH_CHECK("l2norm_fwd");
}

void l2norm_bwd(DType dt, const void* y_ND, const float* rstd_N, const void* dy_ND, int64_t N,
                int64_t D, void* dx_ND, int64_t heads, int64_t ld) {
  check_shape("cuda::l2norm_bwd", N, D);
  ld = checked_pitch("cuda::l2norm_bwd", "dx", heads, D, ld);
  if (N == 0) return;
  const size_t es = dtype_size(dt);
  const RowPlan p =
      plan_rows(N, D, dt == DType::bf16 ? 8 : 4, {{y_ND, es}, {dy_ND, es}, {dx_ND, es}}, 0, ld);
  DT_DISPATCH_DTYPE(
      dt, T, with_vec<kAllBf16<T>>(p.V, p.cap, [&](auto v, auto cap) {
        l2norm_bwd_kernel<T, decltype(v)::value, decltype(cap)::value><<<p.grid(), p.block>>>(
            static_cast<const T*>(y_ND), rstd_N, static_cast<const T*>(dy_ND), N, int(D), p.team,
            p.rows_per_part, static_cast<T*>(dx_ND), int(heads), ld);
      }));
  DT_CUDA_LAUNCH_CHECK("l2norm_bwd");
}

}  // namespace deltatron::cuda
