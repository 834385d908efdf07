// CUDA chunked gated delta rule, backward: reverse state-gradient pass, per-chunk dq/dk kernel,
// WY (UT-transform) backward kernel and the deterministic sum over value heads sharing a key head.
//
// Pipeline (docs/ops/gdn.md, "Chunked backward", step numbers refer to it):
//   prep (gdn_fwd.cu)          gamma, W, U, P, Tm per chunk-head
//   states, recompute mode     S_in and V' per chunk-head (sequential over chunks)
//   gdn_dstate_kernel          dS (= dL/dS_out) and dV' per chunk-head (reverse sequential; 1, 11)
//   gdn_dqk_kernel             per (chunk-head, 64-column slice of K): steps 2-4, 6, the dB_w half
//                              of 7-8 and slice partials of dgamma, dbeta and dA
//   gdn_wy_kernel              per chunk-head: dB_u (7-8), dA and step 9, dg (10)
//   gdn_sum_heads_kernel       dq, dk summed over the R value heads of each key head, in order
//                              (not launched in the v2 layout with R = 1: dqk writes dq and wy
//                              writes dk in the storage type directly; cuda/gdn.h GdnKernels)
#include <algorithm>

#include "core/error.h"
#include "cuda/gdn.h"
#include "cuda/gdn_common.cuh"

namespace deltatron::cuda::gdn {
namespace {

// ---- gdn_dstate_kernel -----------------------------------------------------------------------
// Mirror of the states kernel: one block (NW = 4 or 8 warps, SeqTiles) per (value tile of 32,
// value head, segment), chunks in reverse order, dS[:, tile] (fp32, KP x 32) in registers (warp
// w: rows w KP/NW ..).
// Per chunk, with dS = dL/dS_out (0 after the last chunk of the segment):
//   (a) store dS; dS -> shared split planes [32][KP] (B operand);
//   (b) dV' = P^T dO + diag(e^{gamma_last - gamma}) K dS (stored; -dV' -> planes [32][64]);
//       diag(scale e^gamma) dO -> planes [32][64];
//   (c) dS = e^{gamma_last} dS + Q^T diag(scale e^gamma) dO;
//   (d) dS += W^T (-dV')  -> dS_in, the previous chunk's dS_out.
// cp.async groups: W (into the K buffer) and the previous chunk's P and dO after (b), its Q
// after (c), its K after (d). f32 mode with KP = 256 has no room for a separate Q buffer: Q and
// W then go through the K buffer one after the other. Shared memory (bf16, KP = 128): K/W
// [64][136] fp32, Q [64][136], dS planes 2 x [32][136], P [64][68] fp32, dO [64][40], 2 x 2
// planes [32][72]: 111 KB, 2 blocks per SM.
template <typename T, int KP>
struct DstateSmem {
  static constexpr int NF = kFloatTerms<T>;
  static constexpr bool kQInBig = sizeof(T) == 4 && KP == 256;
  static constexpr int LDB = KP + 8, LDQ = KP + 8, LDT = KP + 8, LDP = 68, LDO = 40, LDV = 72;
  static constexpr int PST = kBV * LDT, PSV = kBV * LDV;
  float *big, *ps, *eg, *egl;
  T *qb, *dos;
  __nv_bfloat16 *dst, *dop, *dvp;
  size_t bytes;
  __host__ __device__ explicit DstateSmem(unsigned char* base) {
    Carve c{base};
    big = c.take<float>(kC * LDB);
    qb = kQInBig ? nullptr : c.take<T>(kC * LDQ);
    dst = c.take<__nv_bfloat16>(NF * PST);
    ps = c.take<float>(kC * LDP);
    dos = c.take<T>(kC * LDO);
    dop = c.take<__nv_bfloat16>(NF * PSV);
    dvp = c.take<__nv_bfloat16>(NF * PSV);
    eg = c.take<float>(kC);
    egl = c.take<float>(kC);
    bytes = c.off;
  }
};

template <typename T, int KP, int NW, bool kWP>
__global__ void __launch_bounds__(32 * NW, NW == 8 ? 2 : 0)
    gdn_dstate_kernel(Inputs<T> in, const T* dout, Plan plan, Dims d, Work w) {
  extern __shared__ __align__(16) unsigned char smem[];
  using S = DstateSmem<T, KP>;
  using Tiles = SeqTiles<KP, NW>;
  constexpr int NF = S::NF, LDB = S::LDB, LDQ = S::LDQ, LDT = S::LDT, LDP = S::LDP;
  constexpr int LDO = S::LDO, LDV = S::LDV, PST = S::PST, PSV = S::PSV, NTB = Tiles::NT;
  constexpr bool kQInBig = S::kQInBig;
  S s(smem);
  T* bigT = reinterpret_cast<T*>(s.big);
  const int vt = blockIdx.x, j = blockIdx.y, z = blockIdx.z, h = j / d.R, v0 = vt * kBV;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int ch0 = plan.seg_ch0[z], nch = plan.seg_nch[z];
  const int kd = round_up(d.K, 16), sm0 = Tiles::srow(warp);
  const int rb = Tiles::row(warp), cb = Tiles::col(warp);  // this warp's 64 x 32 tile part
  const int64_t ldqk = int64_t(d.H) * d.K, ldv = int64_t(d.G) * d.V;
  auto qk_src = [&](const T* x, int ci) {
    return x + (int64_t(plan.chunk_t0[ci]) * d.H + h) * d.K;
  };
  auto load_k = [&](int ci) {
    load_tile(bigT, LDB, qk_src(in.k, ci), ldqk, kC, KP, plan.chunk_len[ci], d.K);
  };
  auto load_q = [&](int ci) {
    load_tile(kQInBig ? bigT : s.qb, kQInBig ? LDB : LDQ, qk_src(in.q, ci), ldqk, kC, KP,
              plan.chunk_len[ci], d.K);
  };
  auto load_w = [&](int ci) { load_w_tile<kWP, KP>(s.big, w.W, int64_t(ci) * d.G + j); };
  auto load_p_do = [&](int ci) {
    load_tile(s.ps, LDP, w.P + (int64_t(ci) * d.G + j) * kC * kC, kC, kC, kC, kC, kC);
    load_tile(s.dos, LDO, dout + (int64_t(plan.chunk_t0[ci]) * d.G + j) * d.V + v0, ldv, kC, kBV,
              plan.chunk_len[ci], d.V - v0);
  };
  if (nch > 0) {
    load_p_do(ch0 + nch - 1);
    load_k(ch0 + nch - 1);
    if constexpr (!kQInBig) load_q(ch0 + nch - 1);
  }
  cp_async_commit();
  float accD[Tiles::MTS][4][4];
  acc_zero(accD);
  for (int n = nch - 1; n >= 0; --n) {
    const int ci = ch0 + n, c = plan.chunk_len[ci], cd = round_up(c, 16);
    const int64_t qj = int64_t(ci) * d.G + j;
    // (a)
    __nv_bfloat16* dSq = w.dS + qj * NF * KP * d.VP + v0;
    acc_pairs(accD, sm0, 0, [&](int r, int col, float x0, float x1) {
      store_split<NF>(s.dst, PST, col * LDT + r, x0);
      store_split<NF>(s.dst, PST, (col + 1) * LDT + r, x1);
      store_split2<NF>(dSq, int64_t(KP) * d.VP, r * d.VP + col, x0, x1);
    });
    if (tid < kC) {
      const double* gq = w.gam + qj * kC;
      s.eg[tid] = exp_nonpos(gq[tid]);
      s.egl[tid] = exp_nonpos(gq[kC - 1] - gq[tid]);
    }
    cp_async_wait<0>();
    __syncthreads();
    {  // (b)
      float a1[1][NTB][4], a2[1][NTB][4];
      acc_zero(a1);
      acc_zero(a2);
      warp_mma<T>(a1, Opnd<float, false>{s.ps, LDP}, rb, Opnd<T, false>{s.dos, LDO}, cb, cd);
      warp_mma<T>(a2, Opnd<T, true>{bigT, LDB}, rb, Planes<NF, true>{s.dst, LDT, PST}, cb, kd);
#pragma unroll
      for (int ni = 0; ni < NTB; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = rb + (lane >> 2) + 8 * (e >> 1);
          const int col = cb + 8 * ni + 2 * (lane & 3) + (e & 1);
          a1[0][ni][e] += s.egl[i] * a2[0][ni][e];  // dV'
          store_split<NF>(s.dvp, PSV, col * LDV + i, -a1[0][ni][e]);
        }
      __nv_bfloat16* dVq = w.dVp + qj * NF * kC * d.VP + v0;
      acc_pairs(a1, rb, cb, [&](int i, int col, float x0, float x1) {
        store_split2<NF>(dVq, int64_t(kC) * d.VP, i * d.VP + col, x0, x1);
      });
      for (int e = tid; e < kC * kBV; e += blockDim.x) {
        const int i = e % kC, col = e / kC;
        store_split<NF>(s.dop, PSV, col * LDV + i,
                        d.scale * s.eg[i] * to_f32(s.dos[i * LDO + col]));
      }
    }
    __syncthreads();  // K, P, dO reads done
    const float el = s.eg[kC - 1];
    acc_each(accD, sm0, 0, [&](int, int, float& v) { v *= el; });
    if constexpr (kQInBig) {  // Q, then W, through the K buffer
      load_q(ci);
      if (n > 0) load_p_do(ci - 1);
      cp_async_commit();
      cp_async_wait<0>();
      __syncthreads();
      warp_mma<T>(accD, Opnd<T, false>{bigT, LDB}, sm0, Planes<NF, true>{s.dop, LDV, PSV}, 0, cd);
      __syncthreads();
      load_w(ci);
      cp_async_commit();
      cp_async_wait<0>();
      __syncthreads();
    } else {
      load_w(ci);
      if (n > 0) load_p_do(ci - 1);
      cp_async_commit();
      // (c)
      warp_mma<T>(accD, Opnd<T, false>{s.qb, LDQ}, sm0, Planes<NF, true>{s.dop, LDV, PSV}, 0, cd);
      __syncthreads();  // Q reads done
      if (n > 0) load_q(ci - 1);
      cp_async_commit();
      cp_async_wait<1>();  // W landed
      __syncthreads();
    }
    // (d)
    if constexpr (kWP)  // W as two bf16 planes [2][64][KP + 8] (LDB: the same row pitch)
      warp_mma<T>(accD, Planes<2, false>{reinterpret_cast<__nv_bfloat16*>(s.big), LDB, kC * LDB},
                  sm0, Planes<NF, true>{s.dvp, LDV, PSV}, 0, cd);
    else
      warp_mma<T>(accD, Opnd<float, false>{s.big, LDB}, sm0, Planes<NF, true>{s.dvp, LDV, PSV}, 0,
                  cd);
    __syncthreads();  // W reads done
    if (n > 0) load_k(ci - 1);
    cp_async_commit();
  }
}

// ---- gdn_dqk_kernel --------------------------------------------------------------------------
// One block (8 warps) per (chunk, value head, 64-column slice kt of K): grid (nch KT, G) with the
// slice fastest in the v2 layout, so the slices of a chunk-head share their V', dV', dO, P, Tm
// reads through L2; (nch, G, KT) in v1. Warp w owns rows
// 16 (w & 3).. and columns 32 (w >> 2).. of each 64 x 64 product.
// Phase 1, over V in tiles of 32 (contraction over V):
//   dQs = dO S_in^T, dKt = V' dS^T, dW = -dV' S_in^T (column slice kt), dP = dO V'^T,
//   <dS, S_in> over the slice.
// Phase 2 (64 x 64 products over the chunk's tokens):
//   dQK = scale dP .* Gamma (j <= i); dQ = diag(scale e^gamma) dQs + dQK K      -> dq scratch
//   dK  = diag(e^{gl - gamma}) dKt + dQK^T Q + diag(beta e^gamma) Tm^T dW      -> dk scratch
//   dA slice part = -(Tm^T dW) W^T; row partials of dgamma / dbeta (dP .* P terms in slice 0).
// S_in, dS, V', dV' come from the workspace as split planes (ldmatrix operands).
// Shared memory: two sets of phase-1 tiles (S_in, dS, V', dV' planes, dO; 92 KB for bf16), then
// phase 2 tiles (K, Q slices, dQK, Tm planes, dW / dB_w, W slice, E) in the same bytes: 111 KB
// for bf16, 2 blocks per SM.
template <typename T>
struct DqkSmem1 {  // one set of the phase-1 tiles; two sets back to back (double buffer)
  static constexpr int NF = kFloatTerms<T>;
  static constexpr int LD = 40, PS = kC * LD;  // planes [NF][64][40]
  __nv_bfloat16 *sin, *ds, *vp, *dvp;
  T* dO;
  size_t bytes;
  __host__ __device__ explicit DqkSmem1(unsigned char* base) {
    Carve c{base};
    sin = c.take<__nv_bfloat16>(NF * PS);
    ds = c.take<__nv_bfloat16>(NF * PS);
    vp = c.take<__nv_bfloat16>(NF * PS);
    dvp = c.take<__nv_bfloat16>(NF * PS);
    dO = c.take<T>(kC * LD);
    bytes = c.off;
  }
};

template <typename T>
struct DqkSmem2 {
  static constexpr int LD = 72, LDE = 65;
  static constexpr int NF = kFloatTerms<T>, PST = kC * LD;
  using A = GamAcc<T>;
  T *ks, *qs;
  __nv_bfloat16* tm;  // Tm planes [NF][64][72]
  float *dqk, *dw, *ws, *es, *redb, *eg, *egl, *bs;
  A *redq, *redr, *rowe, *cole, *frobw, *scal;
  double* gs;
  size_t bytes;
  __host__ __device__ explicit DqkSmem2(unsigned char* base) {
    Carve c{base};
    ks = c.take<T>(kC * LD);
    qs = c.take<T>(kC * LD);
    dqk = c.take<float>(kC * LD);
    tm = c.take<__nv_bfloat16>(NF * PST);
    dw = c.take<float>(kC * LD);
    ws = c.take<float>(kC * LD);
    es = c.take<float>(kC * LDE);
    redq = c.take<A>(2 * kC);
    redr = c.take<A>(2 * kC);
    redb = c.take<float>(2 * kC);
    rowe = c.take<A>(kC);
    cole = c.take<A>(kC);
    frobw = c.take<A>(8);
    scal = c.take<A>(4);
    eg = c.take<float>(kC);
    egl = c.take<float>(kC);
    bs = c.take<float>(kC);
    gs = c.take<double>(kC);
    bytes = c.off;
  }
};

template <typename T, int KP, bool kWP>
__global__ void __launch_bounds__(256, 2)
    gdn_dqk_kernel(Inputs<T> in, const T* dout, Plan plan, Dims d, Work w, T* dq_out) {
  extern __shared__ __align__(16) unsigned char smem[];
  // v2: grid (nch KT, G), the K slices of a chunk-head adjacent; v1: grid (nch, G, KT)
  const int ci = d.v2 ? int(blockIdx.x) / d.KT : int(blockIdx.x);
  const int kt = d.v2 ? int(blockIdx.x) % d.KT : int(blockIdx.z);
  const int j = blockIdx.y, k0 = 64 * kt, h = j / d.R;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2;
  const int rm = WarpTiles<8, 64>::row(warp), half = warp >> 2, cn = WarpTiles<8, 64>::col(warp);
  const int t0 = plan.chunk_t0[ci], c = plan.chunk_len[ci];
  const int64_t qj = int64_t(ci) * d.G + j;
  const int64_t ldqk = int64_t(d.H) * d.K, ldv = int64_t(d.G) * d.V;
  using A = GamAcc<T>;

  if (k0 >= d.K) {  // a slice of K padding: every product is zero
    for (int e = tid; e < kC * kC; e += blockDim.x) w.dA[(qj * d.KT + kt) * kC * kC + e] = 0.f;
    if (tid < kC) {
      w.gpart[(qj * d.KT + kt) * kC + tid] = 0.0;
      w.bpart[(qj * d.KT + kt) * kC + tid] = 0.f;
    }
    return;
  }
  float aQ[1][4][4], aK[1][4][4], aW[1][4][4], aP[1][4][4];
  acc_zero(aQ);
  acc_zero(aK);
  acc_zero(aW);
  acc_zero(aP);
  A frob = 0;
  {  // phase 1: contractions over V, tiles double-buffered
    using S1 = DqkSmem1<T>;
    constexpr int NF = S1::NF, LD = S1::LD, PS = S1::PS;
    const S1 s0(smem), s1(smem + S1(nullptr).bytes);
    const int64_t pss = int64_t(KP) * d.VP, psv = int64_t(kC) * d.VP;  // workspace planes
    const __nv_bfloat16* Sq = w.Sin + qj * NF * pss + int64_t(k0) * d.VP;
    const __nv_bfloat16* dSq = w.dS + qj * NF * pss + int64_t(k0) * d.VP;
    const __nv_bfloat16* Vq = w.Vp + qj * NF * psv;
    const __nv_bfloat16* dVq = w.dVp + qj * NF * psv;
    const T* dOq = dout + (int64_t(t0) * d.G + j) * d.V;
    const int nvt = d.VP / kBV;
    auto issue = [&](int it) {
      const bool b = it & 1;
      const int v0 = it * kBV;
      for (int i = 0; i < NF; ++i) {
        load_tile((b ? s1.sin : s0.sin) + i * PS, LD, Sq + i * pss + v0, d.VP, kC, kBV, kC, kBV);
        load_tile((b ? s1.ds : s0.ds) + i * PS, LD, dSq + i * pss + v0, d.VP, kC, kBV, kC, kBV);
        load_tile((b ? s1.vp : s0.vp) + i * PS, LD, Vq + i * psv + v0, d.VP, kC, kBV, kC, kBV);
        load_tile((b ? s1.dvp : s0.dvp) + i * PS, LD, dVq + i * psv + v0, d.VP, kC, kBV, kC, kBV);
      }
      load_tile(b ? s1.dO : s0.dO, LD, dOq + v0, ldv, kC, kBV, c, d.V - v0);
      cp_async_commit();
    };
    issue(0);
    for (int it = 0; it < nvt; ++it) {
      const bool b = it & 1;
      if (it + 1 < nvt) {
        issue(it + 1);
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      const __nv_bfloat16 *sin_b = b ? s1.sin : s0.sin, *ds_b = b ? s1.ds : s0.ds;
      const Planes<NF, true> sin{sin_b, LD, PS}, vp{b ? s1.vp : s0.vp, LD, PS};
      const Opnd<T, true> dO{b ? s1.dO : s0.dO, LD};
      warp_mma<T>(aQ, dO, rm, sin, cn, kBV);
      warp_mma<T>(aK, vp, rm, Planes<NF, true>{ds_b, LD, PS}, cn, kBV);
      warp_mma<T>(aW, Planes<NF, true>{b ? s1.dvp : s0.dvp, LD, PS}, rm, sin, cn, kBV);
      warp_mma<T>(aP, dO, rm, vp, cn, kBV);
      for (int e = tid; e < kC * kBV; e += blockDim.x) {
        const int r = e / kBV, cc = e % kBV;
        frob += A(planes_value<NF>(ds_b, PS, r * LD + cc)) *
                A(planes_value<NF>(sin_b, PS, r * LD + cc));
      }
      __syncthreads();
    }
  }
  // phase 2
  DqkSmem2<T> s(smem);
  constexpr int LD = DqkSmem2<T>::LD, LDE = DqkSmem2<T>::LDE;
  load_tile(s.ks, LD, in.k + (int64_t(t0) * d.H + h) * d.K + k0, ldqk, kC, 64, c, d.K - k0);
  load_tile(s.qs, LD, in.q + (int64_t(t0) * d.H + h) * d.K + k0, ldqk, kC, 64, c, d.K - k0);
  constexpr int NF = DqkSmem2<T>::NF, PST = DqkSmem2<T>::PST;
  for (int i = 0; i < NF; ++i)
    load_tile(s.tm + i * PST, LD, w.Tm + (qj * NF + i) * kC * kC, kC, kC, kC, kC, kC);
  if constexpr (kWP) {  // the W slice's two bf16 planes [2][64][LD] in the fp32 tile's bytes
    const __nv_bfloat16* Wp = reinterpret_cast<const __nv_bfloat16*>(w.W) + qj * 2 * kC * KP + k0;
    for (int i = 0; i < 2; ++i)
      load_tile(reinterpret_cast<__nv_bfloat16*>(s.ws) + i * kC * LD, LD, Wp + i * kC * KP, KP, kC,
                64, kC, 64);
  } else {
    load_tile(s.ws, LD, w.W + qj * kC * KP + k0, KP, kC, 64, kC, 64);
  }
  cp_async_commit();
  float pv[1][4][4];  // P at this lane's dP positions (loads in flight with the tiles)
  {
    const float* Pq = w.P + qj * kC * kC;
    acc_each(pv, rm, cn, [&](int i, int jj, float& v) { v = Pq[i * kC + jj]; });
  }
  if (tid < kC) {
    const double* gq = w.gam + qj * kC;
    s.gs[tid] = gq[tid];
    s.eg[tid] = exp_nonpos(gq[tid]);
    s.egl[tid] = exp_nonpos(gq[kC - 1] - gq[tid]);
    s.bs[tid] = tid < c ? in.beta[(t0 + tid) * int64_t(d.G) + j] : 0.f;
  }
  {
    A fr = frob;
    for (int o = 16; o > 0; o >>= 1) fr += __shfl_xor_sync(0xffffffffu, fr, o);
    if (lane == 0) s.frobw[warp] = fr;
  }
  cp_async_wait<0>();
  __syncthreads();
  // dP -> dQK and E = dP .* P (dgamma); dW
#pragma unroll
  for (int ni = 0; ni < 4; ++ni)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int i = rm + g + 8 * (e >> 1), jj = cn + 8 * ni + 2 * (lane & 3) + (e & 1);
      const float v = aP[0][ni][e];
      float dqk = 0.f, ev = 0.f;
      if (jj <= i) {
        dqk = d.scale * v * exp_nonpos(s.gs[i] - s.gs[jj]);
        ev = v * pv[0][ni][e];
      }
      s.dqk[i * LD + jj] = dqk;
      s.es[i * LDE + jj] = ev;
    }
  acc_each(aW, rm, cn, [&](int i, int kk, float& v) { s.dw[i * LD + kk] = -v; });
  {  // dgamma_i += Qs_i . dQs_i;  r_i = Kt_i . dKt_i
    const auto pq = acc_row_sums<A>(
        aQ, rm, cn, [&](int i, int kk, float v) { return A(to_f32(s.qs[i * LD + kk])) * A(v); });
    const auto pr = acc_row_sums<A>(
        aK, rm, cn, [&](int i, int kk, float v) { return A(to_f32(s.ks[i * LD + kk])) * A(v); });
    if ((lane & 3) == 0) {
      const int i0 = rm + g, i1 = rm + g + 8;
      s.redq[half * kC + i0] = A(d.scale * s.eg[i0]) * pq.x;
      s.redq[half * kC + i1] = A(d.scale * s.eg[i1]) * pq.y;
      s.redr[half * kC + i0] = A(s.egl[i0]) * pr.x;
      s.redr[half * kC + i1] = A(s.egl[i1]) * pr.y;
    }
  }
  __syncthreads();
  const int64_t ldk = int64_t(d.G) * d.K;
  {  // dQ = diag(scale e^gamma) dQs + dQK K
    acc_each(aQ, rm, cn, [&](int i, int, float& v) { v *= d.scale * s.eg[i]; });
    warp_mma<T>(aQ, Opnd<float, true>{s.dqk, LD}, rm, Opnd<T, false>{s.ks, LD}, cn, kC);
    if (dq_out) {  // G == H: the final dq (ldk = H K)
      T* dq = dq_out + (int64_t(t0) * d.G + j) * d.K + k0;
      acc_each(aQ, rm, cn, [&](int i, int kk, float& v) {
        if (i < c && k0 + kk < d.K) dq[i * ldk + kk] = from_f32<T>(v);
      });
    } else {
      float* dq = w.dq + (int64_t(t0) * d.G + j) * d.K + k0;
      acc_each(aQ, rm, cn, [&](int i, int kk, float& v) {
        if (i < c && k0 + kk < d.K) dq[i * ldk + kk] = v;
      });
    }
  }
  float aB[1][4][4];  // dB_w = Tm^T dW
  acc_zero(aB);
  {  // dK = diag(egl) dKt + dQK^T Q + diag(beta e^gamma) dB_w
    acc_each(aK, rm, cn, [&](int i, int, float& v) { v *= s.egl[i]; });
    warp_mma<T>(aK, Opnd<float, false>{s.dqk, LD}, rm, Opnd<T, false>{s.qs, LD}, cn, kC);
    warp_mma<T>(aB, Planes<NF, false>{s.tm, LD, PST}, rm, Opnd<float, false>{s.dw, LD}, cn, kC);
    const auto pb = acc_row_sums(
        aB, rm, cn, [&](int i, int kk, float v) { return to_f32(s.ks[i * LD + kk]) * v; });
    if ((lane & 3) == 0) {
      s.redb[half * kC + rm + g] = s.eg[rm + g] * pb.x;
      s.redb[half * kC + rm + g + 8] = s.eg[rm + g + 8] * pb.y;
    }
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = rm + g + 8 * (e >> 1);
        aK[0][ni][e] += s.bs[i] * s.eg[i] * aB[0][ni][e];
      }
    float* dk = w.dk + (int64_t(t0) * d.G + j) * d.K + k0;
    acc_each(aK, rm, cn, [&](int i, int kk, float& v) {
      if (i < c && k0 + kk < d.K) dk[i * ldk + kk] = v;
    });
  }
  __syncthreads();  // every warp is done reading dW
  acc_each(aB, rm, cn, [&](int i, int kk, float& v) { s.dw[i * LD + kk] = v; });
  if (tid < kC) {
    A acc = 0;
    for (int jj = 0; jj < kC; ++jj) acc += s.es[tid * LDE + jj];
    s.rowe[tid] = acc;
  } else if (tid < 2 * kC) {
    A acc = 0;
    for (int i = 0; i < kC; ++i) acc += s.es[i * LDE + tid - kC];
    s.cole[tid - kC] = acc;
  }
  __syncthreads();
  {  // dA slice part = -dB_w W_slice^T
    float aA[1][4][4];
    acc_zero(aA);
    if constexpr (kWP)
      warp_mma<T>(aA, Opnd<float, true>{s.dw, LD}, rm,
                  Planes<2, true>{reinterpret_cast<const __nv_bfloat16*>(s.ws), LD, kC * LD}, cn,
                  64);
    else
      warp_mma<T>(aA, Opnd<float, true>{s.dw, LD}, rm, Opnd<float, true>{s.ws, LD}, cn, 64);
    float* dAq = w.dA + (qj * d.KT + kt) * kC * kC;
    acc_pairs(aA, rm, cn,
              [&](int i, int jj, float x0, float x1) { store2(dAq, i * kC + jj, -x0, -x1); });
  }
  if (tid == 0) {
    A rs = 0, fr = 0;
    for (int i = 0; i < kC; ++i) rs += s.redr[i] + s.redr[kC + i];
    for (int x = 0; x < 8; ++x) fr += s.frobw[x];
    s.scal[0] = rs + A(s.eg[kC - 1]) * fr;
  }
  __syncthreads();
  if (tid < kC) {
    const int i = tid;
    const float bsum = s.redb[i] + s.redb[kC + i];
    A gp = s.redq[i] + s.redq[kC + i] - (s.redr[i] + s.redr[kC + i]) + A(s.bs[i]) * A(bsum);
    if (kt == 0) gp += s.rowe[i] - s.cole[i];
    if (i == c - 1) gp += s.scal[0];
    w.gpart[(qj * d.KT + kt) * kC + i] = gp;
    w.bpart[(qj * d.KT + kt) * kC + i] = bsum;
  }
}

// ---- gdn_wy_kernel ---------------------------------------------------------------------------
// One block (NW = 4 warps; 8 in layout v3) per chunk-head; warp w owns rows 16 (w & 3) .. + 15
// and (8 warps) one 32-column half of every 64-wide product; row sums meet by halves.
//   Over V in 64-column tiles: dB_u = Tm^T dV', dv = diag(beta) dB_u, dbeta += v . dB_u,
//     dA_u += dB_u U^T;
//   dA = strict_lower(-dA_u + sum of the dqk kernel's slice parts);
//   M = K K^T (recomputed): dbeta_i += sum_j dA_ij M_ij Gamma_ij, E = dA .* A (dgamma),
//     D = dA .* beta_i Gamma, dk += (D + D^T) K;
//   dgamma = own + slice partials; dg = reverse cumulative sum of dgamma over the chunk.
// Tm and dV' are split planes. Shared memory: K (loaded with the first V tile), then the V-loop
// tiles (Tm, dV', U, V, dB_u) and after the loop (D + D^T, D, E) in the same bytes: 101 KB for
// bf16 / KP = 128, 2 blocks per SM.
template <typename T, int KP>
struct WySmem {
  static constexpr int NF = kFloatTerms<T>;
  static constexpr int LD = 72, LDK = KP + 8, LDE = 65, PS = kC * LD;
  using A = GamAcc<T>;
  float *eg, *bs, *redb, *redba;
  A *rowe, *cole, *dgam;
  double* gs;
  T* ks;
  __nv_bfloat16 *tm, *dvp;  // V loop: planes [NF][64][72]
  float *us, *dbu;
  T* vv;
  float *da, *dd, *es;  // after the V loop
  size_t bytes;
  __host__ __device__ explicit WySmem(unsigned char* base) {
    Carve c{base};
    eg = c.take<float>(kC);
    bs = c.take<float>(kC);
    redb = c.take<float>(2 * kC);  // by 32-column halves
    redba = c.take<float>(2 * kC);
    rowe = c.take<A>(kC);
    cole = c.take<A>(kC);
    dgam = c.take<A>(kC);
    gs = c.take<double>(kC);
    ks = c.take<T>(kC * LDK);
    Carve u = c;
    tm = u.take<__nv_bfloat16>(NF * PS);
    dvp = u.take<__nv_bfloat16>(NF * PS);
    us = u.take<float>(kC * LD);
    dbu = u.take<float>(kC * LD);
    vv = u.take<T>(kC * LD);
    Carve u2 = c;
    da = u2.take<float>(kC * LD);
    dd = u2.take<float>(kC * LD);
    es = u2.take<float>(kC * LDE);
    bytes = u.off > u2.off ? u.off : u2.off;
  }
};

template <typename T, int KP, int NW>
__global__ void __launch_bounds__(32 * NW, NW == 8 ? 2 : 0)
    gdn_wy_kernel(Inputs<T> in, Plan plan, Dims d, Work w, T* dv, float* dg, float* dbeta,
                  T* dk_out) {
  extern __shared__ __align__(16) unsigned char smem[];
  using S = WySmem<T, KP>;
  constexpr int NF = S::NF, LD = S::LD, LDK = S::LDK, LDE = S::LDE, PS = S::PS;
  using Tiles = WarpTiles<NW, 64>;  // each 64-wide product
  constexpr int NT = Tiles::NT;
  using A = typename S::A;
  S s(smem);
  const int ci = blockIdx.x, j = blockIdx.y, h = j / d.R;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2;
  const int t2 = (lane & 3) * 2;
  const int t0 = plan.chunk_t0[ci], c = plan.chunk_len[ci], cd = round_up(c, 16);
  // with 8 warps the two column halves' row sums meet in shared memory (half = 0, 1)
  const int kd = round_up(d.K, 16), rm = Tiles::row(warp), half = warp >> 2, cn = Tiles::col(warp);
  const int64_t qj = int64_t(ci) * d.G + j;
  const int64_t ldv = int64_t(d.G) * d.V;
  auto load_vtile = [&](int v0) {
    const int vc = min(64, d.VP - v0);
    for (int i = 0; i < NF; ++i)
      load_tile(s.dvp + i * PS, LD, w.dVp + (qj * NF + i) * kC * d.VP + v0, d.VP, kC, 64, kC, vc);
    load_tile(s.us, LD, w.U + qj * kC * d.VP + v0, d.VP, kC, 64, kC, vc);
    load_tile(s.vv, LD, in.v + (int64_t(t0) * d.G + j) * d.V + v0, ldv, kC, 64, c, d.V - v0);
  };
  for (int i = 0; i < NF; ++i)
    load_tile(s.tm + i * PS, LD, w.Tm + (qj * NF + i) * kC * kC, kC, kC, kC, kC, kC);
  load_vtile(0);
  load_tile(s.ks, LDK, in.k + (int64_t(t0) * d.H + h) * d.K, int64_t(d.H) * d.K, kC, KP, c, d.K);
  cp_async_commit();
  if (tid < kC) {
    const double* gq = w.gam + qj * kC;
    s.gs[tid] = gq[tid];
    s.eg[tid] = exp_nonpos(gq[tid]);
    s.bs[tid] = tid < c ? in.beta[(t0 + tid) * int64_t(d.G) + j] : 0.f;
  }
  float aA[1][NT][4];  // dA_u = dB_u U^T
  acc_zero(aA);
  // v_i . dB_u,i for rows rm + g, rm + g + 8 by 32-column halves of the product (the same order
  // for either warp count: the layouts agree bitwise)
  constexpr int NH = NT / 4;  // the halves this warp holds (2 with 4 warps, 1 with 8)
  float bsum[NH][2] = {};
  T* dvq = dv + (int64_t(t0) * d.G + j) * d.V;
  for (int v0 = 0; v0 < d.VP; v0 += 64) {
    cp_async_wait<0>();
    __syncthreads();
    float aB[1][NT][4];
    acc_zero(aB);
    warp_mma<T>(aB, Planes<NF, false>{s.tm, LD, PS}, rm, Planes<NF, false>{s.dvp, LD, PS}, cn, cd);
    acc_each(aB, rm, cn, [&](int i, int col, float& v) {
      if (i < c && v0 + col < d.V) dvq[i * ldv + v0 + col] = from_f32<T>(s.bs[i] * v);
      s.dbu[i * LD + col] = v;
    });
#pragma unroll
    for (int k = 0; k < NH; ++k) {
      const auto pb = acc_row_sums<float>(
          reinterpret_cast<float(&)[1][4][4]>(aB[0][4 * k]), rm, cn + 32 * k,
          [&](int i, int col, float v) { return to_f32(s.vv[i * LD + col]) * v; });
      bsum[k][0] += pb.x;
      bsum[k][1] += pb.y;
    }
    __syncthreads();
    warp_mma<T>(aA, Opnd<float, true>{s.dbu, LD}, rm, Opnd<float, true>{s.us, LD}, cn, 64);
    __syncthreads();
    if (v0 + 64 < d.VP) load_vtile(v0 + 64);
    cp_async_commit();
  }
  if ((lane & 3) == 0) {
#pragma unroll
    for (int k = 0; k < NH; ++k) {
      s.redb[(half + k) * kC + rm + g] = bsum[k][0];
      s.redb[(half + k) * kC + rm + g + 8] = bsum[k][1];
    }
  }
  {  // dA (strict lower) = -dA_u + slice parts (all loads first, then the sums)
    const float* dAp = w.dA + qj * d.KT * kC * kC;
    float part[NT][4];
    acc_zero(reinterpret_cast<float(&)[1][NT][4]>(part));
    for (int kt = 0; kt < d.KT; ++kt)  // 4 NT independent loads per slice
#pragma unroll
      for (int ni = 0; ni < NT; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = rm + g + 8 * (e >> 1), jj = cn + 8 * ni + t2 + (e & 1);
          part[ni][e] += dAp[(kt * kC + i) * kC + jj];
        }
#pragma unroll
    for (int ni = 0; ni < NT; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = rm + g + 8 * (e >> 1), jj = cn + 8 * ni + t2 + (e & 1);
        aA[0][ni][e] = jj < i ? part[ni][e] - aA[0][ni][e] : 0.f;
      }
  }
  {
    float aM[1][NT][4];
    acc_zero(aM);
    warp_mma<T>(aM, Opnd<T, true>{s.ks, LDK}, rm, Opnd<T, true>{s.ks, LDK}, cn, kd);
    float pr[NH][2] = {};  // by halves, as bsum
#pragma unroll
    for (int ni = 0; ni < NT; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = rm + g + 8 * (e >> 1), jj = cn + 8 * ni + t2 + (e & 1);
        const float da = aA[0][ni][e];
        float ev = 0.f, dv_ = 0.f;
        if (jj < i) {
          const float gam = exp_nonpos(s.gs[i] - s.gs[jj]);
          const float mg = aM[0][ni][e] * gam;
          pr[ni / 4][e >> 1] += da * mg;
          ev = da * s.bs[i] * mg;
          dv_ = da * s.bs[i] * gam;
        }
        s.es[i * LDE + jj] = ev;
        s.dd[i * LD + jj] = dv_;
      }
#pragma unroll
    for (int k = 0; k < NH; ++k)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        pr[k][r] += __shfl_xor_sync(0xffffffffu, pr[k][r], 1);
        pr[k][r] += __shfl_xor_sync(0xffffffffu, pr[k][r], 2);
      }
    if ((lane & 3) == 0) {
#pragma unroll
      for (int k = 0; k < NH; ++k) {
        s.redba[(half + k) * kC + rm + g] = pr[k][0];
        s.redba[(half + k) * kC + rm + g + 8] = pr[k][1];
      }
    }
  }
  __syncthreads();
  for (int e = tid; e < kC * kC; e += blockDim.x) {
    const int i = e >> 6, jj = e & 63;
    s.da[i * LD + jj] = s.dd[i * LD + jj] + s.dd[jj * LD + i];
  }
  if (tid < kC) {
    A acc = 0;
    for (int jj = 0; jj < kC; ++jj) acc += s.es[tid * LDE + jj];
    s.rowe[tid] = acc;
  } else if (tid < 2 * kC) {
    A acc = 0;
    for (int i = 0; i < kC; ++i) acc += s.es[i * LDE + tid - kC];
    s.cole[tid - kC] = acc;
  }
  __syncthreads();
  {  // dk += (D + D^T) K: the dqk kernel's part is read into registers before the product
    float* dk = w.dk + (int64_t(t0) * d.G + j) * d.K;
    const int64_t ldk = int64_t(d.G) * d.K;
    for (int n0 = 0; n0 < kd; n0 += 64) {
      float acc[1][NT][4];
      acc_each(acc, rm, n0 + cn,
               [&](int i, int kk, float& v) { v = (i < c && kk < d.K) ? dk[i * ldk + kk] : 0.f; });
      warp_mma<T>(acc, Opnd<float, true>{s.da, LD}, rm, Opnd<T, false>{s.ks, LDK}, n0 + cn, cd);
      if (dk_out) {  // G == H: the final dk (ldk = H K)
        T* dko = dk_out + (int64_t(t0) * d.G + j) * d.K;
        acc_each(acc, rm, n0 + cn, [&](int i, int kk, float& v) {
          if (i < c && kk < d.K) dko[i * ldk + kk] = from_f32<T>(v);
        });
      } else {
        acc_each(acc, rm, n0 + cn, [&](int i, int kk, float& v) {
          if (i < c && kk < d.K) dk[i * ldk + kk] = v;
        });
      }
    }
  }
  if (tid < kC) {
    const int i = tid;
    A gsum = s.rowe[i] - s.cole[i];
    float bsum = s.redb[i] + s.redba[i] + s.redb[kC + i] + s.redba[kC + i];
    for (int kt = 0; kt < d.KT; ++kt) {
      gsum += w.gpart[(qj * d.KT + kt) * kC + i];
      bsum += w.bpart[(qj * d.KT + kt) * kC + i];
    }
    s.dgam[i] = gsum;
    if (i < c) dbeta[(t0 + i) * int64_t(d.G) + j] = bsum;
  }
  __syncthreads();
  if (tid == 0) {
    double acc = 0.0;
    for (int i = c - 1; i >= 0; --i) {
      acc += s.dgam[i];
      dg[(t0 + i) * int64_t(d.G) + j] = float(acc);
    }
  }
}

// dst[t, h, :] = sum_{r < R} src[t, h R + r, :] in order r = 0, 1, ...; one block per token,
// blockIdx.y selects (dq, dk).
template <typename T>
__global__ void gdn_sum_heads_kernel(const float* src0, T* dst0, const float* src1, T* dst1, int H,
                                     int R, int K) {
  const int64_t t = blockIdx.x;
  const int HK = H * K;
  const float* src = (blockIdx.y ? src1 : src0) + t * HK * R;
  T* dst = (blockIdx.y ? dst1 : dst0) + t * HK;
  for (int e = threadIdx.x; e < HK; e += blockDim.x) {
    const int hh = e / K, kk = e - hh * K;
    const float* p = src + hh * R * K + kk;
    float acc = 0.f;
    for (int r = 0; r < R; ++r) acc += p[r * K];
    dst[e] = from_f32<T>(acc);
  }
}

template <typename K>
void set_smem(K kernel, size_t bytes) {
  DT_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

template <typename T, int KP>
void bwd_impl(const Inputs<T>& in, const T* dout, const Setup& st, T* dq, T* dk, T* dv, float* dg,
              float* dbeta) {
  const Plan& plan = st.plan;
  const Dims& d = st.d;
  const Work& w = st.w;
  // v2 with one value head per key head: dq and dk go straight into the outputs (setup then
  // reserves no dq scratch)
  const bool direct = w.dq == nullptr;
  launch_prep<T, KP>(in, plan, d, w, true);
  launch_states<T, KP>(in, plan, d, w, nullptr, nullptr);
  {
    const size_t smem = DstateSmem<T, KP>(nullptr).bytes;
    with_warps_w<T>(d, [&](auto nw, auto wp) {
      constexpr int NW = decltype(nw)::value;
      constexpr bool WP = decltype(wp)::value;
      set_smem(gdn_dstate_kernel<T, KP, NW, WP>, smem);
      gdn_dstate_kernel<T, KP, NW, WP>
          <<<dim3(d.VP / kBV, d.G, plan.nseg), 32 * NW, smem>>>(in, dout, plan, d, w);
    });
    DT_CUDA_CHECK(cudaGetLastError());
  }
  {
    const size_t s1 = 2 * DqkSmem1<T>(nullptr).bytes, s2 = DqkSmem2<T>(nullptr).bytes;
    const size_t smem = std::max(s1, s2);
    const dim3 grid = d.v2 ? dim3(unsigned(plan.nch) * d.KT, d.G) : dim3(plan.nch, d.G, d.KT);
    with_w_planes<T>(d, [&](auto wp) {
      constexpr bool WP = decltype(wp)::value;
      set_smem(gdn_dqk_kernel<T, KP, WP>, smem);
      gdn_dqk_kernel<T, KP, WP><<<grid, 256, smem>>>(in, dout, plan, d, w, direct ? dq : nullptr);
    });
    DT_CUDA_CHECK(cudaGetLastError());
  }
  {
    const size_t smem = WySmem<T, KP>(nullptr).bytes;
    T* dk_out = direct ? dk : nullptr;
    with_warps(d, [&](auto nw) {
      constexpr int NW = decltype(nw)::value;
      set_smem(gdn_wy_kernel<T, KP, NW>, smem);
      gdn_wy_kernel<T, KP, NW>
          <<<dim3(plan.nch, d.G), 32 * NW, smem>>>(in, plan, d, w, dv, dg, dbeta, dk_out);
    });
    DT_CUDA_CHECK(cudaGetLastError());
  }
  if (!direct) {
    gdn_sum_heads_kernel<T><<<dim3(unsigned(d.N), 2), 256>>>(w.dq, dq, w.dk, dk, d.H, d.R, d.K);
    DT_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace
}  // namespace deltatron::cuda::gdn

namespace deltatron::cuda {

void gdn_chunk_bwd(DType dt, const void* q_NHK, const void* k_NHK, const void* v_NGV,
                   const float* g_NG, const float* beta_NG, const int32_t* /*cu_dev*/,
                   const int32_t* cu_host, int nseg, int64_t N, int64_t H, int64_t G, int64_t K,
                   int64_t V, float scale, const void* do_NGV, void* dq_NHK, void* dk_NHK,
                   void* dv_NGV, float* dg_NG, float* dbeta_NG) {
  const gdn::Setup st =
      gdn::setup("cuda::gdn_chunk_bwd", cu_host, nseg, N, H, G, K, V, scale, true,
                 dt == DType::bf16 ? gdn::kFloatTerms<__nv_bfloat16> : gdn::kFloatTerms<float>);
  if (st.plan.nch == 0) return;  // no tokens, no gradients
  DT_DISPATCH_DTYPE(dt, T, {
    const gdn::Inputs<T> in{static_cast<const T*>(q_NHK), static_cast<const T*>(k_NHK),
                            static_cast<const T*>(v_NGV), g_NG, beta_NG};
    const T* dout = static_cast<const T*>(do_NGV);
    T *dq = static_cast<T*>(dq_NHK), *dk = static_cast<T*>(dk_NHK), *dv = static_cast<T*>(dv_NGV);
    if (st.KP == 128)
      gdn::bwd_impl<T, 128>(in, dout, st, dq, dk, dv, dg_NG, dbeta_NG);
    else
      gdn::bwd_impl<T, 256>(in, dout, st, dq, dk, dv, dg_NG, dbeta_NG);
  });
}

}  // namespace deltatron::cuda
