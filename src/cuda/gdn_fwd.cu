// CUDA chunked gated delta rule, forward: chunk plan and workspace, the per-chunk WY preparation
// kernel and the sequential state kernel (also used by the backward to recompute the states).
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "cuda/gdn.h"
#include "cuda/gdn_common.cuh"

namespace deltatron::cuda::gdn {
namespace {

// ---- gdn_prep_kernel -------------------------------------------------------------------------
// One block (NW = 4 warps; 8 in layout v3) per chunk-head (grid nch x G). Computes, for the
// c <= 64 rows of the chunk: gamma = cumsum(g) (double), M = K K^T and QK = Q K^T (warp w owns rows
// 16 (w & 3) .. + 15 and, with 8 warps, one 32-column half),
//   A = strict_lower(diag(beta) M .* Gamma), P = scale QK .* Gamma (lower with diagonal),
//   Tm = (I + A)^-1 by blocks of 16: each warp inverts its diagonal block by forward
//   substitution, then the off-diagonal blocks T_IJ = -T_II sum_{M=J}^{I-1} A_IM T_MJ by block
//   distance (2 syncs each), then W = Tm diag(beta e^gamma) K and U = Tm diag(beta) V (V in
//   64-column tiles). Rows >= c have beta = 0 and zero k/q/v, so their W, U, P rows are 0.
// Shared memory: K and Q/V tiles (T, [64][KP+8]), A and Tm ([64][72] fp32), 3 scratch 16x16
// blocks; 76 KB for bf16 / KP = 128. Syncs: loads, gamma scan, A/P, 4 for the inversion, W, U.
template <typename T, int KP>
struct PrepSmem {
  static constexpr int LDK = KP + 8, LDA = 72, LDX = 17;
  T *ks, *xs;
  float *as, *ts, *xsc, *bs, *eg;
  double* gs;
  size_t bytes;
  __host__ __device__ explicit PrepSmem(unsigned char* base) {
    Carve c{base};
    ks = c.take<T>(kC * LDK);
    xs = c.take<T>(kC * LDK);
    as = c.take<float>(kC * LDA);
    ts = c.take<float>(kC * LDA);
    xsc = c.take<float>(3 * 16 * LDX);
    gs = c.take<double>(kC);
    bs = c.take<float>(kC);
    eg = c.take<float>(kC);
    bytes = c.off;
  }
};

template <typename T, int KP, int NW, bool kWP>
__global__ void __launch_bounds__(32 * NW, NW == 8 ? 2 : 0)
    gdn_prep_kernel(Inputs<T> in, Plan plan, Dims d, Work w, bool store_tm) {
  extern __shared__ __align__(16) unsigned char smem[];
  using S = PrepSmem<T, KP>;
  constexpr int LDK = S::LDK, LDA = S::LDA, LDX = S::LDX;
  using Tiles = WarpTiles<NW, 64>;  // each 64-wide product
  constexpr int NT = Tiles::NT;
  S s(smem);
  const int ci = blockIdx.x, j = blockIdx.y, h = j / d.R;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int rb = Tiles::row(warp), cb = Tiles::col(warp);
  const int t0 = plan.chunk_t0[ci], c = plan.chunk_len[ci];
  const int64_t qj = int64_t(ci) * d.G + j;
  const int kd = round_up(d.K, 16), cd = round_up(c, 16);

  const int64_t qk_off = (int64_t(t0) * d.H + h) * d.K, ldqk = int64_t(d.H) * d.K;
  load_tile(s.ks, LDK, in.k + qk_off, ldqk, kC, KP, c, d.K);
  load_tile(s.xs, LDK, in.q + qk_off, ldqk, kC, KP, c, d.K);
  cp_async_commit();
  if (tid < kC) {
    s.gs[tid] = tid < c ? double(in.g[(t0 + tid) * int64_t(d.G) + j]) : 0.0;
    s.bs[tid] = tid < c ? in.beta[(t0 + tid) * int64_t(d.G) + j] : 0.f;
  }
  for (int e = tid; e < kC * LDA; e += blockDim.x) s.ts[e] = 0.f;
  cp_async_wait<0>();
  __syncthreads();
  if (tid == 0) {
    double acc = 0;
    for (int i = 0; i < kC; ++i) {
      acc += s.gs[i];
      s.gs[i] = acc;
    }
  }
  __syncthreads();
  if (tid < kC) {
    s.eg[tid] = exp_nonpos(s.gs[tid]);
    w.gam[qj * kC + tid] = s.gs[tid];
  }
  {  // A and P
    float am[1][NT][4], ap[1][NT][4];
    acc_zero(am);
    acc_zero(ap);
    const Opnd<T, true> kop{s.ks, LDK}, qop{s.xs, LDK};
    warp_mma<T>(am, kop, rb, kop, cb, kd);
    warp_mma<T>(ap, qop, rb, kop, cb, kd);
    acc_each(am, rb, cb, [&](int i, int jj, float& v) {
      s.as[i * LDA + jj] = jj < i ? s.bs[i] * v * exp_nonpos(s.gs[i] - s.gs[jj]) : 0.f;
    });
    float* Pq = w.P + qj * kC * kC;
    acc_pairs(ap, rb, cb, [&](int i, int jj, float v0, float v1) {
      const float p0 = jj <= i ? d.scale * v0 * exp_nonpos(s.gs[i] - s.gs[jj]) : 0.f;
      const float p1 = jj + 1 <= i ? d.scale * v1 * exp_nonpos(s.gs[i] - s.gs[jj + 1]) : 0.f;
      store2(Pq, i * kC + jj, p0, p1);
    });
  }
  __syncthreads();
  // V in 64-column tiles, alternating between the Q buffer (free now) and the K buffer (free
  // after W); tile i is committed as its own group.
  const int nvt = (d.VP + 63) / 64;
  auto load_v = [&](int i) {
    load_tile((i & 1) ? s.ks : s.xs, LDK, in.v + (int64_t(t0) * d.G + j) * d.V + 64 * i,
              int64_t(d.G) * d.V, kC, 64, c, d.V - 64 * i);
    cp_async_commit();
  };
  load_v(0);
  if (warp < 4) {  // diagonal 16x16 blocks of Tm: lane owns column (lane & 15), half the dot
    const int b0 = 16 * warp, col = lane & 15, half = lane >> 4;
    for (int i = 0; i < 16; ++i) {
      float acc = 0.f;
#pragma unroll
      for (int m2 = 0; m2 < 16; m2 += 2) {
        const int m = m2 + half;
        if (m < i) acc += s.as[(b0 + i) * LDA + b0 + m] * s.ts[(b0 + m) * LDA + b0 + col];
      }
      acc += __shfl_xor_sync(0xffffffffu, acc, 16);
      if (half == 0) s.ts[(b0 + i) * LDA + b0 + col] = (i == col ? 1.f : 0.f) - acc;
      __syncwarp();
    }
  }
  __syncthreads();
  for (int dist = 1; dist < 4; ++dist) {  // blocks (I, J = I - dist)
    const int nb = 4 - dist;
    for (int e = tid; e < nb * 256; e += blockDim.x) {
      const int b = e >> 8, r = (e >> 4) & 15, cc = e & 15, I = b + dist, J = b;
      float acc[4] = {0.f, 0.f, 0.f, 0.f};
      for (int M = J; M < I; ++M) {
        const float* a_row = s.as + (16 * I + r) * LDA + 16 * M;
        const float* t_col = s.ts + (16 * M) * LDA + 16 * J + cc;
#pragma unroll
        for (int m = 0; m < 16; ++m) acc[m & 3] += a_row[m] * t_col[m * LDA];
      }
      s.xsc[(b * 16 + r) * LDX + cc] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    }
    __syncthreads();
    for (int e = tid; e < nb * 256; e += blockDim.x) {
      const int b = e >> 8, r = (e >> 4) & 15, cc = e & 15, I = b + dist, J = b;
      const float* t_row = s.ts + (16 * I + r) * LDA + 16 * I;
      const float* x_col = s.xsc + (b * 16) * LDX + cc;
      float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int m = 0; m < 16; ++m) acc[m & 3] += t_row[m] * x_col[m * LDX];
      s.ts[(16 * I + r) * LDA + 16 * J + cc] = -((acc[0] + acc[1]) + (acc[2] + acc[3]));
    }
    __syncthreads();
  }
  if (store_tm) {
    constexpr int NF = kFloatTerms<T>;
    __nv_bfloat16* Tq = w.Tm + qj * NF * kC * kC;
    for (int e = tid; e < kC * kC / 2; e += blockDim.x) {
      const int i = e >> 5, jj = 2 * (e & 31);
      store_split2<NF>(Tq, kC * kC, i * kC + jj, s.ts[i * LDA + jj], s.ts[i * LDA + jj + 1]);
    }
  }
  // W = Tm diag(beta e^gamma) K
  for (int e = tid; e < kC * kC; e += blockDim.x) {
    const int i = e >> 6, jj = e & 63;
    s.as[i * LDA + jj] = s.ts[i * LDA + jj] * s.bs[jj] * s.eg[jj];
  }
  __syncthreads();
  {
    float* Wq = w.W + qj * kC * KP;  // v4 (kWP): two bf16 planes in the same bytes
    __nv_bfloat16* Wp = reinterpret_cast<__nv_bfloat16*>(w.W) + qj * 2 * kC * KP;
    for (int n0 = 0; n0 < KP; n0 += 64) {
      float acc[1][NT][4];
      acc_zero(acc);
      if (n0 < kd)
        warp_mma<T>(acc, Opnd<float, true>{s.as, LDA}, rb, Opnd<T, false>{s.ks, LDK}, n0 + cb, cd);
      acc_pairs(acc, rb, n0 + cb, [&](int i, int col, float v0, float v1) {
        if constexpr (kWP)
          store_split2<2>(Wp, kC * KP, i * KP + col, v0, v1);
        else
          store2(Wq, i * KP + col, v0, v1);
      });
    }
  }
  __syncthreads();  // every warp is done with the K tile
  if (nvt > 1) load_v(1);
  // U = Tm diag(beta) V
  for (int e = tid; e < kC * kC; e += blockDim.x) {
    const int i = e >> 6, jj = e & 63;
    s.as[i * LDA + jj] = s.ts[i * LDA + jj] * s.bs[jj];
  }
  float* Uq = w.U + qj * kC * d.VP;
  for (int i = 0; i < nvt; ++i) {
    if (i + 1 < nvt)
      cp_async_wait<1>();
    else
      cp_async_wait<0>();
    __syncthreads();
    const int v0 = 64 * i;
    float acc[1][NT][4];
    acc_zero(acc);
    warp_mma<T>(acc, Opnd<float, true>{s.as, LDA}, rb, Opnd<T, false>{(i & 1) ? s.ks : s.xs, LDK},
                cb, cd);
    acc_pairs(acc, rb, cb, [&](int i2, int col, float x0, float x1) {
      if (v0 + col < d.VP) store2(Uq, i2 * d.VP + v0 + col, x0, x1);
    });
    __syncthreads();
    if (i + 2 < nvt) load_v(i + 2);
  }
}

// ---- gdn_states_kernel -----------------------------------------------------------------------
// One block (NW = 4 warps; 8 in layout v3) per (value tile of kBV = 32 columns, value head,
// segment), segments longest first; it walks the chunks of its segment in order carrying
// S[:, tile] (fp32, KP x 32) in
// registers: warp w owns rows w KP/NW .. (w+1) KP/NW (SeqTiles). Per chunk:
//   (a) S -> shared as split bf16 planes, transposed ([32][KP]: the B operand, k-contiguous);
//   (b) V' = U - W S (each warp its SeqTiles part of the 64 x 32 tile; U read into registers);
//       V' and V'' = diag(e^{gamma_last - gamma}) V' -> shared planes [32][64];
//   (c) forward only: O = diag(scale e^gamma) Q S + P V';
//   (d) S = e^{gamma_last} S + K^T V''.
// Recompute mode (backward) skips (c) and stores S_in and V' instead.
// Loads are cp.async groups issued as soon as their buffer is free, so they overlap the
// previous phase: forward: K into the W buffer after (b), the next Q and P after (c), the next
// W after (d); recompute: the next W after (b), the next K after (d).
// Shared memory (bf16, KP = 128): W/K [64][136] fp32, S planes 2 x [32][136], V' and V'' planes
// 2 x [32][72] each, Q [64][136] and P [64][72] (forward) or K [64][136] (recompute): 107 KB /
// 80 KB, 2 blocks per SM. Four syncs per chunk.
// Recompute mode in the v2 layout (d.v2; cuda/gdn.h GdnKernels), bf16 storage only, prefetches
// one chunk further: K goes through two buffers (the second, qk2, after everything else: 97 KB
// for KP = 128, still 2 blocks per SM; f32 mode would drop to 1 block or, with KP = 256, exceed
// the 227 KB a block may have) and K of chunk n + 2 is issued after (d) of chunk n; U and gamma of
// chunk n + 1 are read into registers after (b) of chunk n. The wait before (a) then leaves the
// newest group (K of chunk n + 1) in flight, and (d) needs no wait or sync of its own: three syncs
// per chunk. Same arithmetic, same results.
template <typename T, int KP, bool kFwd>
struct StatesSmem {
  static constexpr int NF = kFloatTerms<T>;
  static constexpr int LDB = KP + 8, LDQ = KP + 8, LDT = KP + 8, LDV = 72, LDP = 72;
  static constexpr int PST = kBV * LDT, PSV = kBV * LDV;      // plane strides
  static constexpr bool kPrefetch = !kFwd && sizeof(T) == 2;  // qk2 exists (v2 layout)
  float *wk, *ps, *eg, *egl;
  __nv_bfloat16 *st, *vt, *vt2;
  T* qk;                   // forward: Q; recompute: K (of even chunks in the v2 layout)
  T* qk2;                  // recompute, v2 layout: K of odd chunks
  size_t bytes, bytes_v1;  // with / without qk2
  __host__ __device__ explicit StatesSmem(unsigned char* base) {
    Carve c{base};
    wk = c.take<float>(kC * LDB);
    st = c.take<__nv_bfloat16>(NF * PST);
    vt = kFwd ? c.take<__nv_bfloat16>(NF * PSV) : nullptr;
    vt2 = c.take<__nv_bfloat16>(NF * PSV);
    qk = c.take<T>(kC * LDQ);
    ps = kFwd ? c.take<float>(kC * LDP) : nullptr;
    eg = c.take<float>(kC);
    egl = c.take<float>(kC);
    bytes_v1 = c.off;
    qk2 = kPrefetch ? c.take<T>(kC * LDQ) : nullptr;
    bytes = c.off;
  }
};

template <typename T, int KP, bool kFwd, int NW, bool kWP>
__global__ void __launch_bounds__(32 * NW, NW == 8 ? 2 : 0)
    gdn_states_kernel(Inputs<T> in, Plan plan, Dims d, Work w, T* o, float* state) {
  extern __shared__ __align__(16) unsigned char smem[];
  using S = StatesSmem<T, KP, kFwd>;
  using Tiles = SeqTiles<KP, NW>;
  constexpr int NF = S::NF, LDB = S::LDB, LDQ = S::LDQ, LDT = S::LDT, LDV = S::LDV;
  constexpr int LDP = S::LDP, PST = S::PST, PSV = S::PSV, NTB = Tiles::NT;
  S s(smem);
  T* wkT = reinterpret_cast<T*>(s.wk);
  const int vt = blockIdx.x, j = blockIdx.y, z = blockIdx.z, h = j / d.R, v0 = vt * kBV;
  const int tid = threadIdx.x, warp = tid >> 5;
  const int ch0 = plan.seg_ch0[z], nch = plan.seg_nch[z];
  const int kd = round_up(d.K, 16), sm0 = Tiles::srow(warp);
  const int rb = Tiles::row(warp), cb = Tiles::col(warp);  // this warp's 64 x 32 tile part
  const int64_t ldqk = int64_t(d.H) * d.K;
  auto qk_src = [&](const T* x, int ci) {
    return x + (int64_t(plan.chunk_t0[ci]) * d.H + h) * d.K;
  };
  auto load_w = [&](int ci) { load_w_tile<kWP, KP>(s.wk, w.W, int64_t(ci) * d.G + j); };
  auto load_qk = [&](int ci) {  // Q (forward) or K (recompute) into s.qk
    load_tile(s.qk, LDQ, qk_src(kFwd ? in.q : in.k, ci), ldqk, kC, KP, plan.chunk_len[ci], d.K);
  };
  auto load_p = [&](int ci) {
    load_tile(s.ps, LDP, w.P + (int64_t(ci) * d.G + j) * kC * kC, kC, kC, kC, kC, kC);
  };
  const bool pf = S::kPrefetch && d.v2;  // recompute mode, bf16, v2 layout: prefetch (see above)
  auto kbuf = [&](int n) { return pf && (n & 1) ? s.qk2 : s.qk; };
  auto load_k_pf = [&](int n) {  // K of the n-th chunk of the segment into its buffer
    load_tile(kbuf(n), LDQ, qk_src(in.k, ch0 + n), ldqk, kC, KP, plan.chunk_len[ch0 + n], d.K);
  };
  float unext[1][NTB][4];        // pf: U of the next chunk at this lane's V' positions
  double gnext = 0, glnext = 0;  // pf, tid < 64: gamma_tid and gamma_63 of the next chunk
  auto fetch_u_gam = [&](int ci) {
    const int64_t q = int64_t(ci) * d.G + j;
    const float* Uq = w.U + q * kC * d.VP + v0;
    acc_each(unext, rb, cb, [&](int i, int col, float& v) { v = Uq[i * d.VP + col]; });
    if (tid < kC) {
      gnext = w.gam[q * kC + tid];
      glnext = w.gam[q * kC + kC - 1];
    }
  };
  if (nch > 0) {
    load_w(ch0);
    load_qk(ch0);
    if constexpr (kFwd) load_p(ch0);
    if (pf) fetch_u_gam(ch0);
  }
  cp_async_commit();
  if (pf) {
    if (nch > 1) load_k_pf(1);
    cp_async_commit();
  }
  float accS[Tiles::MTS][4][4];
  acc_zero(accS);
  for (int n = 0; n < nch; ++n) {
    const int ci = ch0 + n, t0 = plan.chunk_t0[ci], c = plan.chunk_len[ci], cd = round_up(c, 16);
    const int64_t qj = int64_t(ci) * d.G + j;
    const bool more = n + 1 < nch;
    // (a)
    float ureg[1][NTB][4];  // U at this lane's V' positions
    if (pf) {
#pragma unroll
      for (int ni = 0; ni < NTB; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) ureg[0][ni][e] = unext[0][ni][e];
    } else {
      const float* Uq = w.U + qj * kC * d.VP + v0;
      acc_each(ureg, rb, cb, [&](int i, int col, float& v) { v = Uq[i * d.VP + col]; });
    }
    acc_each(accS, sm0, 0,
             [&](int r, int col, float& v) { store_split<NF>(s.st, PST, col * LDT + r, v); });
    if constexpr (!kFwd) {
      __nv_bfloat16* Sq = w.Sin + qj * NF * KP * d.VP + v0;
      acc_pairs(accS, sm0, 0, [&](int r, int col, float x0, float x1) {
        store_split2<NF>(Sq, int64_t(KP) * d.VP, r * d.VP + col, x0, x1);
      });
    }
    if (tid < kC) {
      const double* gq = w.gam + qj * kC;
      const double gi = pf ? gnext : gq[tid], gl = pf ? glnext : gq[kC - 1];
      s.eg[tid] = exp_nonpos(gi);
      s.egl[tid] = exp_nonpos(gl - gi);
    }
    if (pf)
      cp_async_wait<1>();  // all but K of chunk n + 1
    else
      cp_async_wait<0>();
    __syncthreads();
    const Planes<NF, true> sop{s.st, LDT, PST};
    {  // (b) V' = U - W S
      float acc[1][NTB][4];
      acc_zero(acc);
      if constexpr (kWP)  // W as two bf16 planes [2][64][KP + 8] (LDB: the same row pitch)
        warp_mma<T>(acc, Planes<2, true>{reinterpret_cast<__nv_bfloat16*>(s.wk), LDB, kC * LDB}, rb,
                    sop, cb, kd);
      else
        warp_mma<T>(acc, Opnd<float, true>{s.wk, LDB}, rb, sop, cb, kd);
#pragma unroll
      for (int ni = 0; ni < NTB; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int lane = tid & 31;
          const int i = rb + (lane >> 2) + 8 * (e >> 1);
          const int col = cb + 8 * ni + 2 * (lane & 3) + (e & 1);
          acc[0][ni][e] = ureg[0][ni][e] - acc[0][ni][e];  // V'
          if constexpr (kFwd) store_split<NF>(s.vt, PSV, col * LDV + i, acc[0][ni][e]);
          store_split<NF>(s.vt2, PSV, col * LDV + i, s.egl[i] * acc[0][ni][e]);
        }
      if constexpr (!kFwd) {
        __nv_bfloat16* Vq = w.Vp + qj * NF * kC * d.VP + v0;
        acc_pairs(acc, rb, cb, [&](int i, int col, float x0, float x1) {
          store_split2<NF>(Vq, int64_t(kC) * d.VP, i * d.VP + col, x0, x1);
        });
      }
    }
    if (pf && more) fetch_u_gam(ci + 1);
    __syncthreads();  // W reads done; V', V'' complete
    const T* kt;      // K tile for (d)
    if constexpr (kFwd) {
      load_tile(wkT, LDB, qk_src(in.k, ci), ldqk, kC, KP, c, d.K);
      cp_async_commit();
      // (c) O = diag(scale e^gamma) Q S + P V'
      float acc[1][NTB][4];
      acc_zero(acc);
      warp_mma<T>(acc, Opnd<T, true>{s.qk, LDQ}, rb, sop, cb, kd);
      acc_each(acc, rb, cb, [&](int i, int, float& v) { v *= d.scale * s.eg[i]; });
      warp_mma<T>(acc, Opnd<float, true>{s.ps, LDP}, rb, Planes<NF, true>{s.vt, LDV, PSV}, cb, cd);
      T* oq = o + (int64_t(t0) * d.G + j) * d.V + v0;
      acc_each(acc, rb, cb, [&](int i, int col, float& v) {
        if (i < c && v0 + col < d.V) oq[int64_t(i) * d.G * d.V + col] = from_f32<T>(v);
      });
      __syncthreads();  // Q and P reads done
      if (more) {
        load_qk(ci + 1);
        load_p(ci + 1);
      }
      cp_async_commit();
      kt = wkT;
    } else {
      if (more) load_w(ci + 1);
      cp_async_commit();
      kt = kbuf(n);
    }
    // (d) S = e^{gamma_last} S + K^T V''
    if (!pf) {             // pf: K of this chunk was waited for before (b)
      cp_async_wait<1>();  // forward: K landed (the next Q, P may be in flight)
      __syncthreads();
    }
    const float el = s.eg[kC - 1];
    acc_each(accS, sm0, 0, [&](int, int, float& v) { v *= el; });
    warp_mma<T>(accS, Opnd<T, false>{kt, kFwd ? LDB : LDQ}, sm0, Planes<NF, true>{s.vt2, LDV, PSV},
                0, cd);
    __syncthreads();  // K and V'' reads done
    if (pf) {
      if (n + 2 < nch) load_k_pf(n + 2);  // into this chunk's K buffer, free now
    } else if (more) {
      if constexpr (kFwd) load_w(ci + 1);
      if constexpr (!kFwd) load_qk(ci + 1);
    }
    cp_async_commit();
  }
  if (kFwd && state) {
    float* st = state + (int64_t(plan.seg_id[z]) * d.G + j) * d.K * d.V;
    acc_each(accS, sm0, 0, [&](int r, int col, float& v) {
      if (r < d.K && v0 + col < d.V) st[int64_t(r) * d.V + v0 + col] = v;
    });
  }
}

template <typename K>
void set_smem(K kernel, size_t bytes) {
  DT_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

size_t align256(size_t x) { return (x + 255) / 256 * 256; }

}  // namespace

template <typename T, int KP>
void launch_prep(const Inputs<T>& in, const Plan& plan, const Dims& d, const Work& w,
                 bool store_tm) {
  const size_t smem = PrepSmem<T, KP>(nullptr).bytes;
  with_warps_w<T>(d, [&](auto nw, auto wp) {
    constexpr int NW = decltype(nw)::value;
    constexpr bool WP = decltype(wp)::value;
    set_smem(gdn_prep_kernel<T, KP, NW, WP>, smem);
    gdn_prep_kernel<T, KP, NW, WP>
        <<<dim3(plan.nch, d.G), 32 * NW, smem>>>(in, plan, d, w, store_tm);
  });
  DT_CUDA_CHECK(cudaGetLastError());
}

template <typename T, int KP>
void launch_states(const Inputs<T>& in, const Plan& plan, const Dims& d, const Work& w, T* o,
                   float* state) {
  const dim3 grid(d.VP / kBV, d.G, plan.nseg);
  with_warps_w<T>(d, [&](auto nw, auto wp) {
    constexpr int NW = decltype(nw)::value;
    constexpr bool WP = decltype(wp)::value;
    if (o) {
      const size_t smem = StatesSmem<T, KP, true>(nullptr).bytes;
      set_smem(gdn_states_kernel<T, KP, true, NW, WP>, smem);
      gdn_states_kernel<T, KP, true, NW, WP><<<grid, 32 * NW, smem>>>(in, plan, d, w, o, state);
    } else {
      const StatesSmem<T, KP, false> layout(nullptr);
      const size_t smem = d.v2 ? layout.bytes : layout.bytes_v1;
      set_smem(gdn_states_kernel<T, KP, false, NW, WP>, smem);
      gdn_states_kernel<T, KP, false, NW, WP>
          <<<grid, 32 * NW, smem>>>(in, plan, d, w, nullptr, nullptr);
    }
  });
  DT_CUDA_CHECK(cudaGetLastError());
}

#define DT_GDN_INSTANTIATE(T, KP)                                                                  \
  template void launch_prep<T, KP>(const Inputs<T>&, const Plan&, const Dims&, const Work&, bool); \
  template void launch_states<T, KP>(const Inputs<T>&, const Plan&, const Dims&, const Work&, T*,  \
                                     float*);
DT_GDN_INSTANTIATE(float, 128)
DT_GDN_INSTANTIATE(float, 256)
DT_GDN_INSTANTIATE(__nv_bfloat16, 128)
DT_GDN_INSTANTIATE(__nv_bfloat16, 256)
#undef DT_GDN_INSTANTIATE

Setup setup(const char* what, const int32_t* cu_host, int nseg, int64_t N, int64_t H, int64_t G,
            int64_t K, int64_t V, float scale, bool bwd, int nf) {
  DT_CHECK(N >= 0 && H > 0 && G > 0 && G <= 65535, what, ": bad sizes N=", N, " H=", H, " G=", G);
  DT_CHECK(G % H == 0, what, ": value heads G=", G, " not a multiple of key heads H=", H);
  DT_CHECK(K >= 1 && K <= 256 && V >= 1 && V <= 256, what, ": head dims K=", K, " V=", V,
           " outside [1, 256]");
  DT_CHECK(nseg >= 0 && nseg <= 65535, what, ": bad segment count ", nseg);
  DT_CHECK(N < (int64_t(1) << 31), what, ": N=", N, " does not fit int32 boundaries");
  if (nseg == 0) {
    DT_CHECK(N == 0, what, ": no segments for N=", N, " tokens");
  } else {
    DT_CHECK(cu_host != nullptr, what, ": cu_host is null");
    DT_CHECK(cu_host[0] == 0 && cu_host[nseg] == N, what, ": segments cover [", cu_host[0], ", ",
             cu_host[nseg], ") but N=", N);
    for (int s = 0; s < nseg; ++s)
      DT_CHECK(cu_host[s] <= cu_host[s + 1], what, ": cu_seqlens decreases at segment ", s);
  }
  Setup st{};
  st.KP = K <= 128 ? 128 : 256;
  const int KP = st.KP, VP = round_up(int(V), kBV), KT = KP / 64;
  const GdnKernels layout = gdn_kernels();
  const bool v2 = layout != GdnKernels::v1, v4 = layout == GdnKernels::v4;
  const bool v3 = layout == GdnKernels::v3 || v4;
  st.d = Dims{N, int(H), int(G), int(G / H), int(K), int(V), VP, KT, scale, v2, v3, v4};
  const bool dq_scratch = !(v2 && G == H);  // v2 with G == H: dq straight into dq_NHK

  // chunks in segment order; segments longest first for the sequential kernels
  std::vector<int> t0s, lens, ch0(nseg), nchs(nseg);
  for (int s = 0; s < nseg; ++s) {
    ch0[s] = int(t0s.size());
    for (int t = cu_host[s]; t < cu_host[s + 1]; t += kC) {
      t0s.push_back(t);
      lens.push_back(std::min(kC, cu_host[s + 1] - t));
    }
    nchs[s] = int(t0s.size()) - ch0[s];
  }
  std::vector<int> order(nseg);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return cu_host[a + 1] - cu_host[a] > cu_host[b + 1] - cu_host[b];
  });
  const int nch = int(t0s.size());
  DT_CHECK(int64_t(nch) * KT < (int64_t(1) << 31), what, ": too many chunks (", nch, ")");
  std::vector<int> ints;
  ints.reserve(2 * nch + 3 * nseg);
  ints.insert(ints.end(), t0s.begin(), t0s.end());
  ints.insert(ints.end(), lens.begin(), lens.end());
  for (int z : order) ints.push_back(ch0[z]);
  for (int z : order) ints.push_back(nchs[z]);
  for (int z : order) ints.push_back(z);
  if (nch == 0) {
    st.plan.nch = 0;
    st.plan.nseg = nseg;
    return st;
  }

  // workspace layout
  const size_t NQ = size_t(nch) * G, N_ = size_t(N);
  size_t off = 0;
  auto reserve = [&](size_t bytes) {
    const size_t o = off;
    off += align256(bytes);
    return o;
  };
  const size_t o_int = reserve(ints.size() * sizeof(int));
  const size_t o_gam = reserve(NQ * kC * sizeof(double));
  const size_t o_W = reserve(NQ * kC * KP * 4), o_U = reserve(NQ * kC * VP * 4);
  const size_t o_P = reserve(NQ * kC * kC * 4);
  size_t o_Tm = 0, o_Sin = 0, o_Vp = 0, o_dS = 0, o_dVp = 0, o_dA = 0, o_gp = 0, o_bp = 0, o_dq = 0,
         o_dk = 0;
  if (bwd) {
    const size_t pb = size_t(nf) * 2;  // bytes per element of a planes buffer
    o_Tm = reserve(NQ * kC * kC * pb);
    o_Sin = reserve(NQ * KP * VP * pb);
    o_Vp = reserve(NQ * kC * VP * pb);
    o_dS = reserve(NQ * KP * VP * pb);
    o_dVp = reserve(NQ * kC * VP * pb);
    o_dA = reserve(NQ * KT * kC * kC * 4);
    o_gp = reserve(NQ * KT * kC * sizeof(double));
    o_bp = reserve(NQ * KT * kC * 4);
    if (dq_scratch) o_dq = reserve(N_ * G * K * 4);
    o_dk = reserve(N_ * G * K * 4);
  }
  static ScratchBuffer* cache = new ScratchBuffer("gdn chunk workspace");  // leaked
  char* base = static_cast<char*>(cache->get(off));
  DT_CUDA_CHECK(cudaMemcpyAsync(base + o_int, ints.data(), ints.size() * sizeof(int),
                                cudaMemcpyHostToDevice, 0));
  const int* ip = reinterpret_cast<const int*>(base + o_int);
  st.plan =
      Plan{ip, ip + nch, ip + 2 * nch, ip + 2 * nch + nseg, ip + 2 * nch + 2 * nseg, nch, nseg};
  auto f = [&](size_t o) { return reinterpret_cast<float*>(base + o); };
  st.w.gam = reinterpret_cast<double*>(base + o_gam);
  st.w.W = f(o_W);
  st.w.U = f(o_U);
  st.w.P = f(o_P);
  if (bwd) {
    auto b = [&](size_t o) { return reinterpret_cast<__nv_bfloat16*>(base + o); };
    st.w.Tm = b(o_Tm);
    st.w.Sin = b(o_Sin);
    st.w.Vp = b(o_Vp);
    st.w.dS = b(o_dS);
    st.w.dVp = b(o_dVp);
    st.w.dA = f(o_dA);
    st.w.gpart = reinterpret_cast<double*>(base + o_gp);
    st.w.bpart = f(o_bp);
    st.w.dq = dq_scratch ? f(o_dq) : nullptr;
    st.w.dk = f(o_dk);
  }
  return st;
}

}  // namespace deltatron::cuda::gdn

namespace deltatron::cuda {

namespace {
std::atomic<int> g_kernels{-1};  // -1: not read from the environment yet
}  // namespace

GdnKernels gdn_kernels() {
  int k = g_kernels.load();
  if (k < 0) {
    const char* e = std::getenv("DT_GDN_KERNELS");
    k = int(GdnKernels::v3);
    if (e && *e) {
      const char* names[] = {"v1", "v2", "v3", "v4"};
      k = -1;
      for (int i = 0; i < 4; ++i)
        if (std::strcmp(e, names[i]) == 0) k = i;
      DT_CHECK(k >= 0, "DT_GDN_KERNELS: expected v1, v2, v3 or v4, got '", e, "'");
    }
    g_kernels.store(k);
  }
  return GdnKernels(k);
}

void gdn_set_kernels(GdnKernels k) { g_kernels.store(int(k)); }

void gdn_chunk_fwd(DType dt, const void* q_NHK, const void* k_NHK, const void* v_NGV,
                   const float* g_NG, const float* beta_NG, const int32_t* /*cu_dev*/,
                   const int32_t* cu_host, int nseg, int64_t N, int64_t H, int64_t G, int64_t K,
                   int64_t V, float scale, void* o_NGV, float* state_SGKV) {
  const gdn::Setup st =
      gdn::setup("cuda::gdn_chunk_fwd", cu_host, nseg, N, H, G, K, V, scale, false, 0);
  if (st.plan.nch == 0) {  // no tokens: only (zero) states to write
    if (state_SGKV && nseg > 0)
      DT_CUDA_CHECK(cudaMemsetAsync(state_SGKV, 0, size_t(nseg) * G * K * V * sizeof(float), 0));
    return;
  }
  DT_DISPATCH_DTYPE(dt, T, {
    const gdn::Inputs<T> in{static_cast<const T*>(q_NHK), static_cast<const T*>(k_NHK),
                            static_cast<const T*>(v_NGV), g_NG, beta_NG};
    T* o = static_cast<T*>(o_NGV);
    if (st.KP == 128) {
      gdn::launch_prep<T, 128>(in, st.plan, st.d, st.w, false);
      gdn::launch_states<T, 128>(in, st.plan, st.d, st.w, o, state_SGKV);
    } else {
      gdn::launch_prep<T, 256>(in, st.plan, st.d, st.w, false);
      gdn::launch_states<T, 256>(in, st.plan, st.d, st.w, o, state_SGKV);
    }
  });
}

}  // namespace deltatron::cuda
