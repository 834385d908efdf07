// Internals shared by the CUDA chunked gated delta rule (gdn_fwd.cu, gdn_bwd.cu): the chunk plan,
// the workspace layout, warp-level tensor-core products with split operands, tile loaders and
// the launchers of the kernels both directions use. Include only from those two files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/kernel_util.cuh"
#include "cuda/mma.cuh"

// Legend (see cuda/gdn.h): N tokens, H key heads, G value heads (R = G / H), K key dim, V value
// dim; KP = K padded (128 or 256, a template parameter), VP = V rounded up to kBV. A "chunk-head"
// q = ci * G + j is chunk ci for value head j; workspace tiles are indexed by q.

namespace deltatron::cuda::gdn {

constexpr int kC = 64;   // chunk length (cpu::kGdnChunk)
constexpr int kBV = 32;  // value columns owned by one block of the sequential kernels

// ---- chunk plan (host-built, uploaded) ------------------------------------------------------

// Chunks in segment order; segments also listed longest first for the sequential kernels, so
// the longest recurrences start first (blockIdx.z = rank in that order).
struct Plan {
  const int* chunk_t0;   // [nch] first token of the chunk
  const int* chunk_len;  // [nch] rows, 1..64
  const int* seg_ch0;    // [nseg] first chunk of the z-th longest segment
  const int* seg_nch;    // [nseg] its number of chunks (0 for an empty segment)
  const int* seg_id;     // [nseg] its index in cu_seqlens
  int nch, nseg;
};

struct Dims {
  int64_t N;
  int H, G, R, K, V, VP, KT;  // KT = KP / 64 column slices of the backward dq/dk kernel
  float scale;
  bool v2;  // launch layout GdnKernels::v2, v3 or v4 (cuda/gdn.h)
  bool v3;  // layout v3 or v4: 8 warps per block in prep, states, dstate, wy (WarpTiles)
  bool v4;  // layout v4: W stored pre-split in bf16 mode (with_w_planes)
};

// Calls f(std::integral_constant<int, NW>{}) with the warps a block of the prep, states, dstate
// and wy kernels has in the launch layout: 8 in v3 and v4, else 4.
template <typename F>
void with_warps(const Dims& d, F&& f) {
  if (d.v3)
    f(std::integral_constant<int, 8>{});
  else
    f(std::integral_constant<int, 4>{});
}

// with_warps and with_w_planes together: f(NW, WP) for the layouts that exist (4 warps only with
// W in fp32), so no kernel is compiled for a combination no layout launches.
template <typename T, typename F>
void with_warps_w(const Dims& d, F&& f) {
  if constexpr (sizeof(T) == 2) {
    if (d.v4) return f(std::integral_constant<int, 8>{}, std::true_type{});
  }
  if (d.v3) return f(std::integral_constant<int, 8>{}, std::false_type{});
  f(std::integral_constant<int, 4>{}, std::false_type{});
}

// How the NW warps (4 or 8) of a block share a 64-row chunk product `Width` columns wide: warp w
// owns rows row(w) .. + 15 and columns col(w) .. + 8 NT - 1 (with 8 warps, one half of the
// columns). Each output element is accumulated in the same order for either count (same values).
template <int NW, int Width>
struct WarpTiles {
  static_assert(NW == 4 || NW == 8, "4 or 8 warps");
  static constexpr int NT = Width / 8 / (NW / 4);  // 8-column tiles per warp
  __device__ static int row(int warp) { return 16 * (warp & 3); }
  __device__ static int col(int warp) { return 8 * NT * (warp >> 2); }
};

// A sequential kernel's block (states, dstate): its 64 x kBV chunk products (V', O, dV') as
// WarpTiles, and the carried state tile (KP x kBV) by rows, warp w owning rows srow(w) ..
// srow(w) + 16 MTS.
template <int KP, int NW>
struct SeqTiles : WarpTiles<NW, kBV> {
  static constexpr int MTS = KP / (16 * NW);  // 16-row tiles of the state per warp
  __device__ static int srow(int warp) { return warp * (KP / NW); }
};

template <typename T>
struct Inputs {
  const T *q, *k, *v;     // q_NHK, k_NHK, v_NGV
  const float *g, *beta;  // g_NG, beta_NG
};

// Device workspace; fp32 unless "planes": an fp32 matrix stored pre-split as NF bf16 terms
// (NF = 2 in bf16 mode, 3 in f32 mode; see warp_mma), term i of the matrix at plane i.
struct Work {
  double* gam;         // [q][64] gamma = in-chunk cumulative sum of g (rows >= c repeat the last)
  float* W;            // [q][64][KP] W = Tm diag(beta e^gamma) K (v4, bf16: planes, same bytes)
  float* U;            // [q][64][VP] U = Tm diag(beta) V
  float* P;            // [q][64][64] P = scale (Q K^T) .* Gamma, lower triangle with diagonal
  __nv_bfloat16* Tm;   // planes [q][NF][64][64] (I + A)^-1                 (backward only)
  __nv_bfloat16* Sin;  // planes [q][NF][KP][VP] state entering the chunk    (backward only)
  __nv_bfloat16* Vp;   // planes [q][NF][64][VP] V' = U - W S_in             (backward only)
  __nv_bfloat16* dS;   // planes [q][NF][KP][VP] dL/dS_out of the chunk      (backward only)
  __nv_bfloat16* dVp;  // planes [q][NF][64][VP] dL/dV'                      (backward only)
  float* dA;           // [q][KT][64][64] per-slice parts of -dB_w W^T      (backward only)
  double* gpart;       // [q][KT][64] per-slice parts of dL/dgamma           (backward only)
  float* bpart;        // [q][KT][64] per-slice parts of dL/dbeta            (backward only)
  float* dq;           // [N][G][K] dq per value head (null: v2 with G == H)  (backward only)
  float* dk;           // [N][G][K] dk per value head                        (backward only)
};

// ---- small device helpers -------------------------------------------------------------------

// e^x for x <= 0, flushed to 0 below e^-60 like the CPU reference (no subnormal operands).
__device__ __forceinline__ float exp_nonpos(double x) { return x < -60.0 ? 0.f : expf(float(x)); }

__host__ __device__ constexpr int round_up(int x, int m) { return (x + m - 1) / m * m; }

// Carves 16-byte aligned arrays out of dynamic shared memory; with base == nullptr (host) it
// only adds up the size.
struct Carve {
  unsigned char* base;
  size_t off = 0;
  template <typename E>
  __host__ __device__ E* take(size_t n) {
    E* p = reinterpret_cast<E*>(base + off);
    off += (n * sizeof(E) + 15) / 16 * 16;
    return p;
  }
};

// ---- tile copies global -> shared ----------------------------------------------------------
//
// load_tile(dst, ldd, src, lds, rows, cols, rv, cv): block-wide dst[r][c] = src[r][c] for r < rv,
// c < cv and 0 elsewhere in [rows, cols). When sizes, strides and the source alignment allow,
// it issues 16-byte cp.async copies (zero-filled outside the valid region) and returns at once:
// the caller commits them as a group (cp_async_commit) and waits (cp_async_wait<n>) before the
// __syncthreads that publishes the tile. Otherwise it copies synchronously (8 loads in flight
// per thread), which the same wait + __syncthreads also covers.

template <typename E>
__device__ void load_tile(E* dst, int ldd, const E* src, int64_t lds, int rows, int cols, int rv,
                          int cv) {
  constexpr int VE = 16 / int(sizeof(E));
  if (cv > cols) cv = cols;
  const bool vec = cols % VE == 0 && cv % VE == 0 && lds % VE == 0 && ldd % VE == 0 &&
                   (reinterpret_cast<uintptr_t>(src) & 15) == 0;
  if (vec) {
    const int cpr = cols / VE;
    for (int e = threadIdx.x; e < rows * cpr; e += blockDim.x) {
      const int r = e / cpr, c = (e - r * cpr) * VE;
      const bool ok = r < rv && c < cv;
      cp_async16(dst + r * ldd + c, ok ? src + r * lds + c : src, ok);
    }
  } else {
    const int n = rows * cols, step = int(blockDim.x);
    for (int e0 = threadIdx.x; e0 < n; e0 += 8 * step) {
      E val[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const int e = e0 + u * step, r = e / cols, c = e - r * cols;
        val[u] = (e < n && r < rv && c < cv) ? src[r * lds + c] : from_f32<E>(0.f);
      }
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const int e = e0 + u * step, r = e / cols, c = e - r * cols;
        if (e < n) dst[r * ldd + c] = val[u];
      }
    }
  }
}

// Calls f(std::true_type{}) when W lives in the workspace pre-split (layout v4, bf16 storage:
// two bf16 planes [2][64][KP] in the bytes of the fp32 [64][KP]), else f(std::false_type{}).
// The kernels then load its fragments with ldmatrix instead of splitting fp32 at every load; the
// terms, and so every product, are the same.
template <typename T, typename F>
void with_w_planes(const Dims& d, F&& f) {
  if constexpr (sizeof(T) == 2) {
    if (d.v4) return f(std::true_type{});
  }
  f(std::false_type{});
}

// W of chunk-head q (float index q * 64 * KP) into a shared tile of the fp32 [64][KP + 8]
// bytes: fp32 rows, or (wp) two bf16 planes [2][64][KP + 8] (plane stride 64 (KP + 8)).
template <bool kWP, int KP>
__device__ __forceinline__ void load_w_tile(float* dst, const float* W, int64_t q) {
  constexpr int LD = KP + 8;
  if constexpr (kWP) {
    __nv_bfloat16* b = reinterpret_cast<__nv_bfloat16*>(dst);
    const __nv_bfloat16* src = reinterpret_cast<const __nv_bfloat16*>(W) + q * 2 * kC * KP;
    for (int i = 0; i < 2; ++i)
      load_tile(b + i * kC * LD, LD, src + i * kC * KP, KP, kC, KP, kC, KP);
  } else {
    load_tile(dst, LD, W + q * kC * KP, KP, kC, KP, kC, KP);
  }
}

// ---- warp-level tensor-core products ----------------------------------------------------------
//
// mma.sync m16n8k16 bf16 x bf16 -> fp32. An fp32 operand is split into a sum of bf16 terms
// (hi + mid + ...; each term is the bf16 rounding of what the previous ones left over) and the
// products of the terms whose orders add up to less than the larger term count are summed:
// 2 x 2 terms -> 3 products, error ~2^-16 relative; 3 x 3 -> 6 products, ~fp32 accuracy.
// bf16 storage (inputs q, k, v, do) is exact in one term; fp32 intermediates take 2 terms in bf16
// mode and every operand 3 terms in f32 debug mode, so f32 mode keeps fp32 accuracy through the
// same kernels.
//
// Shared-memory operands, indexed (r, k): r is the row m of A or the column n of B, k the
// contraction index; "k-contiguous" means element (r, k) at p[r * ld + k], else p[k * ld + r].
//   Opnd<float, KC>   fp32, split into terms per fragment load (2 x 32-bit loads per register);
//   Opnd<bf16, KC>    bf16 storage, one term, fragments by ldmatrix (.trans when not KC);
//   Planes<N, KC>     an fp32 matrix stored pre-split as N bf16 planes (term i at p + i * ps),
//                     fragments by ldmatrix: used for the B operands a kernel writes itself.
// ldmatrix needs 16-byte aligned rows: ld a multiple of 8 elements, tile origins multiples of 8.

template <typename T>
constexpr int kFloatTerms = std::is_same_v<T, float> ? 3 : 2;

// Accumulator of the dgamma sums in the backward. dL/dgamma_i adds row and column sums of
// E = dP .* P (and of the WY kernel's E) and per-row dot products whose totals cancel between the
// rows (-r_i on each row, sum_i r_i on the last); the reverse cumulative sum dg_t keeps only the
// pairs across t, which a strong decay makes many orders smaller than the terms. f32 mode sums
// them in double, as the CPU reference does, so that the cancellation is exact and dg keeps fp32
// accuracy relative to itself; bf16 mode keeps float (its shared memory is at the 2-blocks limit).
template <typename T>
using GamAcc = std::conditional_t<std::is_same_v<T, float>, double, float>;

// bf16 terms of an operand of element type E when the storage type is T.
template <typename T, typename E>
constexpr int kTerms = std::is_same_v<E, __nv_bfloat16> ? 1 : kFloatTerms<T>;

template <typename E, bool kKContig>
struct Opnd {
  const E* p;
  int ld;
};

template <int N, bool kKContig>
struct Planes {
  const __nv_bfloat16* p;
  int ld, ps;  // row stride, plane stride (elements)
};

template <typename T, typename O>
struct OpTraits;
template <typename T, typename E, bool KC>
struct OpTraits<T, Opnd<E, KC>> {
  static constexpr int terms = kTerms<T, E>;
};
template <typename T, int N, bool KC>
struct OpTraits<T, Planes<N, KC>> {
  static constexpr int terms = N;
};

// Writes x as N bf16 terms: p[i * ps + idx] = term i.
template <int N>
__device__ __forceinline__ void store_split(__nv_bfloat16* p, int ps, int idx, float x) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const __nv_bfloat16 h = __float2bfloat16_rn(x);
    p[i * ps + idx] = h;
    x -= __bfloat162float(h);
  }
}

// Writes the pair (x0, x1) as N bf16x2 terms: term i at p + i * ps + idx (idx even).
template <int N>
__device__ __forceinline__ void store_split2(__nv_bfloat16* p, int64_t ps, int64_t idx, float x0,
                                             float x1) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);
    *reinterpret_cast<__nv_bfloat162*>(p + i * ps + idx) = h;
    x0 -= __low2float(h);
    x1 -= __high2float(h);
  }
}

// The fp32 value of element idx of N planes (sum of its terms, small first).
template <int N>
__device__ __forceinline__ float planes_value(const __nv_bfloat16* p, int ps, int idx) {
  float x = 0.f;
#pragma unroll
  for (int i = N - 1; i >= 0; --i) x += __bfloat162float(p[i * ps + idx]);
  return x;
}

template <int N>
__device__ __forceinline__ void split_bf16x2(float x0, float x1, uint32_t (&out)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);  // .x (low half) = x0
    out[i] = *reinterpret_cast<const uint32_t*>(&h);
    if (i + 1 < N) {
      x0 -= __low2float(h);
      x1 -= __high2float(h);
    }
  }
}

// fp32 elements (r, k) and (r, k + 1) as N packed bf16x2 terms (k even).
template <int N, bool KC>
__device__ __forceinline__ void load_pair(const Opnd<float, KC>& o, int r, int k,
                                          uint32_t (&out)[N]) {
  float2 x;
  if constexpr (KC)
    x = *reinterpret_cast<const float2*>(o.p + r * o.ld + k);
  else
    x = make_float2(o.p[k * o.ld + r], o.p[(k + 1) * o.ld + r]);
  split_bf16x2<N>(x.x, x.y, out);
}

// A fragment of the 16 x 16 tile at (m0, k0) from a bf16 matrix: a[reg][term] for `term`.
// Lane l addresses row (l & 7) of 8 x 8 matrix q = l >> 3; matrix q is register q of the PTX
// A fragment: (m + 0, k + 0), (m + 8, k + 0), (m + 0, k + 8), (m + 8, k + 8).
template <int N, bool KC>
__device__ __forceinline__ void ldsm_a(const __nv_bfloat16* p, int ld, int m0, int k0, int term,
                                       uint32_t (&a)[4][N]) {
  const int lane = threadIdx.x & 31, q = lane >> 3, rr = lane & 7;
  uint32_t r[4];
  if constexpr (KC)
    ldsm_x4<false>(r, smem_u32(p + (m0 + rr + 8 * (q & 1)) * ld + k0 + 8 * (q >> 1)));
  else
    ldsm_x4<true>(r, smem_u32(p + (k0 + rr + 8 * (q >> 1)) * ld + m0 + 8 * (q & 1)));
#pragma unroll
  for (int i = 0; i < 4; ++i) a[i][term] = r[i];
}

// B fragments of the two 8-column tiles at n0 and n0 + 8 (k0..k0+15): b[tile][reg][term].
// Matrices: (n + 0, k + 0), (n + 0, k + 8), (n + 8, k + 0), (n + 8, k + 8).
template <int N, bool KC>
__device__ __forceinline__ void ldsm_b2(const __nv_bfloat16* p, int ld, int n0, int k0, int term,
                                        uint32_t (&b0)[2][N], uint32_t (&b1)[2][N]) {
  const int lane = threadIdx.x & 31, q = lane >> 3, rr = lane & 7;
  uint32_t r[4];
  if constexpr (KC)
    ldsm_x4<false>(r, smem_u32(p + (n0 + rr + 8 * (q >> 1)) * ld + k0 + 8 * (q & 1)));
  else
    ldsm_x4<true>(r, smem_u32(p + (k0 + rr + 8 * (q & 1)) * ld + n0 + 8 * (q >> 1)));
  b0[0][term] = r[0];
  b0[1][term] = r[1];
  b1[0][term] = r[2];
  b1[1][term] = r[3];
}

template <int N, typename E, bool KC>
__device__ __forceinline__ void frag_a(const Opnd<E, KC>& o, int m0, int k0, uint32_t (&a)[4][N]) {
  if constexpr (std::is_same_v<E, __nv_bfloat16>) {
    ldsm_a<N, KC>(o.p, o.ld, m0, k0, 0, a);
  } else {
    const int lane = threadIdx.x & 31, g = lane >> 2, t2 = (lane & 3) * 2;
    load_pair<N>(o, m0 + g, k0 + t2, a[0]);
    load_pair<N>(o, m0 + g + 8, k0 + t2, a[1]);
    load_pair<N>(o, m0 + g, k0 + t2 + 8, a[2]);
    load_pair<N>(o, m0 + g + 8, k0 + t2 + 8, a[3]);
  }
}
template <int N, int NP, bool KC>
__device__ __forceinline__ void frag_a(const Planes<NP, KC>& o, int m0, int k0,
                                       uint32_t (&a)[4][N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) ldsm_a<N, KC>(o.p + i * o.ps, o.ld, m0, k0, i, a);
}

template <int N, typename E, bool KC>
__device__ __forceinline__ void frag_b2(const Opnd<E, KC>& o, int n0, int k0, uint32_t (&b0)[2][N],
                                        uint32_t (&b1)[2][N]) {
  if constexpr (std::is_same_v<E, __nv_bfloat16>) {
    ldsm_b2<N, KC>(o.p, o.ld, n0, k0, 0, b0, b1);
  } else {
    const int lane = threadIdx.x & 31, g = lane >> 2, t2 = (lane & 3) * 2;
    load_pair<N>(o, n0 + g, k0 + t2, b0[0]);
    load_pair<N>(o, n0 + g, k0 + t2 + 8, b0[1]);
    load_pair<N>(o, n0 + 8 + g, k0 + t2, b1[0]);
    load_pair<N>(o, n0 + 8 + g, k0 + t2 + 8, b1[1]);
  }
}
template <int N, int NP, bool KC>
__device__ __forceinline__ void frag_b2(const Planes<NP, KC>& o, int n0, int k0,
                                        uint32_t (&b0)[2][N], uint32_t (&b1)[2][N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) ldsm_b2<N, KC>(o.p + i * o.ps, o.ld, n0, k0, i, b0, b1);
}

__device__ __forceinline__ void mma16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
  const uint32_t a[4] = {a0, a1, a2, a3};
  cuda::mma16816(d, a, b0, b1);  // the shared one (cuda/mma.cuh)
}

// acc[mi][ni] += A[m0 + 16 mi + 0..15, 0..kdim) B[0..kdim, n0 + 8 ni + 0..7], kdim % 16 == 0,
// NT even. Accumulator layout (PTX m16n8 C fragment): lane = 4 g + t holds rows g, g + 8 and
// columns 2t, 2t + 1 of each 16x8 tile: acc[.][.][e] at (g + 8 (e >> 1), 2t + (e & 1)).
template <typename T, int MT, int NT, typename OA, typename OB>
__device__ __forceinline__ void warp_mma(float (&acc)[MT][NT][4], const OA& a, int m0, const OB& b,
                                         int n0, int kdim) {
  static_assert(NT % 2 == 0, "B fragments come in pairs of 8-column tiles");
  constexpr int TA = OpTraits<T, OA>::terms, TB = OpTraits<T, OB>::terms;
  constexpr int L = (TA > TB ? TA : TB) - 1;
  for (int k0 = 0; k0 < kdim; k0 += 16) {
    uint32_t af[MT][4][TA], bf[NT][2][TB];
#pragma unroll
    for (int mi = 0; mi < MT; ++mi) frag_a<TA>(a, m0 + 16 * mi, k0, af[mi]);
#pragma unroll
    for (int ni = 0; ni < NT; ni += 2) frag_b2<TB>(b, n0 + 8 * ni, k0, bf[ni], bf[ni + 1]);
#pragma unroll
    for (int mi = 0; mi < MT; ++mi)
#pragma unroll
      for (int ni = 0; ni < NT; ++ni)
#pragma unroll
        for (int ia = TA - 1; ia >= 0; --ia)  // small terms first
#pragma unroll
          for (int ib = TB - 1; ib >= 0; --ib)
            if (ia + ib <= L)
              mma16816(acc[mi][ni], af[mi][0][ia], af[mi][1][ia], af[mi][2][ia], af[mi][3][ia],
                       bf[ni][0][ib], bf[ni][1][ib]);
  }
}

template <int MT, int NT>
__device__ __forceinline__ void acc_zero(float (&acc)[MT][NT][4]) {
#pragma unroll
  for (int mi = 0; mi < MT; ++mi)
#pragma unroll
    for (int ni = 0; ni < NT; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;
}

// f(row, col, value&) for every accumulator element of this lane (tile origin m0, n0).
template <int MT, int NT, typename F>
__device__ __forceinline__ void acc_each(float (&acc)[MT][NT][4], int m0, int n0, F&& f) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t2 = (lane & 3) * 2;
#pragma unroll
  for (int mi = 0; mi < MT; ++mi)
#pragma unroll
    for (int ni = 0; ni < NT; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        f(m0 + 16 * mi + g + 8 * (e >> 1), n0 + 8 * ni + t2 + (e & 1), acc[mi][ni][e]);
}

// f(row, col, v0, v1) for each pair of horizontally adjacent accumulator elements (col even).
template <int MT, int NT, typename F>
__device__ __forceinline__ void acc_pairs(float (&acc)[MT][NT][4], int m0, int n0, F&& f) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t2 = (lane & 3) * 2;
#pragma unroll
  for (int mi = 0; mi < MT; ++mi)
#pragma unroll
    for (int ni = 0; ni < NT; ++ni)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh)
        f(m0 + 16 * mi + g + 8 * hh, n0 + 8 * ni + t2, acc[mi][ni][2 * hh],
          acc[mi][ni][2 * hh + 1]);
}

__device__ __forceinline__ void store2(float* p, int64_t idx, float x0, float x1) {
  *reinterpret_cast<float2*>(p + idx) = make_float2(x0, x1);
}

template <typename A>
struct RowPair {
  A x, y;
};

// Sum over this warp's columns of f(row, col, value) for the rows of a [1][NT] accumulator, in
// type A: returns (row m0 + g, row m0 + g + 8) sums, complete in every lane (fixed shuffle order).
template <typename A = float, int NT, typename F>
__device__ __forceinline__ RowPair<A> acc_row_sums(float (&acc)[1][NT][4], int m0, int n0, F&& f) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t2 = (lane & 3) * 2;
  A s0 = 0, s1 = 0;
#pragma unroll
  for (int ni = 0; ni < NT; ++ni) {
    const int c = n0 + 8 * ni + t2;
    s0 += f(m0 + g, c, acc[0][ni][0]) + f(m0 + g, c + 1, acc[0][ni][1]);
    s1 += f(m0 + g + 8, c, acc[0][ni][2]) + f(m0 + g + 8, c + 1, acc[0][ni][3]);
  }
  s0 += __shfl_xor_sync(0xffffffffu, s0, 1);
  s1 += __shfl_xor_sync(0xffffffffu, s1, 1);
  s0 += __shfl_xor_sync(0xffffffffu, s0, 2);
  s1 += __shfl_xor_sync(0xffffffffu, s1, 2);
  return {s0, s1};
}

// ---- host set-up and launchers shared by the forward and the backward (gdn_fwd.cu) ----------

struct Setup {
  Plan plan;  // plan.nch == 0: no tokens, nothing uploaded or allocated
  Dims d;
  Work w;  // backward buffers only when bwd
  int KP;  // 128 for K <= 128, else 256
};

// Validates the arguments (core::Error naming `what`), builds the chunk plan from cu_host,
// uploads it and lays out the cached device workspace.
// nf: bf16 terms of the workspace planes (2 for bf16 storage, 3 for f32).
Setup setup(const char* what, const int32_t* cu_host, int nseg, int64_t N, int64_t H, int64_t G,
            int64_t K, int64_t V, float scale, bool bwd, int nf);

// Per chunk-head: gamma, W, U, P into the workspace, and Tm when store_tm.
template <typename T, int KP>
void launch_prep(const Inputs<T>& in, const Plan& plan, const Dims& d, const Work& w,
                 bool store_tm);

// Sequential state pass over the chunks of each segment, grid (VP / kBV, G, nseg).
// Forward mode (o != nullptr): o_NGV and, when state != nullptr, the final states.
// Recompute mode (o == nullptr): Sin and Vp of every chunk into the workspace.
template <typename T, int KP>
void launch_states(const Inputs<T>& in, const Plan& plan, const Dims& d, const Work& w, T* o,
                   float* state);

}  // namespace deltatron::cuda::gdn
