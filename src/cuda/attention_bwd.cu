// bf16 tensor-core backward of the varlen GQA attention, causal or bidirectional inside each
// segment (BwdArgs::causal): a dQ kernel and a dK/dV kernel,
// both recomputing P = exp2(scale*log2(e) q.k - lse*log2(e)) from the saved lse, with
// D = rowsum(dO * O) precomputed (attention.cu). No atomics: each block owns its output rows.
//
// dQ kernel: one block of 8 warps per (128-row query tile, query head h); warp w owns query rows
// 16w..16w+15 and keeps dQ[16 x Kp] as C fragments (Kp/2 floats). Per key tile (in order):
// dP = dO V^T, then per half of 32 keys S = Q K^T, dS = P (dP - D) -> bf16 A fragments,
// dQ += dS K (halves keep S next to dQ and dP within the register budget). Finally dQ *= scale.
// Bidirectional: every key tile of the segment, keys past its end masked (their zero-filled K
// rows would give P = exp(-lse) != 0).
// Shared memory: Q, dO [128][Kp + 8], K, V [64][Kp + 8] bf16 = 202,752 B at Kp = 256.
// Sync points: the V[kb+1] load is issued once K[kb] is ready and overlaps S and dQ += dS K; the
// K[kb+1] load is issued after dQ += dS K and overlaps the next dP = dO V^T.
//
// dK/dV kernel: one block of 8 warps per (64-key tile, kv head j, head split); the block loops over
// the query heads h of its share of the group (in order) and the 64-row query tiles that see its
// keys (in order: causal, the tiles from its first key on; bidirectional, every tile of the
// segment from row 0). Warp w computes S^T = K Q^T and dP^T = V dO^T for keys 16(w%4).. and queries
// 32(w/4).., writes P^T and dS^T = P^T (dP^T - D) as bf16 to shared memory, then accumulates
// dV += P^T dO and dK += dS^T Q for keys 32(w%2)..+31 and head dims (Kp/4)(w/2).. in registers
// (Kp/4 floats each; 32-row warp tiles feed each dO / Q fragment to two products, which cuts
// the shared-memory reads of this half by a third). Finally dK *= scale.
// Shared memory: K, V [64][Kp + 8], double-buffered Q, dO [2][64][Kp + 8], P^T, dS^T [64][72]
// bf16, lse, D [2][64] fp32 = 222,208 B at Kp = 256 (one block per SM).
// Sync points per query tile: (1) tile ready (the next tile's loads are issued just before, into
// the other buffer), (2) P^T, dS^T written, (3) all reads done before the buffers are reused.
// With one split the block writes dK, dV in the storage type; with s > 1 splits (a pack dominated
// by one long segment, see attention.cu) it writes fp32 partials [s][N][J][Kp] that a second
// kernel sums in split order.
#include "cuda/attention_common.cuh"

namespace deltatron::cuda::attn {

namespace {

// k-steps of the Q K^T-type products unrolled at once: full unrolling of the Kp/16 = 16 steps
// spilled at Kp = 256 (255 registers); 4 keeps both kernels spill-free and measured fastest.
constexpr int kUnrollBwd = 4;

template <int kKp>
struct DqTileCfg {
  static constexpr int kThreads = 256, kRows = kDqRows, kLd = kKp + 8;
  static constexpr size_t kSmem = size_t(2 * kRows + 2 * kBlockKeys) * kLd * sizeof(bf16);
};

template <int kKp>
__global__ void __launch_bounds__(256, 1)
    attention_dq_kernel(const __grid_constant__ TileList tl, const BwdArgs p) {
  using C = DqTileCfg<kKp>;
  constexpr int kLd = C::kLd, kNT = kKp / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw);
  bf16* sdO = sQ + C::kRows * kLd;
  bf16* sK = sdO + C::kRows * kLd;
  bf16* sV = sK + kBlockKeys * kLd;

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int h = blockIdx.x % p.H, ti = blockIdx.x / p.H;
  const int seg = tl.seg[ti], r0 = tl.row[ti];
  const int a = p.cu[seg], L = p.cu[seg + 1] - a;
  const int j = h / (p.H / p.J);
  const int nq = min(C::kRows, L - r0);
  const int nkt = ((p.causal ? r0 + nq : L) + kBlockKeys - 1) / kBlockKeys;
  const int key_end = p.causal ? INT_MAX : L;  // keys at or past this are masked (bidirectional)
  const int64_t ldq = int64_t(p.H) * p.K, ldk = int64_t(p.J) * p.K;
  const int64_t qoff = (int64_t(a + r0) * p.H + h) * p.K;
  const bf16* k = p.k + (int64_t(a) * p.J + j) * p.K;
  const bf16* v = p.v + (int64_t(a) * p.J + j) * p.K;

  load_tile<C::kRows, kKp, C::kThreads>(sQ, p.q + qoff, ldq, nq, p.K, p.vec);
  load_tile<C::kRows, kKp, C::kThreads>(sdO, p.dout + qoff, ldq, nq, p.K, p.vec);
  load_tile<kBlockKeys, kKp, C::kThreads>(sV, v, ldk, min(kBlockKeys, L), p.K, p.vec);
  cp_async_commit();
  load_tile<kBlockKeys, kKp, C::kThreads>(sK, k, ldk, min(kBlockKeys, L), p.K, p.vec);
  cp_async_commit();

  const int row0 = r0 + warp * 16 + g;  // segment-local row of c[.][0..1]; c[.][2..3] is +8
  float lse2[2], Dr[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = row0 + i * 8;
    const int64_t nh = int64_t(a + row) * p.H + h;
    lse2[i] = row < L ? p.lse[nh] * kLog2e : 0.f;  // rows past the end: Q = dO = 0 -> dS = 0
    Dr[i] = row < L ? p.D[nh] : 0.f;
  }
  const float c2 = p.scale * kLog2e;

  float dq[kNT][4];
#pragma unroll
  for (int n = 0; n < kNT; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.f;

  for (int kb = 0; kb < nkt; ++kb) {
    cp_async_wait<1>();
    __syncthreads();  // Q, dO, V[kb] ready
    float dp[8][4];
#pragma unroll
    for (int n = 0; n < 8; ++n) dp[n][0] = dp[n][1] = dp[n][2] = dp[n][3] = 0.f;
    mma_abt<8, kKp, kUnrollBwd>(dp, sdO + warp * 16 * kLd, kLd, sV, kLd, lane);

    cp_async_wait<0>();
    __syncthreads();  // K[kb] ready; every warp is done with V[kb]
    if (kb + 1 < nkt) {
      load_tile<kBlockKeys, kKp, C::kThreads>(sV, v + int64_t(kb + 1) * kBlockKeys * ldk, ldk,
                                              min(kBlockKeys, L - (kb + 1) * kBlockKeys), p.K,
                                              p.vec);
    }
    cp_async_commit();  // possibly empty: keeps the group count uniform

    // S, dS and dQ += dS K in two halves of 32 keys (fewer live registers next to dQ and dP).
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float s[4][4];
#pragma unroll
      for (int n = 0; n < 4; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
      mma_abt<4, kKp, kUnrollBwd>(s, sQ + warp * 16 * kLd, kLd, sK + hh * 32 * kLd, kLd, lane);
#pragma unroll
      for (int n = 0; n < 4; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = kb * kBlockKeys + hh * 32 + n * 8 + 2 * t + (e & 1);
          const int row = row0 + (e >> 1) * 8;
          const bool masked = p.causal ? col > row : col >= key_end;
          const float pe = masked ? 0.f : exp2f(s[n][e] * c2 - lse2[e >> 1]);
          s[n][e] = pe * (dp[hh * 4 + n][e] - Dr[e >> 1]);
        }
      uint32_t da[2][4];
      c_to_a<2>(s, da);
      mma_ab_reg<2, kNT>(dq, da, sK + hh * 32 * kLd, kLd, lane);
    }

    __syncthreads();  // every warp is done with K[kb]
    if (kb + 1 < nkt) {
      load_tile<kBlockKeys, kKp, C::kThreads>(sK, k + int64_t(kb + 1) * kBlockKeys * ldk, ldk,
                                              min(kBlockKeys, L - (kb + 1) * kBlockKeys), p.K,
                                              p.vec);
    }
    cp_async_commit();
  }

  bf16* so = sQ + (warp * 16 + g) * kLd + 2 * t;  // this warp's rows: only it reads them
#pragma unroll
  for (int n = 0; n < kNT; ++n) {
    *reinterpret_cast<uint32_t*>(so + n * 8) = pack_bf16(dq[n][0] * p.scale, dq[n][1] * p.scale);
    *reinterpret_cast<uint32_t*>(so + 8 * kLd + n * 8) =
        pack_bf16(dq[n][2] * p.scale, dq[n][3] * p.scale);
  }
  __syncthreads();
  store_tile<C::kRows, kKp, C::kThreads>(sQ, p.dq + qoff, ldq, nq, p.K, p.vec);
}

template <int kKp>
struct DkvTileCfg {
  static constexpr int kThreads = 256, kKeys = kDkvRows, kRows = 64, kLd = kKp + 8, kLdP = 72;
  static constexpr size_t kTile = size_t(64) * kLd;  // elements of one [64][Kp + 8] tile
  static constexpr size_t kSmem =
      6 * kTile * sizeof(bf16) + 2 * 64 * kLdP * sizeof(bf16) + 4 * 64 * sizeof(float);
};

template <int kKp>
__global__ void __launch_bounds__(256, 1)
    attention_dkdv_kernel(const __grid_constant__ TileList tl, const BwdArgs p) {
  using C = DkvTileCfg<kKp>;
  constexpr int kLd = C::kLd, kLdP = C::kLdP, kNT = kKp / 32;  // n-tiles per warp (Kp/4 dims)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* sK = reinterpret_cast<bf16*>(smem_raw);
  bf16* sV = sK + C::kTile;
  bf16* sQ = sV + C::kTile;                               // [2] stages
  bf16* sdO = sQ + 2 * C::kTile;                          // [2] stages
  bf16* sP = sdO + 2 * C::kTile;                          // P^T [64 keys][72]
  bf16* sdS = sP + 64 * kLdP;                             // dS^T [64 keys][72]
  float* sL = reinterpret_cast<float*>(sdS + 64 * kLdP);  // [2][64] lse * log2(e)
  float* sD = sL + 2 * 64;                                // [2][64] D

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int heads = p.J * p.splits;
  const int jj = blockIdx.x % heads, ti = blockIdx.x / heads;
  const int j = jj / p.splits, split = jj % p.splits;
  const int G = p.H / p.J, Gs = G / p.splits, h0 = j * G + split * Gs;
  const int seg = tl.seg[ti], c0 = tl.row[ti];
  const int a = p.cu[seg], L = p.cu[seg + 1] - a;
  const int nk = min(C::kKeys, L - c0);
  const int q0 = p.causal ? c0 : 0;                    // first query row that sees the keys
  const int nqt = (L - q0 + C::kRows - 1) / C::kRows;  // query tiles q0 + 64i that see the keys
  const int T = Gs * nqt;
  const int64_t ldq = int64_t(p.H) * p.K, ldk = int64_t(p.J) * p.K;
  const int64_t koff = (int64_t(a + c0) * p.J + j) * p.K;

  // Stage `st` <- Q, dO, lse, D of step `it` (head h0 + it / nqt, query tile it % nqt).
  auto load_step = [&](int st, int it) {
    const int h = h0 + it / nqt, qr0 = q0 + (it % nqt) * C::kRows;
    const int nr = min(C::kRows, L - qr0);
    const int64_t qoff = (int64_t(a + qr0) * p.H + h) * p.K;
    load_tile<C::kRows, kKp, C::kThreads>(sQ + st * C::kTile, p.q + qoff, ldq, nr, p.K, p.vec);
    load_tile<C::kRows, kKp, C::kThreads>(sdO + st * C::kTile, p.dout + qoff, ldq, nr, p.K, p.vec);
    for (int i = threadIdx.x; i < C::kRows; i += C::kThreads) {
      const int64_t nh = int64_t(a + qr0 + i) * p.H + h;
      sL[st * 64 + i] = i < nr ? p.lse[nh] * kLog2e : 0.f;
      sD[st * 64 + i] = i < nr ? p.D[nh] : 0.f;
    }
  };

  load_tile<C::kKeys, kKp, C::kThreads>(sK, p.k + koff, ldk, nk, p.K, p.vec);
  load_tile<C::kKeys, kKp, C::kThreads>(sV, p.v + koff, ldk, nk, p.K, p.vec);
  load_step(0, 0);
  cp_async_commit();

  const int kr = (warp & 3) * 16;          // this warp's key rows of S^T, dP^T
  const int qc = (warp >> 2) * 32;         // this warp's query columns of S^T, dP^T
  const int kr2 = (warp & 1) * 32;         // this warp's key rows of dK, dV
  const int dc = (warp >> 1) * (kKp / 4);  // this warp's head-dim columns of dK, dV
  const int key0 = c0 + kr + g;            // segment-local key of c[.][0..1]; [2..3] is +8
  const float c2 = p.scale * kLog2e;
  float dk[2][kNT][4], dv[2][kNT][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int n = 0; n < kNT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) dk[mt][n][e] = dv[mt][n][e] = 0.f;

  for (int it = 0; it < T; ++it) {
    const int st = it & 1;
    if (it + 1 < T) {
      load_step(st ^ 1, it + 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // (1) stage st ready
    const bf16* q = sQ + st * C::kTile;
    const bf16* dO = sdO + st * C::kTile;
    const float* lse2 = sL + st * 64;
    const float* Dq = sD + st * 64;
    const int qr0 = q0 + (it % nqt) * C::kRows;

    float s[4][4], dp[4][4];
#pragma unroll
    for (int n = 0; n < 4; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.f;
    mma_abt<4, kKp, kUnrollBwd>(s, sK + kr * kLd, kLd, q + qc * kLd, kLd, lane);
    mma_abt<4, kKp, kUnrollBwd>(dp, sV + kr * kLd, kLd, dO + qc * kLd, kLd, lane);
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      float pv[4], dsv[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = qc + n * 8 + 2 * t + (e & 1);  // query column within the tile
        const int qrow = qr0 + col, key = key0 + (e >> 1) * 8;
        // Keys past the segment end (rows of a partial tile) are never stored: not masked.
        const bool seen = (!p.causal || qrow >= key) && qrow < L;
        pv[e] = seen ? exp2f(s[n][e] * c2 - lse2[col]) : 0.f;
        dsv[e] = pv[e] * (dp[n][e] - Dq[col]);
      }
      const int off = (kr + g) * kLdP + qc + n * 8 + 2 * t;
      *reinterpret_cast<uint32_t*>(sP + off) = pack_bf16(pv[0], pv[1]);
      *reinterpret_cast<uint32_t*>(sP + off + 8 * kLdP) = pack_bf16(pv[2], pv[3]);
      *reinterpret_cast<uint32_t*>(sdS + off) = pack_bf16(dsv[0], dsv[1]);
      *reinterpret_cast<uint32_t*>(sdS + off + 8 * kLdP) = pack_bf16(dsv[2], dsv[3]);
    }
    __syncthreads();  // (2) P^T, dS^T complete
    mma_ab_smem<2, 4, kNT>(dv, sP + kr2 * kLdP, kLdP, dO + dc, kLd, lane);
    mma_ab_smem<2, 4, kNT>(dk, sdS + kr2 * kLdP, kLdP, q + dc, kLd, lane);
    __syncthreads();  // (3) stage st, P^T and dS^T free for reuse
  }

  if (p.splits == 1) {
    // dK, dV in the storage type, staged through the (now free) K and V tiles.
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      bf16* sk = sK + (kr2 + mt * 16 + g) * kLd + dc + 2 * t;
      bf16* sv = sV + (kr2 + mt * 16 + g) * kLd + dc + 2 * t;
#pragma unroll
      for (int n = 0; n < kNT; ++n) {
        *reinterpret_cast<uint32_t*>(sk + n * 8) =
            pack_bf16(dk[mt][n][0] * p.scale, dk[mt][n][1] * p.scale);
        *reinterpret_cast<uint32_t*>(sk + 8 * kLd + n * 8) =
            pack_bf16(dk[mt][n][2] * p.scale, dk[mt][n][3] * p.scale);
        *reinterpret_cast<uint32_t*>(sv + n * 8) = pack_bf16(dv[mt][n][0], dv[mt][n][1]);
        *reinterpret_cast<uint32_t*>(sv + 8 * kLd + n * 8) = pack_bf16(dv[mt][n][2], dv[mt][n][3]);
      }
    }
    __syncthreads();
    store_tile<C::kKeys, kKp, C::kThreads>(sK, p.dk + koff, ldk, nk, p.K, p.vec);
    store_tile<C::kKeys, kKp, C::kThreads>(sV, p.dv + koff, ldk, nk, p.K, p.vec);
  } else {
    // fp32 partials [splits][N][J][Kp], written straight from the fragments (8-byte stores).
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int key = kr2 + mt * 16 + g + 8 * i;  // tile-local
        if (key >= nk) continue;
        const int64_t base = ((int64_t(split) * p.N + a + c0 + key) * p.J + j) * kKp + dc + 2 * t;
#pragma unroll
        for (int n = 0; n < kNT; ++n) {
          *reinterpret_cast<float2*>(p.dk_part + base + n * 8) =
              make_float2(dk[mt][n][2 * i] * p.scale, dk[mt][n][2 * i + 1] * p.scale);
          *reinterpret_cast<float2*>(p.dv_part + base + n * 8) =
              make_float2(dv[mt][n][2 * i], dv[mt][n][2 * i + 1]);
        }
      }
  }
}

template <int kKp>
void launch_dq(const std::vector<Tile>& tiles, const BwdArgs& a) {
  using C = DqTileCfg<kKp>;
  DT_CUDA_CHECK(cudaFuncSetAttribute(attention_dq_kernel<kKp>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, int(C::kSmem)));
  for_each_chunk(tiles, [&](const TileList& tl) {
    attention_dq_kernel<kKp><<<tl.count * a.H, C::kThreads, C::kSmem>>>(tl, a);
    DT_CUDA_CHECK(cudaGetLastError());
  });
}

template <int kKp>
void launch_dkdv(const std::vector<Tile>& tiles, const BwdArgs& a) {
  using C = DkvTileCfg<kKp>;
  DT_CUDA_CHECK(cudaFuncSetAttribute(attention_dkdv_kernel<kKp>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, int(C::kSmem)));
  for_each_chunk(tiles, [&](const TileList& tl) {
    attention_dkdv_kernel<kKp><<<tl.count * a.J * a.splits, C::kThreads, C::kSmem>>>(tl, a);
    DT_CUDA_CHECK(cudaGetLastError());
  });
}

}  // namespace

void launch_dq_tc(int Kp, const std::vector<Tile>& tiles, const BwdArgs& a) {
  switch (Kp) {
    case 64:
      return launch_dq<64>(tiles, a);
    case 128:
      return launch_dq<128>(tiles, a);
    default:
      return launch_dq<256>(tiles, a);
  }
}

void launch_dkdv_tc(int Kp, const std::vector<Tile>& tiles, const BwdArgs& a) {
  switch (Kp) {
    case 64:
      return launch_dkdv<64>(tiles, a);
    case 128:
      return launch_dkdv<128>(tiles, a);
    default:
      return launch_dkdv<256>(tiles, a);
  }
}

}  // namespace deltatron::cuda::attn
