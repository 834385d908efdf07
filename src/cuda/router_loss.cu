// CUDA kernels of the device-resident router statistics and losses (see router_loss.h; the CPU
// reference is ops/router_loss.cpp's CPU branch over cpu/moe.cpp and cpu/router_loss.cpp).
//
// Parallel mappings:
//   count: one thread per token; 64-bit integer atomics into a zeroed scratch histogram
//     (exact, order-independent), then one thread per accumulator entry adds its count in
//     double (exact below 2^53). A bad id sets a scratch flag; the add kernel then writes NaN.
//   aux fwd: one warp per token (8 per 256-thread block), lanes stride the experts, an
//     xor-butterfly warp sum (fixed order); z fwd: one thread per token. Both write one double
//     per token to scratch; one block of 1024 threads then sums them (thread i takes i, i + 1024,
//     ... in order, then a fixed shared-memory tree: 8 KiB) and adds the sum to loss_1.
//   aux bwd: one thread per element of dprobs.
// Sync points: none (the scratch buffer grows with a device wait, on the first calls only).
// Numerics: every loss quantity in double; the aux coefficient is evaluated as the CPU does
// (T <= 0 -> 0, else numer / (k * T2)), so the backward is bitwise equal to the CPU; the forward
// sums differ from the CPU's serial token order only in rounding (a few ulps).
#include <cstdint>
#include <mutex>

#include "core/error.h"
#include "cuda/kernel_util.cuh"
#include "cuda/router_loss.h"

namespace deltatron::cuda {

namespace {

constexpr int kWarpsPerBlock = 8;  // aux fwd: 8 warps = 8 tokens per 256-thread block
constexpr int kThreads = 256;      // element and token kernels
constexpr int kSumThreads = 1024;  // the one-block loss sum: 1024 doubles = 8 KiB shared
constexpr int32_t kNoBad = 0;      // scratch flag: no bad id seen
constexpr int32_t kSawBad = 1;     // a bad group or expert id in this call

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

ScratchBuffer& scratch() {
  static ScratchBuffer* s = new ScratchBuffer("router-loss scratch");  // leaked: no exit order
  return *s;
}

__device__ __forceinline__ int32_t group_of(const int32_t* group, int64_t t) {
  return group ? group[t] : 0;
}

__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// model::make_router_terms' coefficient, in its operation order (cpu::moe_aux_coefs).
__device__ __forceinline__ double aux_coef(double T, double numer, double k, double step_tokens) {
  if (T <= 0) return 0.0;  // NaN tokens (a poisoned count) fall through and give NaN
  const double T2 = step_tokens > 0 ? T * step_tokens : T * T;
  return numer / (k * T2);
}

// ---- route counts ------------------------------------------------------------------------------

__global__ void count_kernel(const int32_t* __restrict__ idx, const int32_t* __restrict__ group,
                             int64_t N, int K, int E, int G,
                             unsigned long long* __restrict__ counts,
                             unsigned long long* __restrict__ tokens, int32_t* bad) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= N) return;
  const int32_t g = group_of(group, t);
  bool ok = g >= -1 && g < G;
  for (int j = 0; j < K; ++j) {
    const int e = idx[t * K + j];
    ok = ok && e >= 0 && e < E;
  }
  if (!ok) *bad = kSawBad;  // every writer stores the same value
  if (!ok || g < 0) return;
  atomicAdd(&tokens[g], 1ull);
  for (int j = 0; j < K; ++j) atomicAdd(&counts[int64_t(g) * E + idx[t * K + j]], 1ull);
}

// acc[i] += double(cnt[i]) for the G*E counts then the G token totals; NaN after a bad id.
__global__ void count_add_kernel(const unsigned long long* __restrict__ cnt,
                                 const unsigned long long* __restrict__ tok, int64_t GE, int64_t G,
                                 const int32_t* bad, double* __restrict__ counts,
                                 double* __restrict__ tokens) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= GE + G) return;
  const bool poisoned = *bad != kNoBad;
  if (i < GE)
    counts[i] = poisoned ? NAN : counts[i] + double(cnt[i]);
  else
    tokens[i - GE] = poisoned ? NAN : tokens[i - GE] + double(tok[i - GE]);
}

// ---- losses ------------------------------------------------------------------------------------

// contrib[t] = c_g sum_e F_ge p_te for g = group[t] >= 0; 0 for padding; NaN for a bad id.
__global__ void aux_token_kernel(const float* __restrict__ probs, const int32_t* __restrict__ group,
                                 int64_t N, int E, int G, const double* __restrict__ F,
                                 const double* __restrict__ tokens, double numer, double k,
                                 double step_tokens, double* __restrict__ contrib) {
  const int lane = threadIdx.x & 31;
  const int64_t t = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (t >= N) return;
  const int32_t g = group_of(group, t);
  if (g < 0 || g >= G) {
    if (lane == 0) contrib[t] = g == -1 ? 0.0 : NAN;
    return;
  }
  double acc = 0.0;
  for (int e = lane; e < E; e += 32) acc += F[int64_t(g) * E + e] * double(probs[t * E + e]);
  acc = warp_sum(acc);
  if (lane == 0) contrib[t] = aux_coef(tokens[g], numer, k, step_tokens) * acc;
}

// contrib[t] = lse_t^2 for counted tokens, 0 for padding, NaN for a group id below -1.
__global__ void z_token_kernel(const float* __restrict__ lse, const int32_t* __restrict__ group,
                               int64_t N, double* __restrict__ contrib) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= N) return;
  const int32_t g = group_of(group, t);
  contrib[t] = g >= 0 ? double(lse[t]) * double(lse[t]) : g == -1 ? 0.0 : NAN;
}

// *loss += mul * sum_i x[i]: thread i sums i, i + 1024, ... in order, then a fixed tree. One
// block. (mul = 1 leaves the sum unchanged: the aux loss adds the plain sum, as the CPU.)
__global__ void add_sum_kernel(const double* __restrict__ x, int64_t n, double mul, double* loss) {
  __shared__ double part[kSumThreads];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kSumThreads) s += x[i];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int h = kSumThreads / 2; h > 0; h >>= 1) {
    if (int(threadIdx.x) < h) part[threadIdx.x] += part[threadIdx.x + h];
    __syncthreads();
  }
  if (threadIdx.x == 0) *loss += __dmul_rn(mul, part[0]);  // no FMA: the CPU rounds the product
}

__global__ void aux_bwd_kernel(const int32_t* __restrict__ group, int64_t N, int E, int G,
                               const double* __restrict__ F, const double* __restrict__ tokens,
                               double numer, double k, double step_tokens, double scale,
                               float* __restrict__ dprobs) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * E) return;
  const int64_t t = i / E;
  const int e = int(i - t * E);
  float v = 0.f;
  if (G > 0) {
    const int32_t g = group_of(group, t);
    if (g < -1 || g >= G) {
      v = NAN;
    } else if (g >= 0) {
      const double a = scale * aux_coef(tokens[g], numer, k, step_tokens);  // cpu: scale * c_G[g]
      v = float(a * F[int64_t(g) * E + e]);
    }
  }
  dprobs[i] = v;
}

// Runs launch(contrib) (one double per token into scratch), then adds mul * their sum to loss_1.
template <typename Launch>
void add_token_sum(int64_t N, double mul, double* loss_1, Launch launch) {
  ScratchBuffer& sc = scratch();
  std::lock_guard<std::mutex> lock(sc.mu);
  double* contrib = static_cast<double*>(sc.get(size_t(N) * sizeof(double)));
  launch(contrib);
  add_sum_kernel<<<1, kSumThreads>>>(contrib, N, mul, loss_1);
  DT_CUDA_LAUNCH_CHECK("add_sum_kernel");
}

}  // namespace

void moe_count_routes(const int32_t* topk_idx_NK, const int32_t* group_N, int64_t N, int64_t K,
                      int64_t E, int64_t G, double* counts_GE, double* tokens_G) {
  DT_CHECK(G > 0, "cuda::moe_count_routes: need at least one group, got ", G);
  DT_CHECK(N >= 0 && K > 0 && E > 0 && N * K <= INT32_MAX && G * E <= INT32_MAX,
           "cuda::moe_count_routes: bad shape N=", N, " K=", K, " E=", E, " G=", G);
  if (N == 0) return;
  ScratchBuffer& sc = scratch();
  std::lock_guard<std::mutex> lock(sc.mu);
  Layout lay;
  const size_t o_bad = lay.add(4), o_tok = lay.add(size_t(G) * 8),
               o_cnt = lay.add(size_t(G * E) * 8);
  void* base = sc.get(lay.bytes);
  DT_CUDA_CHECK(cudaMemsetAsync(base, 0, lay.bytes, 0));  // counts, totals, flag = kNoBad
  count_kernel<<<unsigned(ceil_div(N, kThreads)), kThreads>>>(
      topk_idx_NK, group_N, N, int(K), int(E), int(G), at<unsigned long long>(base, o_cnt),
      at<unsigned long long>(base, o_tok), at<int32_t>(base, o_bad));
  DT_CUDA_LAUNCH_CHECK("count_kernel");
  count_add_kernel<<<unsigned(ceil_div(G * E + G, kThreads)), kThreads>>>(
      at<unsigned long long>(base, o_cnt), at<unsigned long long>(base, o_tok), G * E, G,
      at<int32_t>(base, o_bad), counts_GE, tokens_G);
  DT_CUDA_LAUNCH_CHECK("count_add_kernel");
}

void moe_aux_loss_fwd(const float* probs_NE, const int32_t* group_N, int64_t N, int64_t E,
                      int64_t G, const double* counts_GE, const double* tokens_G, double numer,
                      double k, double step_tokens, double* loss_1) {
  DT_CHECK(G >= 0, "cuda::moe_aux_loss_fwd: negative number of groups ", G);
  DT_CHECK(N >= 0 && E > 0 && G <= INT32_MAX && E <= INT32_MAX && N <= INT32_MAX,
           "cuda::moe_aux_loss_fwd: bad shape N=", N, " E=", E, " G=", G);
  if (G == 0 || N == 0) return;
  add_token_sum(N, 1.0, loss_1, [&](double* contrib) {
    aux_token_kernel<<<unsigned(ceil_div(N, kWarpsPerBlock)), kWarpsPerBlock * 32>>>(
        probs_NE, group_N, N, int(E), int(G), counts_GE, tokens_G, numer, k, step_tokens, contrib);
    DT_CUDA_LAUNCH_CHECK("aux_token_kernel");
  });
}

void moe_aux_loss_bwd(const int32_t* group_N, int64_t N, int64_t E, int64_t G,
                      const double* counts_GE, const double* tokens_G, double numer, double k,
                      double step_tokens, double scale, float* dprobs_NE) {
  DT_CHECK(G >= 0, "cuda::moe_aux_loss_bwd: negative number of groups ", G);
  DT_CHECK(N >= 0 && E > 0 && G <= INT32_MAX && E <= INT32_MAX,
           "cuda::moe_aux_loss_bwd: bad shape N=", N, " E=", E, " G=", G);
  if (N == 0) return;
  aux_bwd_kernel<<<unsigned(ceil_div(N * E, kThreads)), kThreads>>>(
      group_N, N, int(E), int(G), counts_GE, tokens_G, numer, k, step_tokens, scale, dprobs_NE);
  DT_CUDA_LAUNCH_CHECK("aux_bwd_kernel");
}

void moe_z_loss_fwd(const float* lse_N, const int32_t* group_N, int64_t N, double z_coef,
                    double* loss_1) {
  DT_CHECK(N >= 0 && N <= INT32_MAX, "cuda::moe_z_loss_fwd: bad N=", N);
  if (N == 0) return;
  add_token_sum(N, z_coef, loss_1, [&](double* contrib) {
    z_token_kernel<<<unsigned(ceil_div(N, kThreads)), kThreads>>>(lse_N, group_N, N, contrib);
    DT_CUDA_LAUNCH_CHECK("z_token_kernel");
  });
}

}  // namespace deltatron::cuda
