// Grouped expert GEMMs (see grouped_linear.h): a per-expert cuBLASLt loop and one bf16
// tensor-core kernel for all experts.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <cub/block/block_scan.cuh>
#include <initializer_list>
#include <mutex>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "cuda/grouped_linear.h"
#include "cuda/kernel_util.cuh"
#include "cuda/linear.h"
#include "cuda/mma.cuh"

namespace deltatron::cuda {

namespace {
bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
}  // namespace

// ---- grouped expert GEMMs: one cuBLASLt call per non-empty expert (f32 mode, odd shapes) -----

namespace {

void check_offsets(const char* op, const int64_t* off, int64_t E, int64_t I, int64_t O) {
  DT_CHECK(E > 0 && I >= 0 && O >= 0, op, ": bad shape E=", E, " I=", I, " O=", O);
  DT_CHECK(off[0] == 0, op, ": offsets must start at 0, got ", off[0]);
  for (int64_t e = 0; e < E; ++e)
    DT_CHECK(off[e + 1] >= off[e], op, ": offsets decrease at expert ", e, " (", off[e], " > ",
             off[e + 1], ")");
}

const char* bytes_at(const void* p, int64_t elems, DType dt) {
  return static_cast<const char*>(p) + size_t(elems) * dtype_size(dt);
}
char* bytes_at(void* p, int64_t elems, DType dt) {
  return static_cast<char*>(p) + size_t(elems) * dtype_size(dt);
}

}  // namespace

void grouped_linear_fwd_loop(DType dt, const void* x_RI, const void* W_EOI,
                             const int64_t* offsets_E1_host, int64_t E, int64_t I, int64_t O,
                             void* y_RO) {
  check_offsets("cuda::grouped_linear_fwd", offsets_E1_host, E, I, O);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = offsets_E1_host[e], R = offsets_E1_host[e + 1] - r0;
    if (R == 0) continue;
    linear_fwd(dt, bytes_at(x_RI, r0 * I, dt), bytes_at(W_EOI, e * O * I, dt), R, I, O, dt,
               bytes_at(y_RO, r0 * O, dt), false);
  }
}

void grouped_linear_bwd_loop(DType dt, const void* x_RI, const void* W_EOI, const void* dy_RO,
                             const int64_t* offsets_E1_host, int64_t E, int64_t I, int64_t O,
                             void* dx_RI, float* dW_EOI, bool accumulate_dw) {
  check_offsets("cuda::grouped_linear_bwd", offsets_E1_host, E, I, O);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = offsets_E1_host[e], R = offsets_E1_host[e + 1] - r0;
    if (R > 0 && dx_RI)
      linear_bwd_dx(dt, bytes_at(dy_RO, r0 * O, dt), bytes_at(W_EOI, e * O * I, dt), R, I, O, dt,
                    bytes_at(dx_RI, r0 * I, dt), false);
    // An empty expert adds nothing; overwritten, its dW is zeros (a memset, not a product call:
    // its row pointers may lie past the end of x and dy).
    if (dW_EOI && R > 0)
      linear_bwd_dw(dt, bytes_at(x_RI, r0 * I, dt), bytes_at(dy_RO, r0 * O, dt), R, I, O,
                    dW_EOI + e * O * I, 1.0f, accumulate_dw);
    else if (dW_EOI && !accumulate_dw)
      DT_CUDA_CHECK(cudaMemsetAsync(dW_EOI + e * O * I, 0, size_t(O * I) * sizeof(float), 0));
  }
}

// ---- grouped expert GEMMs: one kernel launch for all experts (bf16) ----------------------------
//
// One CTA (256 threads = 8 warps as 2 x 4) computes a 128 x 128 tile of one expert's product
// C[M, N] (+)= A[M, K] B[K, N] with mma.sync m16n8k16 (bf16 in, fp32 accumulate); each warp owns
// 64 x 32 (4 x 4 mma tiles, 64 fp32 accumulators a thread). The three products:
//   fwd  y  = x W^T    A = x rows  (K-major)  B = W[e] rows (K-major)   M = R_e  N = O  K = I
//   dx   dx = dy W     A = dy rows (K-major)  B = W[e]      (N-major)   M = R_e  N = I  K = O
//   dW   dW += dy^T x  A = dy rows (M-major)  B = x rows    (N-major)   M = O    N = I  K = R_e
// Tiles are listed expert by expert (a table of each expert's first tile, with the row offsets:
// built on the host and uploaded, or built on the device by grouped_table_kernel from device
// offsets); a CTA finds its expert by binary search. CTAs past the last tile (the worst-case grid
// of the device-offset form) exit at once. K is walked in 32-wide slices
// through a 4-stage cp.async pipeline (16 KiB a stage: A and B tiles of 128 x 32 bf16, 64 KiB of
// dynamic shared memory). Shared-memory tiles are XOR-swizzled in 16-byte chunks so that the
// ldmatrix reads (8 rows of one chunk column) hit 8 distinct bank groups:
//   K-major [128 rows][4 chunks]:  chunk ^ ((row >> 1) & 3)   (two 64-byte rows per 128 bytes)
//   MN-major [32 k][16 chunks]:    chunk ^ (k & 7)
// MN-major operands are read with ldmatrix.trans. Out-of-range chunks (rows past R_e, k past K)
// are zero-filled by cp.async, so partial tiles need no special path; I and O must be multiples
// of 8 (whole 16-byte chunks). Epilogue: each thread stores its fragment pairs directly (bf16x2,
// or float2 read-add-write for dW). One writer per element and a fixed K order: deterministic.

namespace {

// BK = 64 with 3 stages (96 KiB) was measured slower on H200: dW 1.7x, fwd and dx ~10%.
constexpr int kBM = 128, kBN = 128, kBK = 32, kStages = 4, kGemmThreads = 256;
constexpr int kTileBytes = 128 * kBK * 2;            // one operand tile of a stage: 8 KiB
constexpr int kGemmSmem = kStages * 2 * kTileBytes;  // 64 KiB

struct GemmArgs {
  const __nv_bfloat16* A;
  const __nv_bfloat16* B;
  void* C;
  // Operand base of expert e = base + row_off[e] * X_row + e * X_exp (elements).
  int64_t a_row, a_exp, b_row, b_exp, c_row, c_exp;
  int64_t lda, ldb, ldc;
  int64_t M, K;  // fixed M or K, or -1 = the expert's row count
  int64_t N;
  int64_t n_tiles;            // tiles along N
  const int64_t* tile_start;  // [E+1]
  const int64_t* row_off;     // [E+1]
  int E;
};

// Byte offset of 16-byte chunk `c` of row `r` in a swizzled tile.
__device__ __forceinline__ uint32_t kmajor_off(int r, int c) {
  return uint32_t(r * 64 + ((c ^ ((r >> 1) & 3)) << 4));
}
__device__ __forceinline__ uint32_t mnmajor_off(int k, int c) {
  return uint32_t(k * 256 + ((c ^ (k & 7)) << 4));
}

// Loads the 128 x 32 slice [rows r0.., k0..] of an operand into a stage tile. K-major: element
// (r, k) at g[r * ld + k]; MN-major: at g[k * ld + r]. 512 chunks, two a thread.
template <bool kKMajor>
__device__ __forceinline__ void load_tile(uint32_t tile, const __nv_bfloat16* g, int64_t ld,
                                          int64_t r0, int64_t rows, int64_t k0, int64_t K) {
#pragma unroll
  for (int it = 0; it < 2; ++it) {
    const int c = int(threadIdx.x) + it * kGemmThreads;
    if constexpr (kKMajor) {
      const int r = c >> 2, kc = c & 3;
      const int64_t gr = r0 + r, gk = k0 + kc * 8;
      const bool ok = gr < rows && gk < K;
      cp_async16(tile + kmajor_off(r, kc), ok ? g + gr * ld + gk : g, ok);
    } else {
      const int k = c >> 4, rc = c & 15;
      const int64_t gk = k0 + k, gr = r0 + rc * 8;
      const bool ok = gk < K && gr < rows;
      cp_async16(tile + mnmajor_off(k, rc), ok ? g + gk * ld + gr : g, ok);
    }
  }
}

template <bool kAKMajor, bool kBKMajor, typename TC, bool kAccumulate>
__global__ void __launch_bounds__(kGemmThreads) grouped_gemm_kernel(GemmArgs p) {
  extern __shared__ __align__(128) unsigned char smem[];
  // Expert of this tile: the last e with tile_start[e] <= tile (empty experts own no tiles).
  const int64_t tile = blockIdx.x;
  if (tile >= p.tile_start[p.E]) return;  // past the last tile (device-offset grid)
  int lo = 0, hi = p.E - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (p.tile_start[mid] <= tile)
      lo = mid;
    else
      hi = mid - 1;
  }
  const int e = lo;
  const int64_t local = tile - p.tile_start[e];
  const int64_t row0 = p.row_off[e], rows_e = p.row_off[e + 1] - row0;
  const int64_t M = p.M >= 0 ? p.M : rows_e, K = p.K >= 0 ? p.K : rows_e, N = p.N;
  const int64_t m0 = (local / p.n_tiles) * kBM, n0 = (local % p.n_tiles) * kBN;
  const __nv_bfloat16* A = p.A + row0 * p.a_row + int64_t(e) * p.a_exp;
  const __nv_bfloat16* B = p.B + row0 * p.b_row + int64_t(e) * p.b_exp;
  TC* C = static_cast<TC*>(p.C) + row0 * p.c_row + int64_t(e) * p.c_exp;

  const uint32_t base = smem_u32(smem);
  auto a_tile = [&](int s) { return base + uint32_t(s * 2 * kTileBytes); };
  auto b_tile = [&](int s) { return base + uint32_t(s * 2 * kTileBytes + kTileBytes); };
  const int64_t k_tiles = (K + kBK - 1) / kBK;
  auto load_stage = [&](int64_t kt) {
    const int s = int(kt % kStages);
    load_tile<kAKMajor>(a_tile(s), A, p.lda, m0, M, kt * kBK, K);
    load_tile<kBKMajor>(b_tile(s), B, p.ldb, n0, N, kt * kBK, K);
  };

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = warp >> 2, wn = warp & 3;  // warp tile origin (wm * 64, wn * 32)
  const int q = lane >> 3, r8 = lane & 7;
  float acc[4][4][4] = {};

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) load_stage(s);
    cp_async_commit();
  }
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // stage kt landed for every thread; stage kt-1 is no longer read
    if (kt + kStages - 1 < k_tiles) load_stage(kt + kStages - 1);
    cp_async_commit();
    const int s = int(kt % kStages);
    const uint32_t at = a_tile(s), bt = b_tile(s);
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk) {
      uint32_t a[4][4], b[4][2];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int m = wm * 64 + i * 16;
        if constexpr (kAKMajor)
          ldsm_x4<false>(a[i], at + kmajor_off(m + r8 + (q & 1) * 8, kk * 2 + (q >> 1)));
        else
          ldsm_x4<true>(a[i], at + mnmajor_off(kk * 16 + r8 + (q >> 1) * 8, (m >> 3) + (q & 1)));
      }
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {
        const int n = wn * 32 + jj * 16;
        uint32_t r[4];
        if constexpr (kBKMajor)
          ldsm_x4<false>(r, bt + kmajor_off(n + r8 + (q >> 1) * 8, kk * 2 + (q & 1)));
        else
          ldsm_x4<true>(r, bt + mnmajor_off(kk * 16 + r8 + (q & 1) * 8, (n >> 3) + (q >> 1)));
        b[jj * 2][0] = r[0], b[jj * 2][1] = r[1], b[jj * 2 + 1][0] = r[2], b[jj * 2 + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma16816(acc[i][j], a[i], b[j][0], b[j][1]);
    }
  }
  cp_async_wait<0>();

  // Epilogue: thread holds C[m][n, n+1] and C[m+8][n, n+1] of each mma tile.
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t m = m0 + wm * 64 + i * 16 + (lane >> 2) + h * 8;
        const int64_t n = n0 + wn * 32 + j * 8 + (lane & 3) * 2;
        if (m >= M || n >= N) continue;
        TC* c = C + m * p.ldc + n;
        const float v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
        if constexpr (std::is_same_v<TC, float>) {
          float2 o = kAccumulate ? *reinterpret_cast<float2*>(c) : make_float2(0.f, 0.f);
          o.x += v0, o.y += v1;
          *reinterpret_cast<float2*>(c) = o;
        } else {
          *reinterpret_cast<__nv_bfloat162*>(c) = __floats2bfloat162_rn(v0, v1);
        }
      }
}

// Launches the grouped kernel over `tiles` CTAs with the tile table at table_dev ([0..E] first
// tiles, [E+1..2E+1] row offsets); CTAs past table[E] exit at once.
template <bool kAKMajor, bool kBKMajor, typename TC, bool kAccumulate>
void launch_grouped_kernel(GemmArgs p, int64_t E, const int64_t* table_dev, int64_t tiles) {
  p.tile_start = table_dev;
  p.row_off = table_dev + E + 1;
  p.E = int(E);
  auto kernel = grouped_gemm_kernel<kAKMajor, kBKMajor, TC, kAccumulate>;
  static const bool configured = [&] {
    DT_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kGemmSmem));
    return true;
  }();
  (void)configured;
  kernel<<<unsigned(tiles), kGemmThreads, kGemmSmem>>>(p);
  DT_CUDA_LAUNCH_CHECK("grouped_gemm_kernel");
}

// Per-expert tile counts -> table [tile_start E+1][row_off E+1] in the scratch; launches.
// every_expert: an empty expert gets its tiles too (a fixed M: the dW product, K = 0), so an
// overwriting product writes its zeros.
template <bool kAKMajor, bool kBKMajor, typename TC, bool kAccumulate>
void launch_grouped(GemmArgs p, const int64_t* off, int64_t E, int64_t* table_dev,
                    bool every_expert = false) {
  std::vector<int64_t> table(2 * (E + 1));
  table[0] = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t rows = off[e + 1] - off[e];
    const int64_t M = rows == 0 && !every_expert ? 0 : p.M >= 0 ? p.M : rows;
    table[e + 1] = table[e] + ceil_div(M, kBM) * p.n_tiles;
  }
  std::copy(off, off + E + 1, table.begin() + E + 1);
  const int64_t tiles = table[E];
  if (tiles == 0) return;
  DT_CHECK(tiles <= INT32_MAX, "grouped GEMM: too many tiles ", tiles);
  DT_CUDA_CHECK(cudaMemcpyAsync(table_dev, table.data(), table.size() * 8, cudaMemcpyHostToDevice,
                                0));  // pageable source: staged before this call returns
  launch_grouped_kernel<kAKMajor, kBKMajor, TC, kAccumulate>(p, E, table_dev, tiles);
}

// The table of launch_grouped on the device: table[0..E] = each expert's first tile (exclusive
// scan of tiles(e) = ceil(M_e / kBM) * n_tiles, M_e = 0 for an empty expert, else the fixed M or
// the expert's rows), table[E+1..2E+1] = the row offsets. One block; scans in expert order.
constexpr int kTableThreads = 256;
__global__ void grouped_table_kernel(const int64_t* __restrict__ off, int E, int64_t M_fixed,
                                     int64_t n_tiles, int64_t* __restrict__ table,
                                     bool every_expert) {
  using Scan = cub::BlockScan<int64_t, kTableThreads>;
  __shared__ typename Scan::TempStorage tmp;
  int64_t carry = 0;
  for (int e0 = 0; e0 < E; e0 += kTableThreads) {
    const int e = e0 + int(threadIdx.x);
    int64_t tiles = 0;
    if (e < E) {
      const int64_t rows = off[e + 1] - off[e];
      const int64_t M = rows == 0 && !every_expert ? 0 : M_fixed >= 0 ? M_fixed : rows;
      tiles = (M + kBM - 1) / kBM * n_tiles;
    }
    int64_t ex, agg;
    Scan(tmp).ExclusiveSum(tiles, ex, agg);
    if (e < E) table[e] = carry + ex;
    carry += agg;
    __syncthreads();  // tmp is reused
  }
  if (threadIdx.x == 0) table[E] = carry;
  for (int e = int(threadIdx.x); e <= E; e += kTableThreads) table[E + 1 + e] = off[e];
}

// launch_grouped with device offsets: the table built on the device, a worst-case grid.
template <bool kAKMajor, bool kBKMajor, typename TC, bool kAccumulate>
void launch_grouped_device(GemmArgs p, DeviceOffsets off, int64_t E, int64_t* table_dev,
                           bool every_expert = false) {
  DT_CHECK(!every_expert || p.M >= 0, "grouped GEMM: every_expert needs a fixed M");
  // experts that can own tiles
  const int64_t busy = every_expert ? E : std::min(E, off.rows_max);
  const int64_t tiles = p.M >= 0 ? busy * ceil_div(p.M, kBM) * p.n_tiles
                                 : (ceil_div(off.rows_max, kBM) + busy) * p.n_tiles;
  if (tiles == 0) return;
  DT_CHECK(tiles <= INT32_MAX, "grouped GEMM: too many tiles ", tiles);
  DT_CHECK(E <= INT32_MAX, "grouped GEMM: too many experts ", E);
  grouped_table_kernel<<<1, kTableThreads>>>(off.offsets_E1, int(E), p.M, p.n_tiles, table_dev,
                                             every_expert);
  DT_CUDA_LAUNCH_CHECK("grouped_table_kernel");
  launch_grouped_kernel<kAKMajor, kBKMajor, TC, kAccumulate>(p, E, table_dev, tiles);
}

ScratchBuffer& gemm_scratch() {
  static ScratchBuffer* s = new ScratchBuffer("grouped GEMM tile tables");  // leaked
  return *s;
}

bool use_grouped_kernel(DType dt, int64_t I, int64_t O, std::initializer_list<const void*> ptrs) {
  if (dt != DType::bf16 || I <= 0 || O <= 0 || I % 8 != 0 || O % 8 != 0) return false;
  for (const void* p : ptrs)
    if (p && !aligned16(p)) return false;
  return true;
}

}  // namespace

namespace {

// The three products' arguments (see the kernel's header comment).
GemmArgs fwd_args(const void* x_RI, const void* W_EOI, int64_t I, int64_t O, void* y_RO) {
  GemmArgs a{};
  a.A = static_cast<const __nv_bfloat16*>(x_RI), a.a_row = I, a.a_exp = 0, a.lda = I;
  a.B = static_cast<const __nv_bfloat16*>(W_EOI), a.b_row = 0, a.b_exp = O * I, a.ldb = I;
  a.C = y_RO, a.c_row = O, a.c_exp = 0, a.ldc = O;
  a.M = -1, a.K = I, a.N = O, a.n_tiles = ceil_div(O, kBN);
  return a;
}
GemmArgs dx_args(const void* W_EOI, const void* dy_RO, int64_t I, int64_t O, void* dx_RI) {
  GemmArgs a{};
  a.A = static_cast<const __nv_bfloat16*>(dy_RO), a.a_row = O, a.a_exp = 0, a.lda = O;
  a.B = static_cast<const __nv_bfloat16*>(W_EOI), a.b_row = 0, a.b_exp = O * I, a.ldb = I;
  a.C = dx_RI, a.c_row = I, a.c_exp = 0, a.ldc = I;
  a.M = -1, a.K = O, a.N = I, a.n_tiles = ceil_div(I, kBN);
  return a;
}
GemmArgs dw_args(const void* x_RI, const void* dy_RO, int64_t I, int64_t O, float* dW_EOI) {
  GemmArgs a{};
  a.A = static_cast<const __nv_bfloat16*>(dy_RO), a.a_row = O, a.a_exp = 0, a.lda = O;
  a.B = static_cast<const __nv_bfloat16*>(x_RI), a.b_row = I, a.b_exp = 0, a.ldb = I;
  a.C = dW_EOI, a.c_row = 0, a.c_exp = O * I, a.ldc = I;
  a.M = O, a.K = -1, a.N = I, a.n_tiles = ceil_div(I, kBN);
  return a;
}

void check_device_offsets(const char* op, DType dt, DeviceOffsets off, int64_t E, int64_t I,
                          int64_t O, std::initializer_list<const void*> ptrs) {
  DT_CHECK(E > 0 && I >= 0 && O >= 0 && off.rows_max >= 0, op, ": bad shape E=", E, " I=", I,
           " O=", O, " rows_max=", off.rows_max);
  DT_CHECK(off.offsets_E1 != nullptr, op, ": offsets_E1 is null");
  DT_CHECK(use_grouped_kernel(dt, I, O, ptrs), op,
           ": device row offsets need the bf16 grouped kernel (I, O multiples of 8, 16-byte "
           "aligned pointers), got ",
           dtype_name(dt), " I=", I, " O=", O, "; pass host offsets instead");
}

}  // namespace

void grouped_linear_fwd(DType dt, const void* x_RI, const void* W_EOI,
                        const int64_t* offsets_E1_host, int64_t E, int64_t I, int64_t O,
                        void* y_RO) {
  check_offsets("cuda::grouped_linear_fwd", offsets_E1_host, E, I, O);
  if (!use_grouped_kernel(dt, I, O, {x_RI, W_EOI, y_RO}))
    return grouped_linear_fwd_loop(dt, x_RI, W_EOI, offsets_E1_host, E, I, O, y_RO);
  ScratchBuffer& g = gemm_scratch();
  std::lock_guard<std::mutex> lock(g.mu);
  int64_t* table = static_cast<int64_t*>(g.get(size_t(2 * (E + 1)) * 8));
  launch_grouped<true, true, __nv_bfloat16, false>(fwd_args(x_RI, W_EOI, I, O, y_RO),
                                                   offsets_E1_host, E, table);
}

void grouped_linear_bwd(DType dt, const void* x_RI, const void* W_EOI, const void* dy_RO,
                        const int64_t* offsets_E1_host, int64_t E, int64_t I, int64_t O,
                        void* dx_RI, float* dW_EOI, bool accumulate_dw) {
  check_offsets("cuda::grouped_linear_bwd", offsets_E1_host, E, I, O);
  if (!use_grouped_kernel(dt, I, O, {x_RI, W_EOI, dy_RO, dx_RI, dW_EOI}))
    return grouped_linear_bwd_loop(dt, x_RI, W_EOI, dy_RO, offsets_E1_host, E, I, O, dx_RI, dW_EOI,
                                   accumulate_dw);
  ScratchBuffer& g = gemm_scratch();
  std::lock_guard<std::mutex> lock(g.mu);
  int64_t* tables = static_cast<int64_t*>(g.get(size_t(4 * (E + 1)) * 8));
  if (dx_RI)
    launch_grouped<true, false, __nv_bfloat16, false>(dx_args(W_EOI, dy_RO, I, O, dx_RI),
                                                      offsets_E1_host, E, tables);
  if (dW_EOI && accumulate_dw)
    launch_grouped<false, false, float, true>(dw_args(x_RI, dy_RO, I, O, dW_EOI), offsets_E1_host,
                                              E, tables + 2 * (E + 1));
  else if (dW_EOI)  // overwrite: every expert's tiles, an empty one's with K = 0 (zeros)
    launch_grouped<false, false, float, false>(dw_args(x_RI, dy_RO, I, O, dW_EOI), offsets_E1_host,
                                               E, tables + 2 * (E + 1), true);
}

bool grouped_linear_device_offsets_ok(DType dt, int64_t I, int64_t O) {
  return use_grouped_kernel(dt, I, O, {});
}

void grouped_linear_fwd(DType dt, const void* x_RI, const void* W_EOI, DeviceOffsets off, int64_t E,
                        int64_t I, int64_t O, void* y_RO) {
  check_device_offsets("cuda::grouped_linear_fwd", dt, off, E, I, O, {x_RI, W_EOI, y_RO});
  ScratchBuffer& g = gemm_scratch();
  std::lock_guard<std::mutex> lock(g.mu);
  int64_t* table = static_cast<int64_t*>(g.get(size_t(2 * (E + 1)) * 8));
  launch_grouped_device<true, true, __nv_bfloat16, false>(fwd_args(x_RI, W_EOI, I, O, y_RO), off, E,
                                                          table);
}

void grouped_linear_bwd(DType dt, const void* x_RI, const void* W_EOI, const void* dy_RO,
                        DeviceOffsets off, int64_t E, int64_t I, int64_t O, void* dx_RI,
                        float* dW_EOI, bool accumulate_dw) {
  check_device_offsets("cuda::grouped_linear_bwd", dt, off, E, I, O,
                       {x_RI, W_EOI, dy_RO, dx_RI, dW_EOI});
  ScratchBuffer& g = gemm_scratch();
  std::lock_guard<std::mutex> lock(g.mu);
  int64_t* tables = static_cast<int64_t*>(g.get(size_t(4 * (E + 1)) * 8));
  if (dx_RI)
    launch_grouped_device<true, false, __nv_bfloat16, false>(dx_args(W_EOI, dy_RO, I, O, dx_RI),
                                                             off, E, tables);
  if (dW_EOI && accumulate_dw)
    launch_grouped_device<false, false, float, true>(dw_args(x_RI, dy_RO, I, O, dW_EOI), off, E,
                                                     tables + 2 * (E + 1));
  else if (dW_EOI)  // overwrite: every expert's tiles, an empty one's with K = 0 (zeros)
    launch_grouped_device<false, false, float, false>(dw_args(x_RI, dy_RO, I, O, dW_EOI), off, E,
                                                      tables + 2 * (E + 1), true);
}

}  // namespace deltatron::cuda
