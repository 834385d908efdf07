// Internals shared by the CUDA attention files: tile plans, kernel arguments, and the bf16
// tensor-core building blocks (cp.async tile loads, ldmatrix, mma.sync m16n8k16 warp products).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <vector>

#include "cuda/device.h"
#include "cuda/mma.cuh"

namespace deltatron::cuda::attn {

using bf16 = __nv_bfloat16;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kBlockKeys = 64;  // keys per key tile in every tensor-core kernel

// ---- tile plans ------------------------------------------------------------------------------

// One tile: rows [row, row + tile rows) of segment seg (segment-local rows).
struct Tile {
  int32_t seg, row;
  int64_t cost;
};

// A chunk of tiles passed to a kernel by value (__grid_constant__): 448 tiles = 3.6 KB keeps
// every kernel's parameters under the 4 KB limit. Bigger plans are launched in chunks.
constexpr int kMaxTiles = 448;
struct TileList {
  int32_t count;
  int32_t seg[kMaxTiles];
  int32_t row[kMaxTiles];
};

// Tiles of `rows` rows of every segment, most expensive first (longest-processing-time order, so
// the long causal rows do not start last). Query tiles (by_keys = false) cost the key tiles they
// see; key tiles (by_keys = true) cost the query rows that see them, in units of 64. Without the
// causal mask every tile of a segment sees the whole segment (cost L / 64).
inline std::vector<Tile> plan_tiles(const int32_t* cu_host, int nseg, int rows, bool by_keys,
                                    bool causal = true) {
  std::vector<Tile> tiles;
  for (int s = 0; s < nseg; ++s) {
    const int L = cu_host[s + 1] - cu_host[s];
    for (int r0 = 0; r0 < L; r0 += rows) {
      const int r1 = std::min(L, r0 + rows);
      const int64_t cost = !causal ? (L + 63) / 64 : by_keys ? (L - r0 + 63) / 64 : (r1 + 63) / 64;
      tiles.push_back({s, r0, cost});
    }
  }
  std::stable_sort(tiles.begin(), tiles.end(),
                   [](const Tile& a, const Tile& b) { return a.cost > b.cost; });
  return tiles;
}

// Calls launch(list) for consecutive chunks of at most kMaxTiles tiles.
template <typename Launch>
void for_each_chunk(const std::vector<Tile>& tiles, Launch&& launch) {
  for (size_t c = 0; c < tiles.size(); c += kMaxTiles) {
    TileList tl;
    tl.count = int32_t(std::min<size_t>(kMaxTiles, tiles.size() - c));
    for (int i = 0; i < tl.count; ++i) {
      tl.seg[i] = tiles[c + i].seg;
      tl.row[i] = tiles[c + i].row;
    }
    launch(tl);
  }
}

// ---- kernel arguments ------------------------------------------------------------------------

struct FwdArgs {
  const bf16 *q, *k, *v;
  bf16* o;
  float* lse;
  const int32_t* cu;
  int H, J, K;
  float scale;
  bool vec;     // K % 8 == 0 and every pointer 16-byte aligned: 16-byte cp.async / stores
  bool causal;  // false: every key of the segment (the vision tower's bidirectional attention)
};

struct BwdArgs {
  const bf16 *q, *k, *v, *dout;
  const float *lse, *D;
  bf16 *dq, *dk, *dv;
  float *dk_part, *dv_part;  // [splits, N, J, Kp] when splits > 1
  const int32_t* cu;
  int64_t N;
  int H, J, K, splits;
  float scale;
  bool vec;
  bool causal;  // false: every query of the segment sees every key of it
};

// Launchers (one instantiation per padded head dim Kp in {64, 128, 256}).
void launch_fwd_tc(int Kp, const std::vector<Tile>& tiles, const FwdArgs& a);
void launch_dq_tc(int Kp, const std::vector<Tile>& tiles, const BwdArgs& a);
void launch_dkdv_tc(int Kp, const std::vector<Tile>& tiles, const BwdArgs& a);
constexpr int kFwdRows = 64;  // query rows per forward tile
constexpr int kDqRows = 128;  // query rows per dQ tile
constexpr int kDkvRows = 64;  // key rows per dK/dV tile

// ---- device building blocks -------------------------------------------------------------------

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Per-lane ldmatrix row/column offsets inside a 16x16 block. A operand (and any x4 load whose
// registers go m-major): matrices (r0-7,c0-7), (r8-15,c0-7), (r0-7,c8-15), (r8-15,c8-15).
__device__ __forceinline__ int frag_row_a(int lane) { return (lane & 7) + ((lane >> 3) & 1) * 8; }
__device__ __forceinline__ int frag_col_a(int lane) { return (lane >> 4) * 8; }
// B operand stored [n][k] (non-transposed load): (n0-7,k0-7), (n0-7,k8-15), (n8-15,k0-7), ...
__device__ __forceinline__ int frag_row_bn(int lane) { return (lane & 7) + (lane >> 4) * 8; }
__device__ __forceinline__ int frag_col_bn(int lane) { return ((lane >> 3) & 1) * 8; }

// acc[16 x 8kNT] += A[16 x kKd] B[8kNT x kKd]^T; A rows at sA (stride lda), B rows at sB (stride
// ldb), both k-contiguous in shared memory. kUnroll: k-steps unrolled (fewer live fragments).
template <int kNT, int kKd, int kUnroll = kKd / 16>
__device__ __forceinline__ void mma_abt(float (&acc)[kNT][4], const bf16* sA, int lda,
                                        const bf16* sB, int ldb, int lane) {
  static_assert(kNT % 2 == 0 && kKd % 16 == 0);
  const uint32_t pa = smem_u32(sA + frag_row_a(lane) * lda + frag_col_a(lane));
  const uint32_t pb = smem_u32(sB + frag_row_bn(lane) * ldb + frag_col_bn(lane));
#pragma unroll kUnroll
  for (int ks = 0; ks < kKd / 16; ++ks) {
    uint32_t a[4];
    ldsm_x4<false>(a, pa + ks * 32);
#pragma unroll
    for (int np = 0; np < kNT / 2; ++np) {
      uint32_t b[4];
      ldsm_x4<false>(b, pb + (np * 16 * ldb + ks * 16) * 2);
      mma16816(acc[2 * np], a, b[0], b[1]);
      mma16816(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// acc[16 x 8kNT] += A[16 x 16kKS] B[16kKS x 8kNT]; A as register fragments, B stored [k][n]
// (n-contiguous) at sB with stride ldb, read with transposing ldmatrix.
template <int kKS, int kNT>
__device__ __forceinline__ void mma_ab_reg(float (&acc)[kNT][4], const uint32_t (&a)[kKS][4],
                                           const bf16* sB, int ldb, int lane) {
  static_assert(kNT % 2 == 0);
  const uint32_t pb = smem_u32(sB + frag_row_a(lane) * ldb + frag_col_a(lane));
#pragma unroll
  for (int ks = 0; ks < kKS; ++ks) {
#pragma unroll
    for (int np = 0; np < kNT / 2; ++np) {
      uint32_t b[4];
      ldsm_x4<true>(b, pb + (ks * 16 * ldb + np * 16) * 2);
      mma16816(acc[2 * np], a[ks], b[0], b[1]);
      mma16816(acc[2 * np + 1], a[ks], b[2], b[3]);
    }
  }
}

// acc[16kMT x 8kNT] += A[16kMT x 16kKS] B[16kKS x 8kNT]; A stored [m][k] at sA (stride lda),
// B stored [k][n] at sB (stride ldb, transposing ldmatrix). Each B fragment feeds kMT products.
template <int kMT, int kKS, int kNT>
__device__ __forceinline__ void mma_ab_smem(float (&acc)[kMT][kNT][4], const bf16* sA, int lda,
                                            const bf16* sB, int ldb, int lane) {
  static_assert(kNT % 2 == 0);
  const uint32_t pa = smem_u32(sA + frag_row_a(lane) * lda + frag_col_a(lane));
  const uint32_t pb = smem_u32(sB + frag_row_a(lane) * ldb + frag_col_a(lane));
#pragma unroll
  for (int ks = 0; ks < kKS; ++ks) {
    uint32_t a[kMT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) ldsm_x4<false>(a[mt], pa + (mt * 16 * lda + ks * 16) * 2);
#pragma unroll
    for (int np = 0; np < kNT / 2; ++np) {
      uint32_t b[4];
      ldsm_x4<true>(b, pb + (ks * 16 * ldb + np * 16) * 2);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        mma16816(acc[mt][2 * np], a[mt], b[0], b[1]);
        mma16816(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

// Accumulators of a 16 x 16kKS tile (c[2kKS][4]) as bf16 A fragments for the next product.
template <int kKS>
__device__ __forceinline__ void c_to_a(const float (&c)[2 * kKS][4], uint32_t (&a)[kKS][4]) {
#pragma unroll
  for (int ks = 0; ks < kKS; ++ks) {
    a[ks][0] = pack_bf16(c[2 * ks][0], c[2 * ks][1]);
    a[ks][1] = pack_bf16(c[2 * ks][2], c[2 * ks][3]);
    a[ks][2] = pack_bf16(c[2 * ks + 1][0], c[2 * ks + 1][1]);
    a[ks][3] = pack_bf16(c[2 * ks + 1][2], c[2 * ks + 1][3]);
  }
}

// Shared tile [kRows][kKp + 8] (the 16-byte pad per row makes ldmatrix conflict-free) <- rows
// [0, nrows) x cols [0, K) of a global matrix with row stride ld; the rest of the tile is zero.
// vec: 16-byte cp.async (caller commits and waits); else plain loads and stores.
template <int kRows, int kKp, int kThreads>
__device__ __forceinline__ void load_tile(bf16* s, const bf16* g, int64_t ld, int nrows, int K,
                                          bool vec) {
  constexpr int kLd = kKp + 8;
  if (vec) {
    constexpr int kPerRow = kKp / 8;
#pragma unroll 4
    for (int c = threadIdx.x; c < kRows * kPerRow; c += kThreads) {
      const int r = c / kPerRow, col = (c % kPerRow) * 8;
      const bool ok = r < nrows && col < K;
      cp_async16(s + r * kLd + col, ok ? g + r * ld + col : g, ok);
    }
  } else {
#pragma unroll 1
    for (int e = threadIdx.x; e < kRows * kKp; e += kThreads) {
      const int r = e / kKp, col = e % kKp;
      s[r * kLd + col] = (r < nrows && col < K) ? g[r * ld + col] : __float2bfloat16_rn(0.f);
    }
  }
}

// Global rows [0, nrows) x cols [0, K) <- shared tile [kRows][kKp + 8].
template <int kRows, int kKp, int kThreads>
__device__ __forceinline__ void store_tile(const bf16* s, bf16* g, int64_t ld, int nrows, int K,
                                           bool vec) {
  constexpr int kLd = kKp + 8;
  if (vec) {
    constexpr int kPerRow = kKp / 8;
    for (int c = threadIdx.x; c < kRows * kPerRow; c += kThreads) {
      const int r = c / kPerRow, col = (c % kPerRow) * 8;
      if (r < nrows && col < K)
        *reinterpret_cast<uint4*>(g + r * ld + col) =
            *reinterpret_cast<const uint4*>(s + r * kLd + col);
    }
  } else {
#pragma unroll 1
    for (int e = threadIdx.x; e < kRows * kKp; e += kThreads) {
      const int r = e / kKp, col = e % kKp;
      if (r < nrows && col < K) g[r * ld + col] = s[r * kLd + col];
    }
  }
}

}  // namespace deltatron::cuda::attn
