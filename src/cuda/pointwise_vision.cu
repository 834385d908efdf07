// CUDA kernels of the vision tower's small ops: GELU fwd/bwd, bias add and its deterministic
// column sum, the 2-D rotary embedding, and row gather/scatter by index (see pointwise.h).
//
// GELU, bias add: grid-stride elementwise loops, one element per thread per step, fp32 math
// (erff, tanhf, expf), results rounded once to the storage type. Every element is read before it
// is written by the same thread, so y may alias x (and dx may alias dy).
// Bias gradient: blocks of 128 threads own 128 consecutive columns (thread = column, coalesced
// row reads) and one part of consecutive rows, summed in row order into partial[part, column];
// col_sum_add adds the parts in a fixed order. The part count (<= 256) depends only on N, so the
// sums are bitwise reproducible; no atomics.
// 2-D RoPE: one block of 128 threads per patch n. The block first computes the K/2 angles' cos
// and sin in double (as the CPU reference, then rounded to fp32) into shared memory (2 x K/2
// floats, <= 1 KiB), syncs once, then rotates the (j, j + K/2) pairs of all H heads.
// Row moves: one block of 256 threads per moved row, threads striding over the D columns.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "cuda/kernel_util.cuh"
#include "cuda/pointwise.h"

namespace deltatron::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 16;         // grid-stride beyond this
constexpr float kSqrt2OverPi = 0.79788456080286535588f;  // sqrt(2 / pi)
constexpr float kInvSqrt2 = 0.70710678118654752440f;     // 1 / sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;   // 1 / sqrt(2 pi)
constexpr float kGeluC = 0.044715f;
constexpr int kColThreads = 128;      // columns per block of the bias-gradient pass
constexpr int64_t kMaxParts = 256;    // row parts of the bias-gradient pass
constexpr int64_t kMinPartRows = 64;  // rows per part before more parts are used
constexpr int kRopeThreads = 128;
constexpr int kRopeMaxQuarter = 64;  // K <= 256

unsigned blocks_for(int64_t n) {
  return unsigned(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
}

__device__ __forceinline__ int64_t thread_index() {
  return int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t thread_count() { return int64_t(gridDim.x) * blockDim.x; }

// ---- GELU ----------------------------------------------------------------------------------

// Cancellation-free forms (as the CPU reference): 1 + erf(v / sqrt 2) = erfc(-v / sqrt 2);
// 0.5 (1 + tanh u) = sigmoid(2u) and 1 - tanh^2 u = 4 sigmoid(2u) sigmoid(-2u).
__device__ __forceinline__ float gelu_f(float v, bool tanh_approx) {
  if (tanh_approx) return v / (1.f + expf(-2.f * kSqrt2OverPi * (v + kGeluC * v * v * v)));
  return 0.5f * v * erfcf(-v * kInvSqrt2);
}

__device__ __forceinline__ float gelu_grad_f(float v, bool tanh_approx) {
  if (tanh_approx) {
    const float u = kSqrt2OverPi * (v + kGeluC * v * v * v);
    const float s = 1.f / (1.f + expf(-2.f * u)), sn = 1.f / (1.f + expf(2.f * u));
    return s + 2.f * v * s * sn * kSqrt2OverPi * (1.f + 3.f * kGeluC * v * v);
  }
  return 0.5f * erfcf(-v * kInvSqrt2) + v * kInvSqrt2Pi * expf(-0.5f * v * v);
}

template <typename T>
__global__ void gelu_fwd_kernel(const T* x, int64_t n, T* y, bool tanh_approx) {
  for (int64_t i = thread_index(); i < n; i += thread_count())
    y[i] = from_f32<T>(gelu_f(to_f32(x[i]), tanh_approx));
}

template <typename T>
__global__ void gelu_bwd_kernel(const T* x, const T* dy, int64_t n, T* dx, bool tanh_approx) {
  for (int64_t i = thread_index(); i < n; i += thread_count())
    dx[i] = from_f32<T>(to_f32(dy[i]) * gelu_grad_f(to_f32(x[i]), tanh_approx));
}

// ---- bias ----------------------------------------------------------------------------------

template <typename TY, typename TB>
__global__ void bias_add_kernel(TY* y, const TB* b, int64_t N, int64_t O) {
  for (int64_t i = thread_index(); i < N * O; i += thread_count())
    y[i] = from_f32<TY>(to_f32(y[i]) + to_f32(b[i % O]));
}

template <typename T>
__global__ void __launch_bounds__(kColThreads)
    bias_bwd_kernel(const T* dy, int64_t N, int64_t O, int64_t rows_per_part, float* part) {
  const int64_t c = int64_t(blockIdx.x) * kColThreads + threadIdx.x, p = blockIdx.y;
  if (c >= O) return;
  const int64_t r0 = p * rows_per_part, r1 = r0 + rows_per_part < N ? r0 + rows_per_part : N;
  float s = 0.f;
  for (int64_t r = r0; r < r1; ++r) s += to_f32(dy[r * O + c]);
  part[p * O + c] = s;
}

float* bias_partials(int64_t n) {
  static ScratchBuffer* s = new ScratchBuffer("bias-gradient partials");  // leaked
  return static_cast<float*>(s->get(size_t(n) * sizeof(float)));
}

// ---- 2-D RoPE ------------------------------------------------------------------------------

struct InvFreq {
  double v[kRopeMaxQuarter];
};

template <typename T>
__global__ void __launch_bounds__(kRopeThreads)
    rope_vision_kernel(T* x, const int32_t* pos, int64_t N, int H, int K, const InvFreq inv,
                       float sign) {
  __shared__ float cs[2 * kRopeMaxQuarter], sn[2 * kRopeMaxQuarter];
  const int64_t n = blockIdx.x;
  const int half = K / 2, quarter = K / 4;
  for (int j = threadIdx.x; j < half; j += kRopeThreads) {
    const double p = j < quarter ? double(pos[n]) : double(pos[N + n]);
    double s, c;
    sincos(p * inv.v[j % quarter], &s, &c);
    cs[j] = float(c);
    sn[j] = sign * float(s);
  }
  __syncthreads();
  T* xr = x + n * H * K;
  for (int e = threadIdx.x; e < H * half; e += kRopeThreads) {
    const int j = e % half;
    T* xh = xr + (e / half) * K;
    const float a = to_f32(xh[j]), b = to_f32(xh[j + half]);
    xh[j] = from_f32<T>(a * cs[j] - b * sn[j]);
    xh[j + half] = from_f32<T>(b * cs[j] + a * sn[j]);
  }
}

// ---- row moves -----------------------------------------------------------------------------

template <typename T>
__global__ void rows_kernel(const T* src, const int32_t* idx, int64_t R, int64_t M, int64_t D,
                            T* dst, bool scatter) {
  for (int64_t m = blockIdx.x; m < M; m += gridDim.x) {
    const int32_t i = idx[m];
    const bool ok = i >= 0 && i < R;
    if (scatter) {
      if (!ok) continue;
      for (int64_t d = threadIdx.x; d < D; d += kThreads) dst[int64_t(i) * D + d] = src[m * D + d];
    } else {
      for (int64_t d = threadIdx.x; d < D; d += kThreads)
        dst[m * D + d] = ok ? src[int64_t(i) * D + d] : from_f32<T>(0.f);
    }
  }
}

void rows(const char* op, bool scatter, DType dt, const void* src, const int32_t* idx, int64_t R,
          int64_t M, int64_t D, void* dst) {
  DT_CHECK(R >= 0 && M >= 0 && D >= 0, op, ": negative size R=", R, " M=", M, " D=", D);
  if (M == 0 || D == 0) return;
  const unsigned blocks = unsigned(std::min<int64_t>(M, kMaxBlocks));
  DT_DISPATCH_DTYPE(dt, T,
                    rows_kernel<T><<<blocks, kThreads>>>(static_cast<const T*>(src), idx, R, M, D,
                                                         static_cast<T*>(dst), scatter));
  DT_CUDA_LAUNCH_CHECK("rows_kernel");
}

}  // namespace

void gelu_fwd(DType dt, const void* x, int64_t n, void* y, bool tanh_approx) {
  DT_CHECK(n >= 0, "cuda::gelu_fwd: negative size n=", n);
  if (n == 0) return;
  DT_DISPATCH_DTYPE(dt, T,
                    gelu_fwd_kernel<T><<<blocks_for(n), kThreads>>>(
                        static_cast<const T*>(x), n, static_cast<T*>(y), tanh_approx));
  DT_CUDA_LAUNCH_CHECK("gelu_fwd_kernel");
}

void gelu_bwd(DType dt, const void* x, const void* dy, int64_t n, void* dx, bool tanh_approx) {
  DT_CHECK(n >= 0, "cuda::gelu_bwd: negative size n=", n);
  if (n == 0) return;
  DT_DISPATCH_DTYPE(dt, T,
                    gelu_bwd_kernel<T><<<blocks_for(n), kThreads>>>(
                        static_cast<const T*>(x), static_cast<const T*>(dy), n, static_cast<T*>(dx),
                        tanh_approx));
  DT_CUDA_LAUNCH_CHECK("gelu_bwd_kernel");
}

void bias_add(DType yt, void* y_NO, DType bt, const void* b_O, int64_t N, int64_t O) {
  DT_CHECK(N >= 0 && O >= 0, "cuda::bias_add: negative size N=", N, " O=", O);
  if (N == 0 || O == 0) return;
  DT_DISPATCH_DTYPE(
      yt, TY,
      DT_DISPATCH_DTYPE(bt, TB,
                        bias_add_kernel<TY, TB><<<blocks_for(N * O), kThreads>>>(
                            static_cast<TY*>(y_NO), static_cast<const TB*>(b_O), N, O)));
  DT_CUDA_LAUNCH_CHECK("bias_add_kernel");
}

void bias_bwd(DType dt, const void* dy_NO, int64_t N, int64_t O, float* db_O) {
  DT_CHECK(N >= 0 && O >= 0, "cuda::bias_bwd: negative size N=", N, " O=", O);
  if (N == 0 || O == 0) return;
  const int64_t parts0 = std::clamp<int64_t>((N + kMinPartRows - 1) / kMinPartRows, 1, kMaxParts);
  const int64_t rows_per_part = (N + parts0 - 1) / parts0;
  const int64_t parts = (N + rows_per_part - 1) / rows_per_part;
  float* part = bias_partials(parts * O);
  const dim3 grid(unsigned((O + kColThreads - 1) / kColThreads), unsigned(parts));
  DT_DISPATCH_DTYPE(dt, T,
                    bias_bwd_kernel<T><<<grid, kColThreads>>>(static_cast<const T*>(dy_NO), N, O,
                                                              rows_per_part, part));
  DT_CUDA_LAUNCH_CHECK("bias_bwd_kernel");
  col_sum_add(part, parts, O, db_O);
}

void rope_vision(DType dt, void* x_NHK, const int32_t* pos_2N, int64_t N, int64_t H, int64_t K,
                 double theta, int sign) {
  DT_CHECK(N >= 0 && H >= 0 && K > 0 && K % 4 == 0 && K <= 4 * kRopeMaxQuarter,
           "cuda::rope_vision: bad sizes N=", N, " H=", H, " K=", K,
           " (K must be a multiple of 4, at most ", 4 * kRopeMaxQuarter, ")");
  DT_CHECK(N < (int64_t(1) << 31), "cuda::rope_vision: N=", N, " too large for the grid");
  if (N == 0 || H == 0) return;
  const int64_t half = K / 2, quarter = K / 4;
  InvFreq inv{};
  for (int64_t j = 0; j < quarter; ++j)  // as cpu::rope_vision
    inv.v[j] = 1.0 / std::pow(theta, double(2 * j) / double(half));
  DT_DISPATCH_DTYPE(dt, T,
                    rope_vision_kernel<T><<<unsigned(N), kRopeThreads>>>(
                        static_cast<T*>(x_NHK), pos_2N, N, int(H), int(K), inv, float(sign)));
  DT_CUDA_LAUNCH_CHECK("rope_vision_kernel");
}

void gather_rows(DType dt, const void* src, const int32_t* idx_M, int64_t R, int64_t M, int64_t D,
                 void* dst) {
  rows("cuda::gather_rows", false, dt, src, idx_M, R, M, D, dst);
}

void scatter_rows(DType dt, const void* src, const int32_t* idx_M, int64_t R, int64_t M, int64_t D,
                  void* dst) {
  rows("cuda::scatter_rows", true, dt, src, idx_M, R, M, D, dst);
}

}  // namespace deltatron::cuda
