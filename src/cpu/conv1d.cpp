// CPU reference for the GDN causal depthwise conv1d followed by SiLU, over packed segments.
//
// Per channel c and token t with segment [s0, s1), taps u = t-(W-1)+i, i < W, and only taps
// with u >= s0 read x (the others are the zero padding of Dao's causal-conv1d with seq_idx):
//   a[t,c]  = sum_{i: u >= s0} w[c,i] x[u,c],     y[t,c] = silu(a[t,c])
// Backward, with g[t,c] = dy[t,c] silu'(a[t,c]) (a recomputed):
//   dx[u,c]  = sum_{i: t = u+(W-1)-i < s1(u)} w[c,i] g[t,c]     (the transposed correlation)
//   dw[c,i] += sum_t sum_{u >= s0(t)} g[t,c] x[u,c]
// Tokens are independent in the forward and in dx (parallel over t); dw is a sum over tokens,
// so threads own channel blocks and walk tokens in order (bitwise independent of threads).
#include "cpu/conv1d.h"

#include <algorithm>
#include <memory>
#include <vector>

#include "core/error.h"
#include "cpu/activation.h"

namespace deltatron::cpu {

namespace {

constexpr int64_t kParallelMin = 16384;  // N*C*W below which one thread is faster
constexpr int64_t kCols = 64;            // channel block owned by one thread in the dw pass

void check_args(const char* name, core::Segments seg, int64_t N, int64_t C, int64_t W) {
  DT_CHECK(N >= 0 && C >= 0 && W >= 1, name, ": bad sizes N=", N, " C=", C, " W=", W);
  DT_CHECK(seg.n >= 0 && seg.cu != nullptr, name, ": missing segment boundaries");
  DT_CHECK(seg.cu[0] == 0 && seg.cu[seg.n] == N, name, ": segments cover [", seg.cu[0], ", ",
           seg.cu[seg.n], "), pack has N=", N);
  for (int s = 0; s < seg.n; ++s)
    DT_CHECK(seg.cu[s] <= seg.cu[s + 1], name, ": segment boundaries decrease at ", s);
}

// start[t], end[t]: the segment [start, end) that token t belongs to.
void token_segments(core::Segments seg, int64_t N, std::vector<int64_t>& start,
                    std::vector<int64_t>& end) {
  start.resize(size_t(N));
  end.resize(size_t(N));
  for (int s = 0; s < seg.n; ++s)
    for (int64_t t = seg.cu[s]; t < seg.cu[s + 1]; ++t) {
      start[t] = seg.cu[s];
      end[t] = seg.cu[s + 1];
    }
}

// a[c] = sum over t's in-segment taps of wT[i,c] x[u,c], taps in ascending i.
template <typename T>
void preact_row(const T* x_NC, const T* w_WC, int64_t t, int64_t s0, int64_t C, int64_t W, T* a) {
  std::fill(a, a + C, T(0));
  for (int64_t i = std::max<int64_t>(0, s0 - t + (W - 1)); i < W; ++i) {
    const T* x = x_NC + (t - (W - 1) + i) * C;
    const T* w = w_WC + i * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) a[c] += w[c] * x[c];
  }
}

template <typename T>
std::vector<T> transpose_w(const T* w_CW, int64_t C, int64_t W) {
  std::vector<T> w_WC(size_t(C * W));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < W; ++i) w_WC[i * C + c] = w_CW[c * W + i];
  return w_WC;
}

}  // namespace

template <typename T>
void conv1d_fwd(const T* x_NC, const T* w_CW, core::Segments seg, int64_t N, int64_t C, int64_t W,
                T* y_NC) {
  check_args("conv1d_fwd", seg, N, C, W);
  std::vector<int64_t> start, end;
  token_segments(seg, N, start, end);
  const std::vector<T> w_WC = transpose_w(w_CW, C, W);
#pragma omp parallel for schedule(static) if (N * C * W > kParallelMin)
  for (int64_t t = 0; t < N; ++t) {
    T* y = y_NC + t * C;
    preact_row(x_NC, w_WC.data(), t, start[t], C, W, y);
    for (int64_t c = 0; c < C; ++c) y[c] = silu(y[c]);
  }
}

template <typename T>
void conv1d_bwd(const T* x_NC, const T* w_CW, core::Segments seg, const T* dy_NC, int64_t N,
                int64_t C, int64_t W, T* dx_NC, T* dw_CW) {
  check_args("conv1d_bwd", seg, N, C, W);
  std::vector<int64_t> start, end;
  token_segments(seg, N, start, end);
  const std::vector<T> w_WC = transpose_w(w_CW, C, W);
  const bool parallel = N * C * W > kParallelMin;

  // g = dy * silu'(a), a recomputed. Left uninitialised: the parallel pass first-touches it.
  std::unique_ptr<T[]> g_NC(new T[size_t(N * C)]);
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t t = 0; t < N; ++t) {
    T* g = g_NC.get() + t * C;
    preact_row(x_NC, w_WC.data(), t, start[t], C, W, g);
    const T* dy = dy_NC + t * C;
    for (int64_t c = 0; c < C; ++c) g[c] = dy[c] * silu_grad(g[c]);
  }

  // dx[u] = sum_i w[:,i] g[u+(W-1)-i] over outputs inside u's segment, ascending i.
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t u = 0; u < N; ++u) {
    T* dx = dx_NC + u * C;
    std::fill(dx, dx + C, T(0));
    for (int64_t i = std::max<int64_t>(0, u + (W - 1) - (end[u] - 1)); i < W; ++i) {
      const T* g = g_NC.get() + (u + (W - 1) - i) * C;
      const T* w = w_WC.data() + i * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) dx[c] += w[c] * g[c];
    }
  }

  // dw[c,i] += sum_t g[t,c] x[t-(W-1)+i, c] over in-segment taps, tokens in order.
  const int64_t nblk = (C + kCols - 1) / kCols;
#pragma omp parallel if (parallel)
  {
    std::vector<T> acc(size_t(kCols * W));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblk; ++b) {
      const int64_t c0 = b * kCols, c1 = std::min(C, c0 + kCols), nc = c1 - c0;
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t t = 0; t < N; ++t) {
        const T* g = g_NC.get() + t * C + c0;
        for (int64_t i = std::max<int64_t>(0, start[t] - t + (W - 1)); i < W; ++i) {
          const T* x = x_NC + (t - (W - 1) + i) * C + c0;
          T* ac = acc.data() + i * kCols;
#pragma omp simd
          for (int64_t c = 0; c < nc; ++c) ac[c] += g[c] * x[c];
        }
      }
      for (int64_t c = 0; c < nc; ++c)
        for (int64_t i = 0; i < W; ++i) dw_CW[(c0 + c) * W + i] += acc[i * kCols + c];
    }
  }
}

#define DT_INSTANTIATE(T)                                                                         \
  template void conv1d_fwd<T>(const T*, const T*, core::Segments, int64_t, int64_t, int64_t, T*); \
  template void conv1d_bwd<T>(const T*, const T*, core::Segments, const T*, int64_t, int64_t,     \
                              int64_t, T*, T*);
DT_INSTANTIATE(float)
DT_INSTANTIATE(double)
#undef DT_INSTANTIATE

}  // namespace deltatron::cpu
