// CUDA kernels of the segment-aware causal depthwise conv1d + SiLU (see conv1d.h, cpu/conv1d.cpp).
//
// Parallel mapping (both kernels): thread j of a block owns kV consecutive channels
// [c0, c0 + kV) (kV = 4, 2 or 1, the widest that divides C and the pointers' alignment allow:
// one 8-byte load per token row for bf16 at the real sizes) and one tile of consecutive tokens;
// a block of 128 threads covers 128 kV channels (grid.x = token tiles, grid.y = channel blocks).
// The thread walks its tile's tokens in order, keeping the last W inputs of its channels in
// registers (the sliding window xw[i] = x[t-(W-1)+i, c]), so x is read once per tile plus a W-1
// halo. Consecutive threads read consecutive channel groups of one token row: coalesced. Tokens
// are loaded kGroup at a time ahead of use so that each thread keeps several loads in flight
// (otherwise the loop is latency bound). W (1..8) and kV are template parameters so the window
// and the accumulators stay in registers. No shared memory, no block-level sync.
//
// Segments: a thread finds its first token's segment by binary search in cu, then advances
// through cu as t crosses segment ends (empty segments are stepped over). A tap i of token t is
// used only when t-(W-1)+i >= s0(t), which is exactly the CPU's condition; window entries from
// an earlier segment are loaded but never used.
//
// Backward (one pass): for each t the thread recomputes a[t], g[t] = dy[t] silu'(a[t]), then
//   scatters w[i] g[t] into the dx accumulators of the window tokens u = t-(W-1)+i (in-segment
//   taps only) -- dx[u] is complete once t passes u+(W-1), so it is stored when it leaves the
//   window; the tile runs W-1 tokens past its end (the halo) to finish its last dx rows;
//   adds g[t] x[u] to the dw accumulators, for the tile's own tokens only.
// dw: each (tile, c, i) fp32 partial goes to a workspace [tiles, C, W]; a second kernel sums the
// tiles in index order per (c, i) and adds the sum to dw (fixed order: deterministic, no atomics).
// Numerics: fp32 throughout; sigmoid(x) = 1 / (1 + e^-x) with the fast intrinsics __expf and
// __fdividef (relative error ~1e-6 for |x| < 10, far below bf16's 4e-3; exact 0/1 saturation,
// never NaN for finite x).
#include <cstdint>
#include <initializer_list>
#include <mutex>
#include <type_traits>

#include "core/error.h"
#include "cuda/conv1d.h"
#include "cuda/kernel_util.cuh"

namespace deltatron::cuda {

namespace {

constexpr int kThreads = 128;  // channel groups per block
constexpr int kTileFwd = 32;   // tokens per forward tile
constexpr int kTileBwd = 64;   // tokens per backward tile (dw partial granularity)
constexpr int kMaxW = 8;       // largest kernel width compiled

// Tokens loaded ahead per thread: 8 single channels (16 B of bf16) or 4 channel groups.
template <int kV>
inline constexpr int kGroupOf = kV == 1 ? 8 : 4;

__device__ __forceinline__ float fast_sigmoid(float x) {
  return __fdividef(1.f, 1.f + __expf(-x));  // 1/(inf) = 0 for x < -88: saturates, never NaN
}
__device__ __forceinline__ float silu_f(float x) { return x * fast_sigmoid(x); }
__device__ __forceinline__ float silu_grad_f(float x) {
  const float s = fast_sigmoid(x);
  return s * (1.f + x * (1.f - s));
}

// Largest s in [0, nseg) with cu[s] <= t: the segment of token t (the last of several empty
// segments sharing a start never owns t, because its end equals its start).
__device__ __forceinline__ int find_segment(const int32_t* cu, int nseg, int64_t t) {
  int lo = 0, hi = nseg - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (cu[mid] <= t)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// Tracks the segment [s0, s1) of an increasing token index.
struct SegmentCursor {
  const int32_t* cu;
  int nseg, s;
  int64_t s0, s1;
  __device__ SegmentCursor(const int32_t* cu_, int nseg_, int64_t t) : cu(cu_), nseg(nseg_) {
    s = find_segment(cu, nseg, t);
    s0 = cu[s];
    s1 = cu[s + 1];
  }
  // Advances to t's segment; returns the number of in-segment taps of t, min(W, t - s0 + 1).
  template <int W>
  __device__ __forceinline__ int taps(int64_t t) {
    while (t >= s1 && s + 1 < nseg) {
      ++s;
      s0 = cu[s];
      s1 = cu[s + 1];
    }
    const int64_t n = t - s0 + 1;
    return n >= W ? W : (n < 0 ? 0 : int(n));
  }
};

// The weights of channels [c0, c0 + kV) (w is [C, W]) and the window before t0: x rows
// t0-(W-1) .. t0-1 (zeros before row 0; out-of-segment entries stay unused).
template <typename T, int W, int kV>
__device__ __forceinline__ void load_weights_and_window(const T* x, const T* w, int64_t C,
                                                        int64_t c0, int64_t t0, float (&wr)[W][kV],
                                                        float (&xw)[W][kV]) {
#pragma unroll
  for (int i = 0; i < W; ++i)
#pragma unroll
    for (int k = 0; k < kV; ++k) wr[i][k] = load_f32(w, (c0 + k) * W + i);
#pragma unroll
  for (int i = 0; i < W - 1; ++i) {
    const int64_t u = t0 - (W - 1) + i;
    if (u >= 0)
      load_vec<kV>(x + u * C + c0, xw[i]);
    else
#pragma unroll
      for (int k = 0; k < kV; ++k) xw[i][k] = 0.f;
  }
}

// Rows tb .. tb + kGroup - 1 of channels [c0, c0 + kV) of p, zeros from row `end` on.
template <int kGroup, int kV, typename T>
__device__ __forceinline__ void load_rows(const T* p, int64_t tb, int64_t end, int64_t C,
                                          int64_t c0, float (&r)[kGroup][kV]) {
#pragma unroll
  for (int j = 0; j < kGroup; ++j)
    if (tb + j < end)
      load_vec<kV>(p + (tb + j) * C + c0, r[j]);
    else
#pragma unroll
      for (int k = 0; k < kV; ++k) r[j][k] = 0.f;
}

template <typename T, int W, int kV>
__global__ void __launch_bounds__(kThreads)
    conv1d_fwd_kernel(const T* __restrict__ x, const T* __restrict__ w, const int32_t* cu, int nseg,
                      int64_t N, int64_t C, T* __restrict__ y) {
  constexpr int kGroup = kGroupOf<kV>;
  const int64_t c0 = (int64_t(blockIdx.y) * kThreads + threadIdx.x) * kV;
  if (c0 >= C) return;  // C is a multiple of kV
  const int64_t t0 = int64_t(blockIdx.x) * kTileFwd;
  const int64_t t1 = t0 + kTileFwd < N ? t0 + kTileFwd : N;
  float wr[W][kV], xw[W][kV];
  load_weights_and_window(x, w, C, c0, t0, wr, xw);
  SegmentCursor seg(cu, nseg, t0);
  for (int64_t tb = t0; tb < t1; tb += kGroup) {
    float xr[kGroup][kV];
    load_rows(x, tb, t1, C, c0, xr);
#pragma unroll
    for (int j = 0; j < kGroup; ++j) {
      const int64_t t = tb + j;
      if (t >= t1) break;
      const int first = W - seg.taps<W>(t);  // taps i >= first are inside t's segment
      float out[kV];
#pragma unroll
      for (int k = 0; k < kV; ++k) {
        xw[W - 1][k] = xr[j][k];
        float a = 0.f;
#pragma unroll
        for (int i = 0; i < W; ++i)
          if (i >= first) a += wr[i][k] * xw[i][k];
        out[k] = silu_f(a);
#pragma unroll
        for (int i = 0; i < W - 1; ++i) xw[i][k] = xw[i + 1][k];
      }
      store_vec<kV>(y + t * C + c0, out);
    }
  }
}

template <typename T, int W, int kV>
__global__ void __launch_bounds__(kThreads)
    conv1d_bwd_kernel(const T* __restrict__ x, const T* __restrict__ w, const int32_t* cu, int nseg,
                      const T* __restrict__ dy, int64_t N, int64_t C, T* __restrict__ dx,
                      float* __restrict__ part_TCW) {
  constexpr int kGroup = kGroupOf<kV>;
  const int64_t c0 = (int64_t(blockIdx.y) * kThreads + threadIdx.x) * kV;
  if (c0 >= C) return;
  const int64_t t0 = int64_t(blockIdx.x) * kTileBwd;
  const int64_t t1 = t0 + kTileBwd < N ? t0 + kTileBwd : N;
  const int64_t tend = t1 + (W - 1) < N ? t1 + (W - 1) : N;  // the halo finishes dx[t1-1]
  float wr[W][kV], xw[W][kV], dxa[W][kV] = {}, dwa[W][kV] = {};
  load_weights_and_window(x, w, C, c0, t0, wr, xw);
  SegmentCursor seg(cu, nseg, t0);
  for (int64_t tb = t0; tb < tend; tb += kGroup) {
    float xr[kGroup][kV], dyr[kGroup][kV];
    load_rows(x, tb, tend, C, c0, xr);
    load_rows(dy, tb, tend, C, c0, dyr);
#pragma unroll
    for (int j = 0; j < kGroup; ++j) {
      const int64_t t = tb + j;
      if (t >= tend) break;
      const int first = W - seg.taps<W>(t);
      const bool own = t < t1;  // halo tokens feed dx only; their dw belongs to the next tile
      float out[kV];
#pragma unroll
      for (int k = 0; k < kV; ++k) {
        xw[W - 1][k] = xr[j][k];
        float a = 0.f;
#pragma unroll
        for (int i = 0; i < W; ++i)
          if (i >= first) a += wr[i][k] * xw[i][k];
        const float g = dyr[j][k] * silu_grad_f(a);
#pragma unroll
        for (int i = 0; i < W; ++i)
          if (i >= first) {
            dxa[i][k] += wr[i][k] * g;
            if (own) dwa[i][k] += g * xw[i][k];
          }
        out[k] = dxa[0][k];  // token t-(W-1) leaves the window: all its outputs are counted
#pragma unroll
        for (int i = 0; i < W - 1; ++i) {
          xw[i][k] = xw[i + 1][k];
          dxa[i][k] = dxa[i + 1][k];
        }
        dxa[W - 1][k] = 0.f;
      }
      const int64_t u = t - (W - 1);
      if (u >= t0) store_vec<kV>(dx + u * C + c0, out);
    }
  }
  // Pack end inside the halo: the last W-1 window tokens never left it.
#pragma unroll
  for (int i = 0; i < W - 1; ++i) {
    const int64_t u = tend - (W - 1) + i;
    if (u >= t0 && u < t1) store_vec<kV>(dx + u * C + c0, dxa[i]);
  }
  float* p = part_TCW + (int64_t(blockIdx.x) * C + c0) * W;
#pragma unroll
  for (int k = 0; k < kV; ++k)
#pragma unroll
    for (int i = 0; i < W; ++i) p[k * W + i] = dwa[i][k];
}

// dw[j] += sum_{b < tiles} part[b, j] in order of b, j over C*W.
__global__ void conv1d_dw_sum_kernel(const float* __restrict__ part, int64_t tiles, int64_t CW,
                                     float* __restrict__ dw) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= CW) return;
  float s = 0.f;
#pragma unroll 8
  for (int64_t b = 0; b < tiles; ++b) s += part[b * CW + j];
  dw[j] += s;
}

// Calls f(integral_constant W, integral_constant kV) for W in [1, kMaxW]; kV > 1 is compiled
// for W <= 4 only (wider kernels use single channels). Other widths are an error.
template <typename F>
void dispatch_shape(int64_t W, int V, const char* name, F&& f) {
  using std::integral_constant;
  auto by_v = [&](auto wc) {
    if constexpr (decltype(wc)::value <= 4) {
      if (V == 4) return f(wc, integral_constant<int, 4>{});
      if (V == 2) return f(wc, integral_constant<int, 2>{});
    }
    f(wc, integral_constant<int, 1>{});
  };
  switch (W) {
    case 1:
      by_v(integral_constant<int, 1>{});
      break;
    case 2:
      by_v(integral_constant<int, 2>{});
      break;
    case 3:
      by_v(integral_constant<int, 3>{});
      break;
    case 4:
      by_v(integral_constant<int, 4>{});
      break;
    case 5:
      by_v(integral_constant<int, 5>{});
      break;
    case 6:
      by_v(integral_constant<int, 6>{});
      break;
    case 7:
      by_v(integral_constant<int, 7>{});
      break;
    case 8:
      by_v(integral_constant<int, 8>{});
      break;
    default:
      core::fail(name, ": kernel width W=", W, " is not supported on CUDA (1..", kMaxW, ")");
  }
}

// Channels per thread: the widest of 4, 2, 1 that divides C and keeps every token row of the
// given tensors aligned for one vector access (W <= 4 only).
int channel_vector(DType dt, int64_t C, int64_t W, std::initializer_list<const void*> ptrs) {
  if (W > 4) return 1;
  for (int v : {4, 2}) {
    const uintptr_t bytes = uintptr_t(v) * dtype_size(dt);
    bool ok = C % v == 0;
    for (const void* p : ptrs) ok = ok && reinterpret_cast<uintptr_t>(p) % bytes == 0;
    if (ok) return v;
  }
  return 1;
}

void check_args(const char* name, const int32_t* cu, int nseg, int64_t N, int64_t C, int64_t W) {
  DT_CHECK(N >= 0 && C >= 0 && W >= 1, name, ": bad sizes N=", N, " C=", C, " W=", W);
  DT_CHECK(W <= kMaxW, name, ": kernel width W=", W, " is not supported on CUDA (1..", kMaxW, ")");
  DT_CHECK(N == 0 || (cu != nullptr && nseg >= 1), name,
           ": missing segment boundaries (nseg=", nseg, ")");
  DT_CHECK(
      (N + kTileFwd - 1) / kTileFwd < (int64_t(1) << 31) && (C + kThreads - 1) / kThreads <= 65535,
      name, ": sizes too large for the grid (N=", N, " C=", C, ")");
}

}  // namespace

void conv1d_fwd(DType dt, const void* x_NC, const void* w_CW, const int32_t* cu_dev, int nseg,
                int64_t N, int64_t C, int64_t W, void* y_NC) {
  check_args("cuda::conv1d_fwd", cu_dev, nseg, N, C, W);
  if (N == 0 || C == 0) return;
  const int V = channel_vector(dt, C, W, {x_NC, y_NC});
  const int64_t threads = C / V;
  const dim3 grid(unsigned((N + kTileFwd - 1) / kTileFwd),
                  unsigned((threads + kThreads - 1) / kThreads));
  DT_DISPATCH_DTYPE(dt, T, dispatch_shape(W, V, "cuda::conv1d_fwd", [&](auto wc, auto vc) {
                      conv1d_fwd_kernel<T, decltype(wc)::value, decltype(vc)::value>
                          <<<grid, kThreads>>>(static_cast<const T*>(x_NC),
                                               static_cast<const T*>(w_CW), cu_dev, nseg, N, C,
                                               static_cast<T*>(y_NC));
                    }));
  DT_CUDA_LAUNCH_CHECK("conv1d_fwd_kernel");
}

void conv1d_bwd(DType dt, const void* x_NC, const void* w_CW, const int32_t* cu_dev, int nseg,
                const void* dy_NC, int64_t N, int64_t C, int64_t W, void* dx_NC, float* dw_CW) {
  check_args("cuda::conv1d_bwd", cu_dev, nseg, N, C, W);
  if (N == 0 || C == 0) return;
  const int64_t tiles = (N + kTileBwd - 1) / kTileBwd;
  static ScratchBuffer* scratch = new ScratchBuffer("conv1d_bwd dw partials");  // leaked
  float* part = static_cast<float*>(scratch->get(size_t(tiles * C * W) * sizeof(float)));
  const int V = channel_vector(dt, C, W, {x_NC, dy_NC, dx_NC});
  const int64_t threads = C / V;
  const dim3 grid(unsigned(tiles), unsigned((threads + kThreads - 1) / kThreads));
  DT_DISPATCH_DTYPE(
      dt, T, dispatch_shape(W, V, "cuda::conv1d_bwd", [&](auto wc, auto vc) {
        conv1d_bwd_kernel<T, decltype(wc)::value, decltype(vc)::value><<<grid, kThreads>>>(
            static_cast<const T*>(x_NC), static_cast<const T*>(w_CW), cu_dev, nseg,
            static_cast<const T*>(dy_NC), N, C, static_cast<T*>(dx_NC), part);
      }));
  DT_CUDA_LAUNCH_CHECK("conv1d_bwd_kernel");
  const int64_t CW = C * W;
  conv1d_dw_sum_kernel<<<unsigned((CW + 255) / 256), 256>>>(part, tiles, CW, dw_CW);
  DT_CUDA_LAUNCH_CHECK("conv1d_dw_sum_kernel");
}

}  // namespace deltatron::cuda
