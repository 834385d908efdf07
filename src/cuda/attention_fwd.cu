// bf16 tensor-core forward of the varlen GQA attention (flash-attention 2 style), causal or
// bidirectional inside each segment (FwdArgs::causal).
//
// Parallel mapping: one block of 4 warps per (64-row query tile of a segment, query head h);
// warp w owns query rows 16w..16w+15 of the tile and keeps, per thread, the running row max m,
// the partial row sum l and the output accumulator o[16 x Kp] as mma C fragments (Kp/2 floats,
// 128 at Kp = 256). The block walks the key tiles 0..(last row)/64 of the segment in order.
// Without the causal mask (the vision tower) the block walks every key tile of the segment and
// masks only the keys past its end (key >= L -> -inf: their zero-filled K rows would give s = 0).
// Per key tile: S = Q K^T (mma, fp32), scale and causal mask (key > row -> -inf), online softmax
// in base 2 (exp2 of scale*log2(e)*s - m), P rounded to bf16 A fragments, O += P V.
// Shared memory: Q, K, V tiles [64][Kp + 8] bf16 = 3 x 33,792 B at Kp = 256 (2 blocks per SM).
// Sync points: the V load is issued once K is ready and overlaps S = Q K^T; the next K load is
// issued once V is ready and overlaps O += P V. Rows past the segment end are computed on
// zero-filled Q (finite, never stored); every valid row sees key 0, so its max is finite.
// lse = (m + log2 l) ln 2. The output is staged through the Q tile for coalesced stores.
#include "cuda/attention_common.cuh"

namespace deltatron::cuda::attn {

namespace {

template <int kKp>
struct FwdTileCfg {
  static constexpr int kThreads = 128, kRows = kFwdRows, kLd = kKp + 8;
  static constexpr size_t kSmem = size_t(kRows + 2 * kBlockKeys) * kLd * sizeof(bf16);
};

template <int kKp>
__global__ void __launch_bounds__(128, 2)
    attention_fwd_kernel(const __grid_constant__ TileList tl, const FwdArgs p) {
  using C = FwdTileCfg<kKp>;
  constexpr int kLd = C::kLd, kNT = kKp / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw);
  bf16* sK = sQ + C::kRows * kLd;
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
  const bf16* q = p.q + (int64_t(a + r0) * p.H + h) * p.K;
  const bf16* k = p.k + (int64_t(a) * p.J + j) * p.K;
  const bf16* v = p.v + (int64_t(a) * p.J + j) * p.K;

  load_tile<C::kRows, kKp, C::kThreads>(sQ, q, ldq, nq, p.K, p.vec);
  load_tile<kBlockKeys, kKp, C::kThreads>(sK, k, ldk, min(kBlockKeys, L), p.K, p.vec);
  cp_async_commit();

  float o[kNT][4];
#pragma unroll
  for (int n = 0; n < kNT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const float c2 = p.scale * kLog2e;
  const int row0 = r0 + warp * 16 + g;  // segment-local row of c[.][0..1]; c[.][2..3] is +8

  for (int kb = 0; kb < nkt; ++kb) {
    cp_async_wait<0>();
    __syncthreads();  // K[kb] (and Q) ready; every warp is done with V[kb-1]
    load_tile<kBlockKeys, kKp, C::kThreads>(sV, v + int64_t(kb) * kBlockKeys * ldk, ldk,
                                            min(kBlockKeys, L - kb * kBlockKeys), p.K, p.vec);
    cp_async_commit();

    float s[8][4];
#pragma unroll
    for (int n = 0; n < 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
    mma_abt<8, kKp>(s, sQ + warp * 16 * kLd, kLd, sK, kLd, lane);

    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = kb * kBlockKeys + n * 8 + 2 * t + (e & 1), row = row0 + (e >> 1) * 8;
        const float x = (p.causal ? col > row : col >= key_end) ? -INFINITY : s[n][e] * c2;
        s[n][e] = x;
        mx[e >> 1] = fmaxf(mx[e >> 1], x);
      }
    float alpha[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
      alpha[i] = exp2f(m[i] - mx[i]);  // 0 on the first tile (m = -inf, mx finite)
      m[i] = mx[i];
      l[i] *= alpha[i];
    }
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float pe = exp2f(s[n][e] - mx[e >> 1]);
        s[n][e] = pe;
        l[e >> 1] += pe;
      }
#pragma unroll
    for (int n = 0; n < kNT; ++n) {
      o[n][0] *= alpha[0];
      o[n][1] *= alpha[0];
      o[n][2] *= alpha[1];
      o[n][3] *= alpha[1];
    }
    uint32_t pa[4][4];
    c_to_a<4>(s, pa);

    cp_async_wait<0>();
    __syncthreads();  // V[kb] ready; every warp is done with K[kb]
    if (kb + 1 < nkt) {
      load_tile<kBlockKeys, kKp, C::kThreads>(sK, k + int64_t(kb + 1) * kBlockKeys * ldk, ldk,
                                              min(kBlockKeys, L - (kb + 1) * kBlockKeys), p.K,
                                              p.vec);
      cp_async_commit();
    }
    mma_ab_reg<4, kNT>(o, pa, sV, kLd, lane);
  }

  // Finish: full row sums over the quad, lse, normalised output staged in this warp's Q rows.
  float inv[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    inv[i] = 1.f / l[i];
    const int row = row0 + i * 8;
    if (t == 0 && row < L) p.lse[int64_t(a + row) * p.H + h] = (m[i] + log2f(l[i])) * kLn2;
  }
  bf16* so = sQ + (warp * 16 + g) * kLd + 2 * t;  // this warp's rows: only it reads them
#pragma unroll
  for (int n = 0; n < kNT; ++n) {
    *reinterpret_cast<uint32_t*>(so + n * 8) = pack_bf16(o[n][0] * inv[0], o[n][1] * inv[0]);
    *reinterpret_cast<uint32_t*>(so + 8 * kLd + n * 8) =
        pack_bf16(o[n][2] * inv[1], o[n][3] * inv[1]);
  }
  __syncthreads();
  store_tile<C::kRows, kKp, C::kThreads>(sQ, p.o + (int64_t(a + r0) * p.H + h) * p.K, ldq, nq, p.K,
                                         p.vec);
}

template <int kKp>
void launch_fwd(const std::vector<Tile>& tiles, const FwdArgs& a) {
  using C = FwdTileCfg<kKp>;
  DT_CUDA_CHECK(cudaFuncSetAttribute(attention_fwd_kernel<kKp>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, int(C::kSmem)));
  for_each_chunk(tiles, [&](const TileList& tl) {
    attention_fwd_kernel<kKp><<<tl.count * a.H, C::kThreads, C::kSmem>>>(tl, a);
    DT_CUDA_CHECK(cudaGetLastError());
  });
}

}  // namespace

void launch_fwd_tc(int Kp, const std::vector<Tile>& tiles, const FwdArgs& a) {
  switch (Kp) {
    case 64:
      return launch_fwd<64>(tiles, a);
    case 128:
      return launch_fwd<128>(tiles, a);
    default:
      return launch_fwd<256>(tiles, a);
  }
}

}  // namespace deltatron::cuda::attn
