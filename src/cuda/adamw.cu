// CUDA AdamW step and deterministic sum of squares over tables of tensors (see adamw.h).
//
// Both kernels take their tensor table as a kernel parameter (a struct of at most kMaxAdamW /
// kMaxNorm tensors, under the classic 4 KiB parameter limit) with a prefix of per-tensor block
// counts: block b belongs to the tensor k with start[k] <= b < start[k+1] (binary search) and
// owns a fixed chunk of that tensor. Larger tables are split into several launches.
//
// AdamW: a block of 256 threads owns kAdamChunk = 2048 consecutive elements; thread j updates
// elements 8j .. 8j+7 with 16-byte loads and stores where the tensor's arrays are 16-byte aligned
// (else elements j, j+256, ..., coalesced), loading all 8 before computing so that each thread
// keeps its loads in flight. The element arithmetic uses __fmul_rn/__fadd_rn/__fdiv_rn/__fsqrt_rn
// so nvcc cannot contract a*b+c into an FMA: each operation rounds as the CPU's does. The storage
// of the state is a template parameter of the kernel (one form per launch): the master as fp32
// (with an f32, bf16 or no compute copy) or the lean bf16 weight + u16 remainder, and fp32 or bf16
// moments. The bit-level conversions (join/split of the pair, bf16 copies with ties away from zero,
// stochastic rounding and its counter-based bits) are core/bf16.h's, the functions the CPU
// reference calls. With the lean pair and bf16 moments a step moves 14 bytes per element (2 + 2 + 2
// + 2 read and written, 4 gradient) instead of 30 with an fp32 master, fp32 moments and a bf16
// copy.
//
// Sum of squares: a block of 256 threads owns kNormChunk = 65536 consecutive elements of one
// tensor; thread j sums x^2 in fp64 over elements j, j+256, ... in order (loading 16 ahead; the
// zeros padding a short last batch add exactly nothing), then a shuffle tree
// (fixed pairing) and a fixed combine of the 8 warp sums give the block's partial, written to
// partial[b]. A second kernel (one block of 1024 threads) sums the partials the same way. No
// atomics: the result depends only on the element counts and values.
#include <algorithm>
#include <mutex>
#include <vector>

#include "core/bf16.h"
#include "core/error.h"
#include "cuda/adamw.h"
#include "cuda/kernel_util.cuh"
#include "cuda/memory.h"

namespace deltatron::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kAdamPerThread = 8;
constexpr int64_t kAdamChunk = int64_t(kThreads) * kAdamPerThread;  // 2048
constexpr int64_t kNormChunk = 65536;
constexpr int kNormBatch = 16;
// 48 x (6 pointers + n + index + decay + vec + start) ~ 3.6 KiB of parameters (under 4 KiB)
constexpr int kMaxAdamW = 48;
constexpr int kMaxNorm = 128;  // 128 x (pointer + n + start) ~ 2.6 KiB
constexpr int kFinalThreads = 1024;

// nullptr counts as aligned (an absent array is not accessed).
bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

struct AdamWScalars {
  float beta1, beta2, one_minus_beta1, one_minus_beta2, step_size, bc2_sqrt, eps, grad_scale;
  uint64_t random_key;  // core::random_key(seed, step)
  const double* gate;   // nullptr, or {grad_scale, skip} in device memory (core::AdamWArgs)
};

struct AdamWTable {
  int count;
  int start[kMaxAdamW + 1];  // block prefix
  float* master[kMaxAdamW];
  void* m[kMaxAdamW];
  void* v[kMaxAdamW];
  const float* grad[kMaxAdamW];
  void* copy[kMaxAdamW];
  uint16_t* rem[kMaxAdamW];
  int64_t n[kMaxAdamW];
  int64_t index[kMaxAdamW];
  float decay[kMaxAdamW];
  bool vec[kMaxAdamW];  // every pointer 16-byte aligned: 16-byte accesses (adamw_kernel)
};

// The master's storage in one launch: fp32 with an f32 / bf16 / no compute copy, or the pair.
enum class MasterForm { f32_copy, bf16_copy, pair };

struct NormTable {
  int count;
  int start[kMaxNorm + 1];
  const float* x[kMaxNorm];
  int64_t n[kMaxNorm];
};

// k with start[k] <= b < start[k+1], start[0] = 0, k in [0, count).
__device__ __forceinline__ int table_index(const int* start, int count, int b) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (start[mid] <= b)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// One element's update from its loaded state: the new master pi and moments mi, vi.
struct AdamWElem {
  float p, m, v;
};
__device__ __forceinline__ AdamWElem adamw_update(const AdamWScalars& s, float grad_scale,
                                                  float decay, float p, float m, float v,
                                                  float gr) {
  const float g = __fmul_rn(gr, grad_scale);
  float pi = __fmul_rn(p, decay);
  const float mi = __fadd_rn(__fmul_rn(s.beta1, m), __fmul_rn(s.one_minus_beta1, g));
  const float vi = __fadd_rn(__fmul_rn(s.beta2, v), __fmul_rn(s.one_minus_beta2, __fmul_rn(g, g)));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bc2_sqrt), s.eps);
  pi = __fsub_rn(pi, __fmul_rn(s.step_size, __fdiv_rn(mi, denom)));
  return {pi, mi, vi};
}

// Element i's new state in its 16-bit storages (the pair, a bf16 copy, bf16 moments).
template <MasterForm kForm, bool kBf16Moments>
__device__ __forceinline__ void adamw_round(const AdamWTable& tab, int k, const AdamWScalars& s,
                                            int64_t i, const AdamWElem& e, uint16_t& w_out,
                                            uint16_t& r_out, uint16_t& m_out, uint16_t& v_out) {
  if constexpr (kForm == MasterForm::pair) {
    core::master_split(e.p, w_out, r_out);
  } else if constexpr (kForm == MasterForm::bf16_copy) {
    w_out = core::bf16_round_ties_away(e.p);
  }
  if constexpr (kBf16Moments) {
    const uint64_t bits = core::random_bits(s.random_key, uint64_t(tab.index[k] + i));
    m_out = core::bf16_round_stochastic(e.m, uint32_t(bits));
    v_out = core::bf16_round_stochastic(e.v, uint32_t(bits >> 16));
  }
}

// A block owns kAdamChunk consecutive elements of one tensor. Where every pointer of the tensor
// is 16-byte aligned (tab.vec[k]) thread j owns the 8 consecutive elements 8j .. 8j+7 of the
// chunk and moves them with 16-byte loads and stores (the bf16 / u16 arrays were 2-byte accesses
// otherwise); elsewhere, and in a tensor's last partial group, thread j takes elements j, j+256,
// ... one at a time. The arithmetic of an element is the same in both (adamw_update).
template <MasterForm kForm, bool kBf16Moments>
__global__ void __launch_bounds__(kThreads)
    adamw_kernel(const __grid_constant__ AdamWTable tab, const AdamWScalars s) {
  // The device-side gate: a skipped step writes nothing (every block returns here).
  float grad_scale = s.grad_scale;
  if (s.gate != nullptr) {
    if (s.gate[1] != 0.0) return;
    grad_scale = __double2float_rn(s.gate[0]);  // exact: a float value
  }
  const int b = blockIdx.x;
  const int k = table_index(tab.start, tab.count, b);
  const int64_t n = tab.n[k];
  const int64_t chunk0 = int64_t(b - tab.start[k]) * kAdamChunk;
  float* __restrict__ p = tab.master[k];
  const float* __restrict__ grad = tab.grad[k];
  void* const copy = tab.copy[k];
  uint16_t* __restrict__ rem = tab.rem[k];
  const float decay = tab.decay[k];
  constexpr int V = kAdamPerThread;  // 8 elements: 16 bytes of bf16, 32 of f32
  const int64_t i0 = chunk0 + int64_t(threadIdx.x) * V;
  if (tab.vec[k] && i0 + V <= n) {
    float pr[V], mr[V], vr[V], gr[V];
    {
      const float4 g0 = reinterpret_cast<const float4*>(grad + i0)[0];
      const float4 g1 = reinterpret_cast<const float4*>(grad + i0)[1];
      gr[0] = g0.x, gr[1] = g0.y, gr[2] = g0.z, gr[3] = g0.w;
      gr[4] = g1.x, gr[5] = g1.y, gr[6] = g1.z, gr[7] = g1.w;
    }
    auto load_u16 = [](const void* base, int64_t i, uint16_t(&out)[V]) {
      const uint4 q = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(base) + i);
      const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        out[2 * j] = uint16_t(w[j] & 0xFFFFu);
        out[2 * j + 1] = uint16_t(w[j] >> 16);
      }
    };
    auto load_f32 = [](const void* base, int64_t i, float(&out)[V]) {
      const float4 a = reinterpret_cast<const float4*>(static_cast<const float*>(base) + i)[0];
      const float4 c = reinterpret_cast<const float4*>(static_cast<const float*>(base) + i)[1];
      out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
      out[4] = c.x, out[5] = c.y, out[6] = c.z, out[7] = c.w;
    };
    auto store_u16 = [](void* base, int64_t i, const uint16_t(&in)[V]) {
      uint4 q;
      q.x = uint32_t(in[0]) | (uint32_t(in[1]) << 16);
      q.y = uint32_t(in[2]) | (uint32_t(in[3]) << 16);
      q.z = uint32_t(in[4]) | (uint32_t(in[5]) << 16);
      q.w = uint32_t(in[6]) | (uint32_t(in[7]) << 16);
      *reinterpret_cast<uint4*>(static_cast<uint16_t*>(base) + i) = q;
    };
    auto store_f32 = [](void* base, int64_t i, const float(&in)[V]) {
      float4* o = reinterpret_cast<float4*>(static_cast<float*>(base) + i);
      o[0] = make_float4(in[0], in[1], in[2], in[3]);
      o[1] = make_float4(in[4], in[5], in[6], in[7]);
    };
    if constexpr (kForm == MasterForm::pair) {
      uint16_t w[V], r[V];
      load_u16(copy, i0, w);
      load_u16(rem, i0, r);
#pragma unroll
      for (int j = 0; j < V; ++j) pr[j] = core::master_join(w[j], r[j]);
    } else {
      load_f32(p, i0, pr);
    }
    if constexpr (kBf16Moments) {
      uint16_t mb[V], vb[V];
      load_u16(tab.m[k], i0, mb);
      load_u16(tab.v[k], i0, vb);
#pragma unroll
      for (int j = 0; j < V; ++j)
        mr[j] = core::bf16_to_f32(mb[j]), vr[j] = core::bf16_to_f32(vb[j]);
    } else {
      load_f32(tab.m[k], i0, mr);
      load_f32(tab.v[k], i0, vr);
    }
    float po[V], mo[V], vo[V];
    uint16_t wo[V], ro[V], mbo[V], vbo[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const AdamWElem e = adamw_update(s, grad_scale, decay, pr[j], mr[j], vr[j], gr[j]);
      po[j] = e.p, mo[j] = e.m, vo[j] = e.v;
      adamw_round<kForm, kBf16Moments>(tab, k, s, i0 + j, e, wo[j], ro[j], mbo[j], vbo[j]);
    }
    if constexpr (kForm == MasterForm::pair) {
      store_u16(copy, i0, wo);
      store_u16(rem, i0, ro);
      if (p) store_f32(p, i0, po);
    } else {
      store_f32(p, i0, po);
      if (copy) {
        if constexpr (kForm == MasterForm::bf16_copy)
          store_u16(copy, i0, wo);
        else
          store_f32(copy, i0, po);
      }
    }
    if constexpr (kBf16Moments) {
      store_u16(tab.m[k], i0, mbo);
      store_u16(tab.v[k], i0, vbo);
    } else {
      store_f32(tab.m[k], i0, mo);
      store_f32(tab.v[k], i0, vo);
    }
    return;
  }
  // Element by element: unaligned tensors (thread j: elements j, j+256, ... of the chunk), and
  // an aligned tensor's last partial group of 8 (its thread alone, elements i0 .. n-1).
  int64_t base = chunk0 + threadIdx.x, stride = kThreads;
  if (tab.vec[k]) {
    if (i0 >= n) return;
    base = i0;
    stride = 1;
  }
  const int64_t stop = n < chunk0 + kAdamChunk ? n : chunk0 + kAdamChunk;
  float pr[V], mr[V], vr[V], gr[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const int64_t i = base + int64_t(j) * stride;
    if (i < stop) {
      if constexpr (kForm == MasterForm::pair)
        pr[j] = core::master_join(static_cast<const uint16_t*>(copy)[i], rem[i]);
      else
        pr[j] = p[i];
      if constexpr (kBf16Moments) {
        mr[j] = core::bf16_to_f32(static_cast<const uint16_t*>(tab.m[k])[i]);
        vr[j] = core::bf16_to_f32(static_cast<const uint16_t*>(tab.v[k])[i]);
      } else {
        mr[j] = static_cast<const float*>(tab.m[k])[i];
        vr[j] = static_cast<const float*>(tab.v[k])[i];
      }
      gr[j] = grad[i];
    }
  }
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const int64_t i = base + int64_t(j) * stride;
    if (i >= stop) break;
    const AdamWElem e = adamw_update(s, grad_scale, decay, pr[j], mr[j], vr[j], gr[j]);
    uint16_t w = 0, r = 0, mb = 0, vb = 0;
    adamw_round<kForm, kBf16Moments>(tab, k, s, i, e, w, r, mb, vb);
    if constexpr (kForm == MasterForm::pair) {
      static_cast<uint16_t*>(copy)[i] = w;
      rem[i] = r;
      if (p) p[i] = e.p;
    } else {
      p[i] = e.p;
      if (copy) {
        if constexpr (kForm == MasterForm::bf16_copy)
          static_cast<uint16_t*>(copy)[i] = w;
        else
          static_cast<float*>(copy)[i] = e.p;
      }
    }
    if constexpr (kBf16Moments) {
      static_cast<uint16_t*>(tab.m[k])[i] = mb;
      static_cast<uint16_t*>(tab.v[k])[i] = vb;
    } else {
      static_cast<float*>(tab.m[k])[i] = e.m;
      static_cast<float*>(tab.v[k])[i] = e.v;
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    compute_copy_kernel(const float* __restrict__ master, uint16_t* __restrict__ copy, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * kThreads)
    copy[i] = core::bf16_round_ties_away(master[i]);
}

// Fixed-order sum of one double per thread over the block (blockDim.x = kWarps * 32); the result
// is valid in thread 0.
template <int kWarps>
__device__ __forceinline__ double block_sum(double x) {
  __shared__ double warp_sum[kWarps];
#pragma unroll
  for (int off = 16; off > 0; off /= 2) x += __shfl_down_sync(0xffffffffu, x, off);
  if (threadIdx.x % 32 == 0) warp_sum[threadIdx.x / 32] = x;
  __syncthreads();
  double s = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < kWarps; ++w) s += warp_sum[w];
  return s;
}

__global__ void __launch_bounds__(kThreads)
    sum_squares_kernel(const __grid_constant__ NormTable tab, double* __restrict__ partial) {
  const int b = blockIdx.x;
  const int k = table_index(tab.start, tab.count, b);
  const int64_t begin = int64_t(b - tab.start[k]) * kNormChunk;
  const int64_t end = begin + kNormChunk < tab.n[k] ? begin + kNormChunk : tab.n[k];
  const float* __restrict__ x = tab.x[k];
  // kNormBatch loads issued before their squares are added (in element order), so each thread
  // keeps several loads in flight while the fp64 adds form one chain.
  double acc = 0;
  for (int64_t i0 = begin + threadIdx.x; i0 < end; i0 += int64_t(kNormBatch) * kThreads) {
    float v[kNormBatch];
#pragma unroll
    for (int j = 0; j < kNormBatch; ++j) {
      const int64_t i = i0 + int64_t(j) * kThreads;
      v[j] = i < end ? x[i] : 0.f;
    }
#pragma unroll
    for (int j = 0; j < kNormBatch; ++j) acc += double(v[j]) * double(v[j]);
  }
  const double s = block_sum<kThreads / 32>(acc);
  if (threadIdx.x == 0) partial[b] = s;
}

__global__ void __launch_bounds__(kFinalThreads)
    sum_partials_kernel(const double* __restrict__ partial, int64_t count,
                        double* __restrict__ out) {
  double acc = 0;
  for (int64_t i = threadIdx.x; i < count; i += kFinalThreads) acc += partial[i];
  const double s = block_sum<kFinalThreads / 32>(acc);
  if (threadIdx.x == 0) *out = s;
}

// Pinned host slot for the sum of squares (the copy back is then a true DMA, not a staged one).
double* pinned_result() {
  static double* p = [] {
    void* q = nullptr;
    DT_CUDA_CHECK(cudaMallocHost(&q, sizeof(double)));
    return static_cast<double*>(q);
  }();
  return p;
}

AdamWScalars host_scalars(const AdamWStepArgs& a) {
  DT_CHECK(a.step >= 1, "cuda::adamw_step: step must be >= 1 (1-based), got ", a.step);
  // As train::AdamW::step: doubles first, each scalar rounded to float once.
  const double t = static_cast<double>(a.step);
  const double bias_correction1 = 1.0 - std::pow(a.beta1, t);
  const double bias_correction2 = 1.0 - std::pow(a.beta2, t);
  AdamWScalars s;
  s.beta1 = static_cast<float>(a.beta1);
  s.beta2 = static_cast<float>(a.beta2);
  s.one_minus_beta1 = static_cast<float>(1.0 - a.beta1);
  s.one_minus_beta2 = static_cast<float>(1.0 - a.beta2);
  s.step_size = static_cast<float>(a.lr / bias_correction1);
  s.bc2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  s.eps = static_cast<float>(a.eps);
  s.grad_scale = a.grad_scale;
  s.random_key = core::random_key(a.seed, uint64_t(a.step));
  s.gate = a.gate;
  return s;
}

template <MasterForm kForm>
void launch_form(const AdamWTable& tab, const AdamWScalars& s, bool bf16_moments) {
  const unsigned blocks = unsigned(tab.start[tab.count]);
  if (bf16_moments)
    adamw_kernel<kForm, true><<<blocks, kThreads>>>(tab, s);
  else
    adamw_kernel<kForm, false><<<blocks, kThreads>>>(tab, s);
}

void launch_adamw(const AdamWTable& tab, const AdamWScalars& s, MasterForm form,
                  bool bf16_moments) {
  if (tab.count == 0) return;
  switch (form) {
    case MasterForm::f32_copy:
      launch_form<MasterForm::f32_copy>(tab, s, bf16_moments);
      break;
    case MasterForm::bf16_copy:
      launch_form<MasterForm::bf16_copy>(tab, s, bf16_moments);
      break;
    case MasterForm::pair:
      launch_form<MasterForm::pair>(tab, s, bf16_moments);
      break;
  }
  DT_CUDA_LAUNCH_CHECK("adamw_kernel");
}

constexpr int64_t kMaxBlocksPerLaunch = (int64_t(1) << 31) - 1;

}  // namespace

void adamw_step_multi(std::span<const AdamWTensor> tensors, const AdamWStepArgs& args, DType dt,
                      DType moment_dt) {
  const AdamWScalars s = host_scalars(args);
  if (args.gate) check_device_ptr("cuda::adamw_step", "gate", args.gate);
  DT_CHECK(dt == DType::f32 || dt == DType::bf16, "cuda::adamw_step: compute copies in ",
           dtype_name(dt), " (f32 or bf16)");
  DT_CHECK(moment_dt == DType::f32 || moment_dt == DType::bf16, "cuda::adamw_step: moments in ",
           dtype_name(moment_dt), " (f32 or bf16)");
  const bool pair = !tensors.empty() && tensors[0].remainder != nullptr;
  DT_CHECK(!pair || dt == DType::bf16,
           "cuda::adamw_step: the lean master (remainder) needs a bf16 compute copy");
  const MasterForm form = pair                ? MasterForm::pair
                          : dt == DType::bf16 ? MasterForm::bf16_copy
                                              : MasterForm::f32_copy;
  const bool bf16_moments = moment_dt == DType::bf16;
  AdamWTable tab{};
  for (size_t k = 0; k < tensors.size(); ++k) {
    const AdamWTensor& t = tensors[k];
    DT_CHECK(t.n >= 0, "cuda::adamw_step: tensor ", k, " has n=", t.n);
    DT_CHECK(
        (t.remainder != nullptr) == pair, "cuda::adamw_step: tensor ", k,
        pair ? " has no remainder but tensor 0 has one" : " has a remainder but tensor 0 has none");
    if (t.n == 0) continue;
    DT_CHECK((pair ? t.compute_copy != nullptr : t.master != nullptr) && t.m && t.v && t.grad,
             "cuda::adamw_step: tensor ", k, " lacks a master, moment or gradient pointer");
    const int64_t blocks = (t.n + kAdamChunk - 1) / kAdamChunk;
    DT_CHECK(blocks <= kMaxBlocksPerLaunch, "cuda::adamw_step: tensor ", k, " too large (n=", t.n,
             ")");
    if (tab.count == kMaxAdamW || tab.start[tab.count] + blocks > kMaxBlocksPerLaunch) {
      launch_adamw(tab, s, form, bf16_moments);
      tab = AdamWTable{};
    }
    const int c = tab.count++;
    tab.master[c] = t.master;
    tab.m[c] = t.m;
    tab.v[c] = t.v;
    tab.grad[c] = t.grad;
    tab.copy[c] = t.compute_copy;
    tab.rem[c] = t.remainder;
    tab.n[c] = t.n;
    tab.index[c] = t.index;
    tab.decay[c] = static_cast<float>(1.0 - args.lr * t.weight_decay);
    tab.vec[c] = aligned16(t.master) && aligned16(t.m) && aligned16(t.v) && aligned16(t.grad) &&
                 aligned16(t.compute_copy) && aligned16(t.remainder);
    tab.start[c + 1] = tab.start[c] + int(blocks);
  }
  launch_adamw(tab, s, form, bf16_moments);
}

void adamw_compute_copy(const float* master, DType dt, void* copy, int64_t n) {
  DT_CHECK(n >= 0, "cuda::adamw_compute_copy: n=", n);
  if (n == 0) return;
  if (dt == DType::f32) {
    DT_CUDA_CHECK(cudaMemcpyAsync(copy, master, size_t(n) * 4, cudaMemcpyDeviceToDevice, 0));
    return;
  }
  DT_CHECK(dt == DType::bf16, "cuda::adamw_compute_copy: copy in ", dtype_name(dt),
           " (f32 or bf16)");
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, 65536);
  compute_copy_kernel<<<unsigned(blocks), kThreads>>>(master, static_cast<uint16_t*>(copy), n);
  DT_CUDA_LAUNCH_CHECK("compute_copy_kernel");
}

void adamw_step(float* master, float* m, float* v, const float* grad, int64_t n,
                const AdamWStepArgs& args, double weight_decay, DType dt, void* compute_copy) {
  const AdamWTensor t{master, m, v, grad, compute_copy, n, weight_decay};
  adamw_step_multi(std::span<const AdamWTensor>(&t, 1), args, dt);
}

void sum_squares_multi_to(std::span<const float* const> xs, std::span<const int64_t> ns,
                          double* out) {
  DT_CHECK(xs.size() == ns.size(), "cuda::sum_squares: ", xs.size(), " pointers but ", ns.size(),
           " sizes");
  check_device_ptr("cuda::sum_squares_to", "out", out);
  // Block counts of every tensor first: the partial buffer holds one double per block.
  int64_t total_blocks = 0;
  for (size_t k = 0; k < ns.size(); ++k) {
    DT_CHECK(ns[k] >= 0, "cuda::sum_squares: tensor ", k, " has n=", ns[k]);
    DT_CHECK(ns[k] == 0 || xs[k] != nullptr, "cuda::sum_squares: tensor ", k, " is null");
    total_blocks += (ns[k] + kNormChunk - 1) / kNormChunk;
  }
  if (total_blocks == 0) {  // the sum of nothing: +0.0, all zero bytes
    DT_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(double), cudaStreamLegacy));
    return;
  }
  // Reused without waiting: every user queues on the legacy default stream (ScratchBuffer); the
  // lock keeps two threads' launches from interleaving over it.
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  static ScratchBuffer* scratch = new ScratchBuffer("sum_squares partials");  // leaked
  double* partial =
      static_cast<double*>(scratch->get(size_t(total_blocks) * sizeof(double)));  // [blocks]
  int64_t offset = 0;  // first partial of the current launch
  NormTable tab{};
  auto launch = [&] {
    if (tab.count == 0) return;
    sum_squares_kernel<<<unsigned(tab.start[tab.count]), kThreads>>>(tab, partial + offset);
    DT_CUDA_LAUNCH_CHECK("sum_squares_kernel");
    offset += tab.start[tab.count];
    tab = NormTable{};
  };
  for (size_t k = 0; k < ns.size(); ++k) {
    if (ns[k] == 0) continue;
    const int64_t blocks = (ns[k] + kNormChunk - 1) / kNormChunk;
    if (tab.count == kMaxNorm || tab.start[tab.count] + blocks > kMaxBlocksPerLaunch) launch();
    const int c = tab.count++;
    tab.x[c] = xs[k];
    tab.n[c] = ns[k];
    tab.start[c + 1] = tab.start[c] + int(blocks);
  }
  launch();
  sum_partials_kernel<<<1, kFinalThreads>>>(partial, total_blocks, out);
  DT_CUDA_LAUNCH_CHECK("sum_partials_kernel");
}

double sum_squares_multi(std::span<const float* const> xs, std::span<const int64_t> ns) {
  bool any = false;
  for (int64_t n : ns) any = any || n > 0;
  if (!any && xs.size() == ns.size()) return 0.0;  // nothing to read back
  static std::mutex mu;  // guards the device and pinned result slots until they have been read
  std::lock_guard<std::mutex> lock(mu);
  static DeviceBuffer* slot = new DeviceBuffer(sizeof(double), "sum_squares result");  // leaked
  double* dev = static_cast<double*>(slot->get());
  sum_squares_multi_to(xs, ns, dev);
  double* result = pinned_result();
  note_device_to_host_copy();
  DT_CUDA_CHECK(cudaMemcpyAsync(result, dev, sizeof(double), cudaMemcpyDeviceToHost, 0));
  DT_CUDA_CHECK(cudaStreamSynchronize(0));
  return *result;
}

void sum_squares_to(const float* x, int64_t n, double* out) {
  sum_squares_multi_to(std::span<const float* const>(&x, 1), std::span<const int64_t>(&n, 1), out);
}

double sum_squares(const float* x, int64_t n) {
  return sum_squares_multi(std::span<const float* const>(&x, 1), std::span<const int64_t>(&n, 1));
}

}  // namespace deltatron::cuda
