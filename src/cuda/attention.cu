// CUDA varlen GQA attention, causal or bidirectional (see attention.h): argument checks, grid
// planning, the fp32 SIMT path of the f32 debug mode, D = rowsum(dO * O), and the split-sum of
// partial dK/dV.
// The bf16 tensor-core kernels are in attention_fwd.cu and attention_bwd.cu.
//
// f32 SIMT kernels: one warp per output row ((n, h) for o, lse and dq; (m, j) for dk and dv);
// lane l holds head-dim elements l, l+32, ... (8 registers cover K <= 256). Dot products are
// per-lane partial sums then an xor butterfly, which gives every lane the same bits. Keys (or
// queries) are visited in order; sums over them are two-level (chunks of 32 added into a
// total) so the fp32 rounding error grows like sqrt(32) + sqrt(n/32) rather than sqrt(n).
// The forward rescales both levels when the running max grows (online softmax). Causal: query n
// sees keys [start, n]; bidirectional: every key of its segment [start, end).
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "cuda/attention.h"
#include "cuda/attention_common.cuh"
#include "cuda/kernel_util.cuh"

namespace deltatron::cuda {

namespace {

using attn::bf16;

constexpr int kLaneRegs = 8;       // head-dim elements per lane in the SIMT kernels (K <= 256)
constexpr int kChunk = 32;         // inner length of the two-level sums
constexpr int kSimtThreads = 256;  // 8 warps (rows) per block
// SMs of an H100 / H200 SXM: the dK/dV head-split heuristic uses this constant (not the
// device's count) so the summation order, hence the bits, depend only on the shapes.
constexpr int64_t kSlots = 132;

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Segment [*a, *b) of token n: the last s with cu[s] <= n (cu non-decreasing, cu[nseg] > n).
__device__ __forceinline__ void segment_of(const int32_t* cu, int nseg, int n, int* a, int* b) {
  int lo = 0, hi = nseg + 1;  // first index with cu[idx] > n
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (cu[mid] <= n)
      lo = mid + 1;
    else
      hi = mid;
  }
  *a = cu[lo - 1];
  *b = cu[lo];
}

__device__ __forceinline__ void load_row(float (&r)[kLaneRegs], const float* p, int K, int lane) {
#pragma unroll
  for (int i = 0; i < kLaneRegs; ++i) r[i] = lane + 32 * i < K ? p[lane + 32 * i] : 0.f;
}
__device__ __forceinline__ float dot_row(const float (&r)[kLaneRegs], const float* p, int K,
                                         int lane) {
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < kLaneRegs; ++i)
    if (lane + 32 * i < K) s += r[i] * p[lane + 32 * i];
  return warp_sum(s);
}

struct SimtArgs {
  const float *q, *k, *v, *o, *dout, *lse, *D;
  float *out_o, *out_lse, *dq, *dk, *dv;
  const int32_t* cu;
  int nseg;
  int64_t N;
  int H, J, K;
  float scale;
  bool causal;
};

__global__ void __launch_bounds__(kSimtThreads) attention_fwd_simt(const SimtArgs p) {
  const int64_t w = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (w >= p.N * p.H) return;  // whole warps
  const int n = int(w / p.H), h = int(w % p.H), j = h / (p.H / p.J);
  int a, b;
  segment_of(p.cu, p.nseg, n, &a, &b);
  float q[kLaneRegs], o_tot[kLaneRegs], o_chk[kLaneRegs];
  load_row(q, p.q + w * p.K, p.K, lane);
#pragma unroll
  for (int i = 0; i < kLaneRegs; ++i) o_tot[i] = o_chk[i] = 0.f;
  float mx = -INFINITY, l_tot = 0.f, l_chk = 0.f;
  int cnt = 0;
  const int last = p.causal ? n : b - 1;  // the last key query n sees
  for (int m = a; m <= last; ++m) {
    const int64_t kv = (int64_t(m) * p.J + j) * p.K;
    const float s = dot_row(q, p.k + kv, p.K, lane) * p.scale;
    if (s > mx) {  // warp-uniform
      const float alpha = expf(mx - s);
      mx = s;
      l_tot *= alpha;
      l_chk *= alpha;
#pragma unroll
      for (int i = 0; i < kLaneRegs; ++i) {
        o_tot[i] *= alpha;
        o_chk[i] *= alpha;
      }
    }
    const float pe = expf(s - mx);
    l_chk += pe;
#pragma unroll
    for (int i = 0; i < kLaneRegs; ++i)
      if (lane + 32 * i < p.K) o_chk[i] += pe * p.v[kv + lane + 32 * i];
    if (++cnt == kChunk || m == last) {
      cnt = 0;
      l_tot += l_chk;
      l_chk = 0.f;
#pragma unroll
      for (int i = 0; i < kLaneRegs; ++i) {
        o_tot[i] += o_chk[i];
        o_chk[i] = 0.f;
      }
    }
  }
  const float inv = 1.f / l_tot;
#pragma unroll
  for (int i = 0; i < kLaneRegs; ++i)
    if (lane + 32 * i < p.K) p.out_o[w * p.K + lane + 32 * i] = o_tot[i] * inv;
  if (lane == 0) p.out_lse[w] = mx + logf(l_tot);
}

__global__ void __launch_bounds__(kSimtThreads) attention_dq_simt(const SimtArgs p) {
  const int64_t w = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (w >= p.N * p.H) return;
  const int n = int(w / p.H), h = int(w % p.H), j = h / (p.H / p.J);
  int a, b;
  segment_of(p.cu, p.nseg, n, &a, &b);
  float q[kLaneRegs], dO[kLaneRegs], tot[kLaneRegs], chk[kLaneRegs];
  load_row(q, p.q + w * p.K, p.K, lane);
  load_row(dO, p.dout + w * p.K, p.K, lane);
#pragma unroll
  for (int i = 0; i < kLaneRegs; ++i) tot[i] = chk[i] = 0.f;
  const float lse = p.lse[w], Dr = p.D[w];
  int cnt = 0;
  const int last = p.causal ? n : b - 1;
  for (int m = a; m <= last; ++m) {
    const int64_t kv = (int64_t(m) * p.J + j) * p.K;
    const float pe = expf(dot_row(q, p.k + kv, p.K, lane) * p.scale - lse);
    const float ds = pe * (dot_row(dO, p.v + kv, p.K, lane) - Dr);
#pragma unroll
    for (int i = 0; i < kLaneRegs; ++i)
      if (lane + 32 * i < p.K) chk[i] += ds * p.k[kv + lane + 32 * i];
    if (++cnt == kChunk || m == last) {
      cnt = 0;
#pragma unroll
      for (int i = 0; i < kLaneRegs; ++i) {
        tot[i] += chk[i];
        chk[i] = 0.f;
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kLaneRegs; ++i)
    if (lane + 32 * i < p.K) p.dq[w * p.K + lane + 32 * i] = tot[i] * p.scale;
}

__global__ void __launch_bounds__(kSimtThreads) attention_dkdv_simt(const SimtArgs p) {
  const int64_t w = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (w >= p.N * p.J) return;
  const int m = int(w / p.J), j = int(w % p.J), G = p.H / p.J;
  int a, b;
  segment_of(p.cu, p.nseg, m, &a, &b);
  float kr[kLaneRegs], vr[kLaneRegs], dk_tot[kLaneRegs], dk_chk[kLaneRegs], dv_tot[kLaneRegs],
      dv_chk[kLaneRegs];
  load_row(kr, p.k + w * p.K, p.K, lane);
  load_row(vr, p.v + w * p.K, p.K, lane);
#pragma unroll
  for (int i = 0; i < kLaneRegs; ++i) dk_tot[i] = dk_chk[i] = dv_tot[i] = dv_chk[i] = 0.f;
  int cnt = 0;
  for (int gh = 0; gh < G; ++gh) {
    const int h = j * G + gh;
    for (int n = p.causal ? m : a; n < b; ++n) {
      const int64_t nh = int64_t(n) * p.H + h, qo = nh * p.K;
      const float pe = expf(dot_row(kr, p.q + qo, p.K, lane) * p.scale - p.lse[nh]);
      const float ds = pe * (dot_row(vr, p.dout + qo, p.K, lane) - p.D[nh]);
#pragma unroll
      for (int i = 0; i < kLaneRegs; ++i)
        if (lane + 32 * i < p.K) {
          dv_chk[i] += pe * p.dout[qo + lane + 32 * i];
          dk_chk[i] += ds * p.q[qo + lane + 32 * i];
        }
      if (++cnt == kChunk || n == b - 1) {
        cnt = 0;
#pragma unroll
        for (int i = 0; i < kLaneRegs; ++i) {
          dk_tot[i] += dk_chk[i];
          dv_tot[i] += dv_chk[i];
          dk_chk[i] = dv_chk[i] = 0.f;
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kLaneRegs; ++i)
    if (lane + 32 * i < p.K) {
      p.dk[w * p.K + lane + 32 * i] = dk_tot[i] * p.scale;
      p.dv[w * p.K + lane + 32 * i] = dv_tot[i];
    }
}

// D[r] = sum_k dO[r, k] O[r, k] in fp32, one warp per row r of [rows, K].
template <typename T>
__global__ void __launch_bounds__(kSimtThreads)
    attention_rowdot(const T* o, const T* dout, int64_t rows, int K, float* D) {
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  float s = 0.f;
  for (int c = lane; c < K; c += 32) s += load_f32(o, r * K + c) * load_f32(dout, r * K + c);
  s = warp_sum(s);
  if (lane == 0) D[r] = s;
}

// out[n, j, c] = sum_{s in order} part[s, n, j, c] (part rows padded to Kp), for dk and dv.
__global__ void attention_sum_splits(const float* dk_part, const float* dv_part, int splits,
                                     int64_t N, int J, int K, int Kp, bf16* dk, bf16* dv) {
  const int64_t total = N * J * K;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / K;
    const int c = int(i % K);
    float sk = 0.f, sv = 0.f;
    for (int s = 0; s < splits; ++s) {
      const int64_t off = (int64_t(s) * N * J + row) * Kp + c;
      sk += dk_part[off];
      sv += dv_part[off];
    }
    dk[i] = __float2bfloat16_rn(sk);
    dv[i] = __float2bfloat16_rn(sv);
  }
}

// Stream-ordered temporary device memory (cudaMallocAsync / cudaFreeAsync on stream 0), so the
// backward never blocks the host the way cudaFree would.
class StreamBuffer {
 public:
  StreamBuffer(size_t bytes, const char* what) {
    if (bytes == 0) return;
    const cudaError_t err = cudaMallocAsync(&ptr_, bytes, 0);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      ptr_ = nullptr;
      core::fail("cuda::attention_bwd: cannot allocate ", bytes, " bytes (", bytes >> 20,
                 " MiB) for ", what, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err),
                 ")");
    }
  }
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;
  ~StreamBuffer() {
    if (ptr_) (void)cudaFreeAsync(ptr_, 0);
  }
  float* f32() const { return static_cast<float*>(ptr_); }

 private:
  void* ptr_ = nullptr;
};

void check_args(const char* op, const int32_t* cu_host, int nseg, int64_t N, int64_t H, int64_t J,
                int64_t K) {
  DT_CHECK(N >= 0 && H > 0 && J > 0, op, ": bad sizes N=", N, " H=", H, " J=", J);
  DT_CHECK(K >= 1 && K <= 256, op, ": head dim K=", K, " outside [1, 256]");
  DT_CHECK(H % J == 0, op, ": query heads H=", H, " not a multiple of kv heads J=", J);
  DT_CHECK(H <= 4096, op, ": H=", H, " query heads exceed 4096");
  DT_CHECK(nseg >= 0 && cu_host != nullptr, op, ": missing segment boundaries");
  DT_CHECK(cu_host[0] == 0 && cu_host[nseg] == N, op, ": segments cover [", cu_host[0], ", ",
           cu_host[nseg], "), pack has N=", N);
  for (int s = 0; s < nseg; ++s)
    DT_CHECK(cu_host[s] <= cu_host[s + 1], op, ": segment boundaries decrease at ", s);
}

// Every attention tensor is required: null is an error (cuda::check_device_ptr lets it pass).
void require_device_ptr(const char* op, const char* name, const void* p) {
  DT_CHECK(p != nullptr, op, ": ", name, " is null");
  check_device_ptr(op, name, p);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }
int padded_dim(int64_t K) { return K <= 64 ? 64 : K <= 128 ? 128 : 256; }
unsigned simt_blocks(int64_t rows) {
  return unsigned((rows * 32 + kSimtThreads - 1) / kSimtThreads);
}

// Head splits s (a divisor of G) for dK/dV: the smallest s for which the longest block (G/s
// heads x the query tiles of the longest segment) is no longer than the average load of the
// kSlots SMs; only one long segment among short ones needs more than 1. Units: (key tile, query
// tile) pairs, nt (nt + 1) / 2 per causal segment of nt tiles, nt^2 per bidirectional one.
int dkdv_splits(const int32_t* cu_host, int nseg, int64_t H, int64_t J, bool causal) {
  const int64_t G = H / J;
  int64_t nt_max = 0, units = 0;
  for (int s = 0; s < nseg; ++s) {
    const int64_t nt = (cu_host[s + 1] - cu_host[s] + 63) / 64;
    nt_max = std::max(nt_max, nt);
    units += causal ? nt * (nt + 1) / 2 : nt * nt;
  }
  for (int64_t d = 1; d < G; ++d)
    if (G % d == 0 && (G / d) * nt_max * kSlots <= units * H) return int(d);
  return int(G);
}

}  // namespace

void attention_fwd(DType dt, const void* q_NHK, const void* k_NJK, const void* v_NJK,
                   const int32_t* cu_dev, const int32_t* cu_host, int nseg, int64_t N, int64_t H,
                   int64_t J, int64_t K, float scale, void* o_NHK, float* lse_NH, bool causal) {
  const char* op = "cuda::attention_fwd";
  check_args(op, cu_host, nseg, N, H, J, K);
  if (N == 0) return;
  require_device_ptr(op, "q_NHK", q_NHK);
  require_device_ptr(op, "k_NJK", k_NJK);
  require_device_ptr(op, "v_NJK", v_NJK);
  require_device_ptr(op, "cu_dev", cu_dev);
  require_device_ptr(op, "o_NHK", o_NHK);
  require_device_ptr(op, "lse_NH", lse_NH);
  if (dt == DType::f32) {
    SimtArgs p{};
    p.q = static_cast<const float*>(q_NHK);
    p.k = static_cast<const float*>(k_NJK);
    p.v = static_cast<const float*>(v_NJK);
    p.out_o = static_cast<float*>(o_NHK);
    p.out_lse = lse_NH;
    p.cu = cu_dev;
    p.nseg = nseg;
    p.N = N;
    p.H = int(H), p.J = int(J), p.K = int(K);
    p.scale = scale;
    p.causal = causal;
    attention_fwd_simt<<<simt_blocks(N * H), kSimtThreads>>>(p);
    DT_CUDA_CHECK(cudaGetLastError());
    return;
  }
  attn::FwdArgs p{};
  p.q = static_cast<const bf16*>(q_NHK);
  p.k = static_cast<const bf16*>(k_NJK);
  p.v = static_cast<const bf16*>(v_NJK);
  p.o = static_cast<bf16*>(o_NHK);
  p.lse = lse_NH;
  p.cu = cu_dev;
  p.H = int(H), p.J = int(J), p.K = int(K);
  p.scale = scale;
  p.vec =
      K % 8 == 0 && aligned16(q_NHK) && aligned16(k_NJK) && aligned16(v_NJK) && aligned16(o_NHK);
  p.causal = causal;
  attn::launch_fwd_tc(padded_dim(K), attn::plan_tiles(cu_host, nseg, attn::kFwdRows, false, causal),
                      p);
}

void attention_bwd(DType dt, const void* q_NHK, const void* k_NJK, const void* v_NJK,
                   const void* o_NHK, const float* lse_NH, const void* do_NHK,
                   const int32_t* cu_dev, const int32_t* cu_host, int nseg, int64_t N, int64_t H,
                   int64_t J, int64_t K, float scale, void* dq_NHK, void* dk_NJK, void* dv_NJK,
                   bool causal) {
  const char* op = "cuda::attention_bwd";
  check_args(op, cu_host, nseg, N, H, J, K);
  if (N == 0) return;
  const void* ptrs[] = {q_NHK, k_NJK, v_NJK, o_NHK, lse_NH, do_NHK, cu_dev, dq_NHK, dk_NJK, dv_NJK};
  const char* names[] = {"q_NHK",  "k_NJK",  "v_NJK",  "o_NHK",  "lse_NH",
                         "do_NHK", "cu_dev", "dq_NHK", "dk_NJK", "dv_NJK"};
  for (int i = 0; i < 10; ++i) check_device_ptr(op, names[i], ptrs[i]);

  StreamBuffer D(size_t(N * H) * sizeof(float), "D = rowsum(dO * O)");
  DT_DISPATCH_DTYPE(dt, T, {
    attention_rowdot<T><<<simt_blocks(N * H), kSimtThreads>>>(
        static_cast<const T*>(o_NHK), static_cast<const T*>(do_NHK), N * H, int(K), D.f32());
    DT_CUDA_CHECK(cudaGetLastError());
  });

  if (dt == DType::f32) {
    SimtArgs p{};
    p.q = static_cast<const float*>(q_NHK);
    p.k = static_cast<const float*>(k_NJK);
    p.v = static_cast<const float*>(v_NJK);
    p.dout = static_cast<const float*>(do_NHK);
    p.lse = lse_NH;
    p.D = D.f32();
    p.dq = static_cast<float*>(dq_NHK);
    p.dk = static_cast<float*>(dk_NJK);
    p.dv = static_cast<float*>(dv_NJK);
    p.cu = cu_dev;
    p.nseg = nseg;
    p.N = N;
    p.H = int(H), p.J = int(J), p.K = int(K);
    p.scale = scale;
    p.causal = causal;
    attention_dkdv_simt<<<simt_blocks(N * J), kSimtThreads>>>(p);
    DT_CUDA_CHECK(cudaGetLastError());
    attention_dq_simt<<<simt_blocks(N * H), kSimtThreads>>>(p);
    DT_CUDA_CHECK(cudaGetLastError());
    return;
  }

  const int Kp = padded_dim(K);
  const int splits = dkdv_splits(cu_host, nseg, H, J, causal);
  StreamBuffer part(splits > 1 ? 2 * size_t(splits) * size_t(N * J) * Kp * sizeof(float) : 0,
                    "partial dK/dV");
  attn::BwdArgs p{};
  p.q = static_cast<const bf16*>(q_NHK);
  p.k = static_cast<const bf16*>(k_NJK);
  p.v = static_cast<const bf16*>(v_NJK);
  p.dout = static_cast<const bf16*>(do_NHK);
  p.lse = lse_NH;
  p.D = D.f32();
  p.dq = static_cast<bf16*>(dq_NHK);
  p.dk = static_cast<bf16*>(dk_NJK);
  p.dv = static_cast<bf16*>(dv_NJK);
  p.dk_part = part.f32();
  p.dv_part = splits > 1 ? part.f32() + size_t(splits) * size_t(N * J) * Kp : nullptr;
  p.cu = cu_dev;
  p.N = N;
  p.H = int(H), p.J = int(J), p.K = int(K), p.splits = splits;
  p.scale = scale;
  p.vec = K % 8 == 0 && aligned16(q_NHK) && aligned16(k_NJK) && aligned16(v_NJK) &&
          aligned16(do_NHK) && aligned16(dq_NHK) && aligned16(dk_NJK) && aligned16(dv_NJK);
  p.causal = causal;
  attn::launch_dkdv_tc(Kp, attn::plan_tiles(cu_host, nseg, attn::kDkvRows, true, causal), p);
  if (splits > 1) {
    const int64_t total = N * J * K;
    const unsigned blocks = unsigned(std::min<int64_t>((total + 255) / 256, 132 * 16));
    attention_sum_splits<<<blocks, 256>>>(p.dk_part, p.dv_part, splits, N, int(J), int(K), Kp, p.dk,
                                          p.dv);
    DT_CUDA_CHECK(cudaGetLastError());
  }
  attn::launch_dq_tc(Kp, attn::plan_tiles(cu_host, nseg, attn::kDqRows, false, causal), p);
}

}  // namespace deltatron::cuda
