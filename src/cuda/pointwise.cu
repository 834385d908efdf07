// CUDA elementwise kernels (SwiGLU, sigmoid gate, GDN gates, RoPE) and plain tensor helpers
// (contracts in pointwise.h).
//
// Elementwise mapping: a grid-stride loop in which thread i owns the V-element vector i (V = 8
// for bf16 storage, 4 for fp32: one 16-byte access per tensor, two for 8 fp32 values); the
// n % V tail goes to the first threads of the grid, one element each. The vector path needs
// every pointer aligned to the vector size; otherwise the same kernel runs with V = 1. Every
// thread loads all of its inputs before it stores, so outputs may alias inputs elementwise.
// GDN gates bwd: block (32, 8) = 32 heads x 8 row lanes over a contiguous row range of the block;
// head sums (in double, as the CPU reference: dA_log and ddt_bias are sums over every token
// that cancel) go through shared memory in row-lane order into partial[block, G], then the
// double col_sum_add.
// RoPE: a block owns a run of tokens; it first fills shared cos/sin tables [tokens, R/2] (one
// double-precision sincos per (token, frequency), shared by all heads), then rotates the pairs
// (j, j + R/2) of every head, V pairs per thread.
// col_sum_add: block (32, 16) = 32 columns x 16 row lanes; lane ty sums rows ty, ty + 16, ...,
// then one thread adds the 16 lane sums in order. No float atomics anywhere.
// Numerics: fp32; sigmoid = 1 / (1 + expf(-x)) (never NaN: inf -> 0), softplus = log1pf(expf).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <mutex>
#include <type_traits>

#include "core/bf16.h"
#include "core/error.h"
#include "cuda/kernel_util.cuh"
#include "cuda/pointwise.h"

namespace deltatron::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;  // grid-stride beyond this
constexpr int64_t kGateParts = 512;               // row parts of the GDN gate head sums
constexpr int kRopeMaxHalf = 256;                 // R <= 512
constexpr int kRopeTable = 4096;                  // cos/sin entries per block (2 x 16 KiB smem)

// ---- device helpers ------------------------------------------------------------------------

__device__ __forceinline__ float softplus_f(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

__device__ __forceinline__ int64_t thread_index() {
  return int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t thread_count() { return int64_t(gridDim.x) * blockDim.x; }

// ---- elementwise maps ----------------------------------------------------------------------

// An op maps NI fp32 inputs to NO fp32 outputs per element.
struct SwigluFwd {
  static constexpr int NI = 2, NO = 1;
  __device__ void operator()(const float* in, float* out) const {
    out[0] = in[0] * sigmoid_f(in[0]) * in[1];  // silu(gate) * up
  }
};
struct SwigluBwd {  // in: gate, up, dh;  out: dgate, dup
  static constexpr int NI = 3, NO = 2;
  __device__ void operator()(const float* in, float* out) const {
    const float x = in[0], s = sigmoid_f(x);
    out[0] = in[2] * in[1] * s * (1.0f + x * (1.0f - s));
    out[1] = in[2] * x * s;
  }
};
struct SwigluBwdH {  // in: gate, up, dh;  out: dgate, dup, h (SwigluBwd's and SwigluFwd's values)
  static constexpr int NI = 3, NO = 3;
  __device__ void operator()(const float* in, float* out) const {
    SwigluBwd{}(in, out);
    SwigluFwd{}(in, out + 2);
  }
};
struct SigmoidMulFwd {  // in: a, g;  out: a sigmoid(g)
  static constexpr int NI = 2, NO = 1;
  __device__ void operator()(const float* in, float* out) const {
    out[0] = in[0] * sigmoid_f(in[1]);
  }
};
struct SigmoidMulBwd {  // in: a, g, dout;  out: da, dg
  static constexpr int NI = 3, NO = 2;
  __device__ void operator()(const float* in, float* out) const {
    const float s = sigmoid_f(in[1]);
    out[0] = in[2] * s;
    out[1] = in[2] * in[0] * s * (1.0f - s);
  }
};

template <typename T, int NI, int NO>
struct MapArgs {
  const T* in[NI];
  T* out[NO];
};

template <typename T, int V, typename Op>
__global__ void map_kernel(Op op, MapArgs<T, Op::NI, Op::NO> a, int64_t n) {
  constexpr int NI = Op::NI, NO = Op::NO;
  const int64_t nv = n / V;
  for (int64_t i = thread_index(); i < nv; i += thread_count()) {
    float x[NI][V], y[NO][V];
#pragma unroll
    for (int j = 0; j < NI; ++j) load_vec<V>(a.in[j] + i * V, x[j]);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      float xi[NI], yi[NO];
#pragma unroll
      for (int j = 0; j < NI; ++j) xi[j] = x[j][e];
      op(xi, yi);
#pragma unroll
      for (int j = 0; j < NO; ++j) y[j][e] = yi[j];
    }
#pragma unroll
    for (int j = 0; j < NO; ++j) store_vec<V>(a.out[j] + i * V, y[j]);
  }
  for (int64_t i = nv * V + thread_index(); i < n; i += thread_count()) {
    float xi[NI], yi[NO];
#pragma unroll
    for (int j = 0; j < NI; ++j) xi[j] = load_f32(a.in[j], i);
    op(xi, yi);
#pragma unroll
    for (int j = 0; j < NO; ++j) store_f32(a.out[j], i, yi[j]);
  }
}

// dst (TO) = src (TI).
template <typename TI, typename TO, int V>
__global__ void cast_kernel(const TI* src, TO* dst, int64_t n) {
  const int64_t nv = n / V;
  for (int64_t i = thread_index(); i < nv; i += thread_count()) {
    float v[V];
    load_vec<V>(src + i * V, v);
    store_vec<V>(dst + i * V, v);
  }
  for (int64_t i = nv * V + thread_index(); i < n; i += thread_count())
    store_f32(dst, i, load_f32(src, i));
}

// y (fp32) += x (TX).
template <typename TX, int V>
__global__ void add_kernel(float* y, const TX* x, int64_t n) {
  const int64_t nv = n / V;
  for (int64_t i = thread_index(); i < nv; i += thread_count()) {
    float a[V], b[V];
    load_vec<V>(y + i * V, a);
    load_vec<V>(x + i * V, b);
#pragma unroll
    for (int e = 0; e < V; ++e) a[e] += b[e];
    store_vec<V>(y + i * V, a);
  }
  for (int64_t i = nv * V + thread_index(); i < n; i += thread_count()) y[i] += load_f32(x, i);
}

template <typename T, int V>
__global__ void fill_kernel(T* x, float value, int64_t n) {
  const int64_t nv = n / V;
  float v[V];
#pragma unroll
  for (int e = 0; e < V; ++e) v[e] = value;
  for (int64_t i = thread_index(); i < nv; i += thread_count()) store_vec<V>(x + i * V, v);
  for (int64_t i = nv * V + thread_index(); i < n; i += thread_count()) store_f32(x, i, value);
}

// Raw copy of column chunks: U is an unsigned type of the element size, V elements per thread.
// Block (bx, by): threadIdx.x walks column chunks, threadIdx.y (and the grid's y) rows.
template <typename U, int V>
__global__ void copy_cols_kernel(const U* src, int64_t src_ld, U* dst, int64_t dst_ld, int64_t rows,
                                 int64_t chunks) {
  const int64_t ch = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ch >= chunks) return;
  for (int64_t r = int64_t(blockIdx.y) * blockDim.y + threadIdx.y; r < rows;
       r += int64_t(gridDim.y) * blockDim.y) {
    *reinterpret_cast<VecPack<U, V>*>(dst + r * dst_ld + ch * V) =
        *reinterpret_cast<const VecPack<U, V>*>(src + r * src_ld + ch * V);
  }
}

// ---- GDN gates -----------------------------------------------------------------------------

template <typename T>
__global__ void gdn_gates_fwd_kernel(const T* b, const T* a, const T* A_log, const T* dt_bias,
                                     int64_t N, int64_t G, float* beta, float* g) {
  for (int64_t i = thread_index(); i < N * G; i += thread_count()) {
    const int64_t h = i % G;
    beta[i] = sigmoid_f(load_f32(b, i));
    g[i] = -expf(load_f32(A_log, h)) * softplus_f(load_f32(a, i) + load_f32(dt_bias, h));
  }
}

// Block (32, 8) over heads blockIdx.x * 32 + tx and rows [blockIdx.y * rows_per_part, ...),
// row lane ty taking rows ty, ty + 8, ...; writes db, da and the block's head sums of dg * g and
// of da into part_dA[blockIdx.y, G] and part_ddt[blockIdx.y, G].
template <typename T>
__global__ void gdn_gates_bwd_kernel(const T* b, const T* a, const T* A_log, const T* dt_bias,
                                     const float* dbeta, const float* dg, int64_t N, int64_t G,
                                     int64_t rows_per_part, T* db, T* da, double* part_dA,
                                     double* part_ddt) {
  __shared__ double s_dA[8][32], s_ddt[8][32];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t h = int64_t(blockIdx.x) * 32 + tx;
  const int64_t begin = int64_t(blockIdx.y) * rows_per_part;
  const int64_t end = begin + rows_per_part < N ? begin + rows_per_part : N;
  double sum_dA = 0.0, sum_ddt = 0.0;  // over tokens in double, as the CPU reference
  if (h < G) {
    const float A = expf(load_f32(A_log, h)), bias = load_f32(dt_bias, h);
    for (int64_t n = begin + ty; n < end; n += 8) {
      const int64_t i = n * G + h;
      const float sb = sigmoid_f(load_f32(b, i));
      const float u = load_f32(a, i) + bias;
      const float dsp = u > 20.0f ? 1.0f : sigmoid_f(u);
      const float dgv = dg[i], du = -dgv * A * dsp;
      sum_dA += double(dgv) * double(-A * softplus_f(u));  // dg * g
      sum_ddt += double(du);
      store_f32(db, i, dbeta[i] * sb * (1.0f - sb));
      store_f32(da, i, du);
    }
  }
  s_dA[ty][tx] = sum_dA;
  s_ddt[ty][tx] = sum_ddt;
  __syncthreads();
  if (ty == 0 && h < G) {
    double s1 = 0.0, s2 = 0.0;
    for (int t = 0; t < 8; ++t) {
      s1 += s_dA[t][tx];
      s2 += s_ddt[t][tx];
    }
    part_dA[int64_t(blockIdx.y) * G + h] = s1;
    part_ddt[int64_t(blockIdx.y) * G + h] = s2;
  }
}

// ---- RoPE ----------------------------------------------------------------------------------

struct RopeTable {
  float inv_freq[kRopeMaxHalf];
  int8_t row[kRopeMaxHalf];  // position row (0 T, 1 H, 2 W) of frequency j
};

// Tokens [blockIdx.x * tokens, ...) of x [N, H, K]; sign = +1 forward, -1 backward.
template <typename T, int V>
__global__ void rope_kernel(T* x, const int32_t* pos, int64_t N, int H, int K, int half, int tokens,
                            float sign, RopeTable tab) {
  extern __shared__ float cs[];  // cos [tokens * half], then sign * sin [tokens * half]
  float* sn = cs + tokens * half;
  const int64_t n0 = int64_t(blockIdx.x) * tokens;
  const int nt = N - n0 < tokens ? int(N - n0) : tokens;
  for (int e = threadIdx.x; e < nt * half; e += blockDim.x) {
    const int t = e / half, j = e % half;
    // HF: angle = float(pos) * inv_freq in fp32; cos/sin of that fp32 angle, rounded to fp32.
    const float angle = float(pos[tab.row[j] * N + n0 + t]) * tab.inv_freq[j];
    double s, c;
    sincos(double(angle), &s, &c);
    cs[e] = float(c);
    sn[e] = sign * float(s);
  }
  __syncthreads();
  const int hv = half / V, per_token = H * hv;
  for (int e = threadIdx.x; e < nt * per_token; e += blockDim.x) {
    const int t = e / per_token, rem = e % per_token;
    const int h = rem / hv, j0 = (rem % hv) * V;
    T* p = x + ((n0 + t) * H + h) * int64_t(K) + j0;
    float lo[V], hi[V];
    load_vec<V>(p, lo);
    load_vec<V>(p + half, hi);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const float c = cs[t * half + j0 + v], s = sn[t * half + j0 + v];
      const float a = lo[v], b = hi[v];
      lo[v] = a * c - b * s;
      hi[v] = b * c + a * s;
    }
    store_vec<V>(p, lo);
    store_vec<V>(p + half, hi);
  }
}

// ---- col_sum_add ---------------------------------------------------------------------------

// S: the partial sums' type, also the accumulator's (double for the GDN gate sums).
template <typename S>
__global__ void col_sum_add_kernel(const S* x, int64_t rows, int64_t cols, float* y) {
  __shared__ S s[16][33];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = int64_t(blockIdx.x) * 32 + tx;
  S acc = 0;
  if (c < cols)
    for (int64_t r = ty; r < rows; r += 16) acc += x[r * cols + c];
  s[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && c < cols) {
    S t = 0;
    for (int i = 0; i < 16; ++i) t += s[i][tx];
    y[c] += float(t);
  }
}

// ---- host side -----------------------------------------------------------------------------

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

unsigned blocks_for(int64_t work) {
  return unsigned(std::clamp<int64_t>((work + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

void check_n(const char* op, int64_t n) { DT_CHECK(n >= 0, op, ": negative element count ", n); }

// Launches map_kernel for Op over n elements of dt, vectorised when every pointer allows it.
template <typename Op>
void launch_map(const char* name, DType dt, int64_t n, std::initializer_list<const void*> in,
                std::initializer_list<void*> out) {
  check_n(name, n);
  if (n == 0) return;
  bool vec_ok = true;
  for (const void* p : in) vec_ok = vec_ok && aligned(p, 16);
  for (void* p : out) vec_ok = vec_ok && aligned(p, 16);
  DT_DISPATCH_DTYPE(dt, T, {
    MapArgs<T, Op::NI, Op::NO> a{};
    int j = 0;
    for (const void* p : in) a.in[j++] = static_cast<const T*>(p);
    j = 0;
    for (void* p : out) a.out[j++] = static_cast<T*>(p);
    constexpr int V = std::is_same_v<T, float> ? 4 : 8;
    if (vec_ok)
      map_kernel<T, V, Op><<<blocks_for(n / V + 1), kThreads>>>(Op{}, a, n);
    else
      map_kernel<T, 1, Op><<<blocks_for(n), kThreads>>>(Op{}, a, n);
  });
  DT_CUDA_LAUNCH_CHECK(name);
}

// Scratch for the GDN gate partial sums (see cuda::ScratchBuffer).
double* gate_partials(int64_t n) {
  static ScratchBuffer* s = new ScratchBuffer("GDN gate partial sums");  // leaked
  return static_cast<double*>(s->get(size_t(n) * sizeof(double)));
}

template <typename S>
void col_sum_add_impl(const S* x_RC, int64_t rows, int64_t cols, float* y_C) {
  DT_CHECK(rows >= 0 && cols >= 0, "cuda::col_sum_add: negative size rows=", rows, " cols=", cols);
  if (rows == 0 || cols == 0) return;
  const dim3 grid(unsigned((cols + 31) / 32)), block(32, 16);
  col_sum_add_kernel<S><<<grid, block>>>(x_RC, rows, cols, y_C);
  DT_CUDA_LAUNCH_CHECK("col_sum_add");
}

void rope(const char* name, DType dt, void* x_NHK, const int32_t* pos_3N, int64_t N, int64_t H,
          int64_t K, int64_t R, double theta, const int mrope_section[3], float sign) {
  DT_CHECK(N >= 0 && H >= 0 && K >= 0, name, ": negative size N=", N, " H=", H, " K=", K);
  DT_CHECK(R >= 0 && R % 2 == 0 && R <= K, name, ": rotary dim R=", R,
           " must be even and within the head dim K=", K);
  DT_CHECK(R <= 2 * kRopeMaxHalf, name, ": rotary dim R=", R, " above ", 2 * kRopeMaxHalf);
  DT_CHECK(mrope_section != nullptr, name, ": mrope_section is null");
  DT_CHECK(N == 0 || pos_3N != nullptr, name, ": positions are null");
  DT_CHECK(H * K <= INT32_MAX, name, ": H*K=", H * K, " too large");
  const int half = int(R / 2);
  if (N == 0 || H == 0 || half == 0) return;
  // Exactly the CPU op's (and HF's) float32 inverse frequencies and interleaved MRoPE rows.
  RopeTable tab{};
  for (int j = 0; j < half; ++j) {
    tab.inv_freq[j] = 1.0f / std::pow(float(theta), float(2 * j) / float(R));
    tab.row[j] = (j % 3 == 1 && j < 3 * mrope_section[1])   ? 1
                 : (j % 3 == 2 && j < 3 * mrope_section[2]) ? 2
                                                            : 0;
  }
  const int V0 = dt == DType::bf16 ? 8 : 4;
  const int V = half % V0 == 0 && K % V0 == 0 && aligned(x_NHK, 16) ? V0 : 1;
  // ~4 pairs per thread per block, within the cos/sin table budget.
  const int64_t per_token = H * (half / V);
  const int tokens = int(std::clamp<int64_t>((4 * kThreads + per_token - 1) / per_token, 1,
                                             std::max(1, kRopeTable / half)));
  const unsigned grid = unsigned((N + tokens - 1) / tokens);
  const size_t smem = size_t(2) * tokens * half * sizeof(float);
  DT_DISPATCH_DTYPE(dt, T, {
    constexpr int VW = std::is_same_v<T, float> ? 4 : 8;
    if (V == VW)
      rope_kernel<T, VW><<<grid, kThreads, smem>>>(static_cast<T*>(x_NHK), pos_3N, N, int(H),
                                                   int(K), half, tokens, sign, tab);
    else
      rope_kernel<T, 1><<<grid, kThreads, smem>>>(static_cast<T*>(x_NHK), pos_3N, N, int(H), int(K),
                                                  half, tokens, sign, tab);
  });
  DT_CUDA_LAUNCH_CHECK(name);
}

}  // namespace

// ---- activations ---------------------------------------------------------------------------

void swiglu_fwd(DType dt, const void* gate, const void* up, int64_t n, void* h) {
  launch_map<SwigluFwd>("cuda::swiglu_fwd", dt, n, {gate, up}, {h});
}

void swiglu_bwd(DType dt, const void* gate, const void* up, const void* dh, int64_t n, void* dgate,
                void* dup, void* h) {
  if (h)
    launch_map<SwigluBwdH>("cuda::swiglu_bwd", dt, n, {gate, up, dh}, {dgate, dup, h});
  else
    launch_map<SwigluBwd>("cuda::swiglu_bwd", dt, n, {gate, up, dh}, {dgate, dup});
}

void sigmoid_mul_fwd(DType dt, const void* a, const void* g, int64_t n, void* out) {
  launch_map<SigmoidMulFwd>("cuda::sigmoid_mul_fwd", dt, n, {a, g}, {out});
}

void sigmoid_mul_bwd(DType dt, const void* a, const void* g, const void* dout, int64_t n, void* da,
                     void* dg) {
  launch_map<SigmoidMulBwd>("cuda::sigmoid_mul_bwd", dt, n, {a, g, dout}, {da, dg});
}

// ---- GDN gates -----------------------------------------------------------------------------

void gdn_gates_fwd(DType dt, const void* b_NG, const void* a_NG, const void* A_log_G,
                   const void* dt_bias_G, int64_t N, int64_t G, float* beta_NG, float* g_NG) {
  DT_CHECK(N >= 0 && G >= 0, "cuda::gdn_gates_fwd: negative size N=", N, " G=", G);
  if (N == 0 || G == 0) return;
  DT_DISPATCH_DTYPE(dt, T, {
    gdn_gates_fwd_kernel<T><<<blocks_for(N * G), kThreads>>>(
        static_cast<const T*>(b_NG), static_cast<const T*>(a_NG), static_cast<const T*>(A_log_G),
        static_cast<const T*>(dt_bias_G), N, G, beta_NG, g_NG);
  });
  DT_CUDA_LAUNCH_CHECK("gdn_gates_fwd");
}

void gdn_gates_bwd(DType dt, const void* b_NG, const void* a_NG, const void* A_log_G,
                   const void* dt_bias_G, const float* dbeta_NG, const float* dg_NG, int64_t N,
                   int64_t G, void* db_NG, void* da_NG, float* dA_log_G, float* ddt_bias_G) {
  DT_CHECK(N >= 0 && G >= 0, "cuda::gdn_gates_bwd: negative size N=", N, " G=", G);
  if (N == 0 || G == 0) return;
  // Parts: contiguous row ranges, a multiple of the 8 row lanes, at most kGateParts of them.
  const int64_t groups = (N + 7) / 8;
  const int64_t rows_per_part = (groups + kGateParts - 1) / kGateParts * 8;
  const int64_t parts = (N + rows_per_part - 1) / rows_per_part;
  double* part = gate_partials(2 * parts * G);
  const dim3 grid(unsigned((G + 31) / 32), unsigned(parts)), block(32, 8);
  DT_DISPATCH_DTYPE(dt, T, {
    gdn_gates_bwd_kernel<T><<<grid, block>>>(
        static_cast<const T*>(b_NG), static_cast<const T*>(a_NG), static_cast<const T*>(A_log_G),
        static_cast<const T*>(dt_bias_G), dbeta_NG, dg_NG, N, G, rows_per_part,
        static_cast<T*>(db_NG), static_cast<T*>(da_NG), part, part + parts * G);
  });
  DT_CUDA_LAUNCH_CHECK("gdn_gates_bwd");
  col_sum_add_impl(part, parts, G, dA_log_G);
  col_sum_add_impl(part + parts * G, parts, G, ddt_bias_G);
}

// ---- RoPE ----------------------------------------------------------------------------------

void rope_fwd(DType dt, void* x_NHK, const int32_t* pos_3N, int64_t N, int64_t H, int64_t K,
              int64_t R, double theta, const int mrope_section[3]) {
  rope("cuda::rope_fwd", dt, x_NHK, pos_3N, N, H, K, R, theta, mrope_section, 1.0f);
}

void rope_bwd(DType dt, void* dx_NHK, const int32_t* pos_3N, int64_t N, int64_t H, int64_t K,
              int64_t R, double theta, const int mrope_section[3]) {
  rope("cuda::rope_bwd", dt, dx_NHK, pos_3N, N, H, K, R, theta, mrope_section, -1.0f);
}

// ---- plain helpers -------------------------------------------------------------------------

void cast(DType from, const void* src, DType to, void* dst, int64_t n) {
  check_n("cuda::cast", n);
  if (n == 0) return;
  if (from == to) {
    DT_CUDA_CHECK(
        cudaMemcpyAsync(dst, src, size_t(n) * dtype_size(to), cudaMemcpyDeviceToDevice, 0));
    return;
  }
  const bool vec_ok = aligned(src, 16) && aligned(dst, 16);
  DT_DISPATCH_DTYPE(from, TI, DT_DISPATCH_DTYPE(to, TO, {
                      if (vec_ok)
                        cast_kernel<TI, TO, 8><<<blocks_for(n / 8 + 1), kThreads>>>(
                            static_cast<const TI*>(src), static_cast<TO*>(dst), n);
                      else
                        cast_kernel<TI, TO, 1><<<blocks_for(n), kThreads>>>(
                            static_cast<const TI*>(src), static_cast<TO*>(dst), n);
                    }));
  DT_CUDA_LAUNCH_CHECK("cast");
}

void add_inplace(float* y, const float* x, int64_t n) { add_inplace_dt(y, DType::f32, x, n); }

namespace {
template <typename T>
__global__ void axpy_kernel(T* y, const T* x, float alpha, int64_t n) {
  for (int64_t i = thread_index(); i < n; i += thread_count())
    store_f32(y, i, load_f32(y, i) + alpha * load_f32(x, i));
}
}  // namespace

namespace {
template <typename T>
__global__ void dropout_kernel(const T* x, T* y, uint32_t keep_below, float scale, uint64_t key,
                               int64_t n, int64_t cols, int64_t ld, int64_t col0) {
  for (int64_t i = thread_index(); i < n; i += thread_count()) {
    const int64_t k = cols == 0 ? i : (i / cols) * ld + col0 + i % cols;
    const bool keep = uint32_t(core::random_bits(key, uint64_t(k)) >> 40) < keep_below;
    store_f32(y, i, keep ? load_f32(x, i) * scale : 0.f);
  }
}
}  // namespace

void dropout(DType dt, const void* x, void* y, uint32_t keep_below, float scale, uint64_t key,
             int64_t n, int64_t cols, int64_t ld, int64_t col0) {
  check_n("cuda::dropout", n);
  if (n == 0) return;
  DT_DISPATCH_DTYPE(dt, T, {
    dropout_kernel<T><<<blocks_for(n), kThreads>>>(static_cast<const T*>(x), static_cast<T*>(y),
                                                   keep_below, scale, key, n, cols, ld, col0);
  });
  DT_CUDA_LAUNCH_CHECK("dropout");
}

void axpy(DType dt, void* y, const void* x, float alpha, int64_t n) {
  check_n("cuda::axpy", n);
  if (n == 0) return;
  DT_DISPATCH_DTYPE(dt, T, {
    axpy_kernel<T>
        <<<blocks_for(n), kThreads>>>(static_cast<T*>(y), static_cast<const T*>(x), alpha, n);
  });
  DT_CUDA_LAUNCH_CHECK("axpy");
}

void add_inplace_dt(float* y, DType xt, const void* x, int64_t n) {
  check_n("cuda::add_inplace", n);
  if (n == 0) return;
  const bool vec_ok = aligned(y, 16) && aligned(x, 16);
  DT_DISPATCH_DTYPE(xt, TX, {
    constexpr int V = std::is_same_v<TX, float> ? 4 : 8;
    if (vec_ok)
      add_kernel<TX, V><<<blocks_for(n / V + 1), kThreads>>>(y, static_cast<const TX*>(x), n);
    else
      add_kernel<TX, 1><<<blocks_for(n), kThreads>>>(y, static_cast<const TX*>(x), n);
  });
  DT_CUDA_LAUNCH_CHECK("add_inplace");
}

void copy_cols(DType dt, const void* src, int64_t src_ld, int64_t src_col0, void* dst,
               int64_t dst_ld, int64_t dst_col0, int64_t rows, int64_t cols) {
  DT_CHECK(rows >= 0 && cols >= 0 && src_col0 >= 0 && dst_col0 >= 0 && src_col0 + cols <= src_ld &&
               dst_col0 + cols <= dst_ld,
           "cuda::copy_cols: bad layout rows=", rows, " cols=", cols, " src_ld=", src_ld,
           " src_col0=", src_col0, " dst_ld=", dst_ld, " dst_col0=", dst_col0);
  if (rows == 0 || cols == 0) return;
  const size_t es = dtype_size(dt);
  const char* s = static_cast<const char*>(src) + src_col0 * es;
  char* d = static_cast<char*>(dst) + dst_col0 * es;
  // Widest V (16 bytes down to one element) that divides every offset and leading dimension.
  auto fits = [&](int64_t v) {
    return src_ld % v == 0 && dst_ld % v == 0 && cols % v == 0 && aligned(s, v * es) &&
           aligned(d, v * es);
  };
  const int64_t vmax = int64_t(16 / es);
  int64_t V = vmax;
  while (V > 1 && !fits(V)) V /= 2;
  const int64_t chunks = cols / V;
  const int bx = int(std::min<int64_t>(kThreads, std::bit_ceil(uint64_t(chunks))));
  const int by = kThreads / bx;
  const dim3 block(bx, by);
  const dim3 grid(unsigned((chunks + bx - 1) / bx),
                  unsigned(std::min<int64_t>((rows + by - 1) / by, 65535)));
  auto launch = [&](auto u, auto vc) {
    using U = decltype(u);
    constexpr int VV = decltype(vc)::value;
    copy_cols_kernel<U, VV><<<grid, block>>>(reinterpret_cast<const U*>(s), src_ld,
                                             reinterpret_cast<U*>(d), dst_ld, rows, chunks);
  };
  auto by_v = [&](auto u) {
    switch (V) {
      case 8:
        return launch(u, std::integral_constant<int, 8>{});
      case 4:
        return launch(u, std::integral_constant<int, 4>{});
      case 2:
        return launch(u, std::integral_constant<int, 2>{});
      default:
        return launch(u, std::integral_constant<int, 1>{});
    }
  };
  if (es == 2)
    by_v(uint16_t{});
  else
    by_v(uint32_t{});
  DT_CUDA_LAUNCH_CHECK("copy_cols");
}

void fill(DType dt, void* x, float value, int64_t n) {
  check_n("cuda::fill", n);
  if (n == 0) return;
  const bool vec_ok = aligned(x, 16);
  DT_DISPATCH_DTYPE(dt, T, {
    constexpr int V = std::is_same_v<T, float> ? 4 : 8;
    if (vec_ok)
      fill_kernel<T, V><<<blocks_for(n / V + 1), kThreads>>>(static_cast<T*>(x), value, n);
    else
      fill_kernel<T, 1><<<blocks_for(n), kThreads>>>(static_cast<T*>(x), value, n);
  });
  DT_CUDA_LAUNCH_CHECK("fill");
}

void col_sum_add(const float* x_RC, int64_t rows, int64_t cols, float* y_C) {
  col_sum_add_impl(x_RC, rows, cols, y_C);
}

}  // namespace deltatron::cuda
