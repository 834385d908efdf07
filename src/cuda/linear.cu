// CUDA linear layer through cuBLASLt, with matmul plans cached by shape and dtype (see linear.h).
//
// cuBLASLt is column-major; a row-major [R, C] matrix is a column-major [C, R] one with ld = C.
// Each row-major product therefore becomes a column-major one with the operands swapped:
//   fwd: y[N,O] = x W^T      col-major  y'[O,N] = op_T(W'[I,O]) . x'[I,N]      m=O n=N k=I
//   dx:  dx[N,I] = dy W      col-major dx'[I,N] = W'[I,O] . dy'[O,N]           m=I n=N k=O
//   dW:  dW[O,I] += dy^T x   col-major dW'[I,O] = x'[I,N] . op_T(dy'[O,N])     m=I n=O k=N
// (X' is the column-major view of row-major X). beta = 0 overwrites, beta = 1 accumulates.
// A plan (descriptors + an algorithm) depends on the shapes, transposes, dtype, beta and the
// pointers' alignment, so all of these form the cache key.
//
// The token count changes with nearly every pack, so a training run meets new shapes for a while
// and each costs one heuristic query on the host (one per plan: linear_plan_count). Measured on
// an H100 (docs/perf.md), sharing one query's algorithm between token counts of a size class
// halved the bench's queries but ran 1.2% slower than each shape's own answer: plans stay exact.
#include <cublasLt.h>

#include <chrono>
#include <map>
#include <mutex>
#include <tuple>

#include "core/error.h"
#include "cuda/device.h"
#include "cuda/linear.h"

#define DT_CUBLAS_CHECK(call)                                                   \
  do {                                                                          \
    cublasStatus_t dt_st_ = (call);                                             \
    if (dt_st_ != CUBLAS_STATUS_SUCCESS)                                        \
      ::deltatron::core::fail(__FILE__, ":", __LINE__, ": ", #call,             \
                              " failed: ", cublasLtGetStatusName(dt_st_), " (", \
                              cublasLtGetStatusString(dt_st_), ")");            \
  } while (0)

namespace deltatron::cuda {

namespace {

// 32 MiB: NVIDIA's recommended cuBLASLt workspace on Hopper.
constexpr size_t kWorkspaceBytes = size_t(32) << 20;

struct PlanKey {
  int64_t m, n, k, lda, ldb, ldc;
  bool ta, tb, accumulate;
  DType in, out;
  int align_a, align_b, align_c;
  auto tie() const {
    return std::tie(m, n, k, lda, ldb, ldc, ta, tb, accumulate, in, out, align_a, align_b, align_c);
  }
  bool operator<(const PlanKey& o) const { return tie() < o.tie(); }
};

// The descriptors of one product's shapes (its operation and the A, B, C layouts).
struct Layouts {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  void destroy() {
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (op) cublasLtMatmulDescDestroy(op);
    *this = Layouts{};
  }
};

// A cached plan: an exact shape's descriptors and the algorithm it runs.
struct Plan {
  Layouts l;
  cublasLtMatmulAlgo_t algo{};
};

// Process-wide handle, workspace and plan cache (exact keys); plans live until exit.
struct Context {
  std::mutex mu;
  cublasLtHandle_t handle = nullptr;
  DeviceBuffer workspace;
  std::map<PlanKey, Plan> plans;
  LinearPlanTime time;  // host time of new plans (linear_plan_time)
};

Context& context() {
  static Context* ctx = new Context();  // leaked on purpose: no teardown order issues at exit
  return *ctx;
}

// Largest power of two (<= 256) dividing the address: cuBLASLt picks kernels by alignment.
int alignment(const void* p) {
  auto v = reinterpret_cast<uintptr_t>(p);
  int a = 256;
  while (a > 1 && v % a != 0) a /= 2;
  return a;
}

cudaDataType_t cuda_type(DType t) { return t == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F; }

Layouts make_layouts(const PlanKey& key) {
  Layouts l;
  DT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&l.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t ta = key.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasOperation_t tb = key.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  DT_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(l.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  DT_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(l.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  // Stored (not op-applied) shapes: A is m x k (k x m when transposed), B is k x n (n x k).
  const uint64_t a_rows = key.ta ? key.k : key.m, a_cols = key.ta ? key.m : key.k;
  const uint64_t b_rows = key.tb ? key.n : key.k, b_cols = key.tb ? key.k : key.n;
  DT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l.a, cuda_type(key.in), a_rows, a_cols, key.lda));
  DT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l.b, cuda_type(key.in), b_rows, b_cols, key.ldb));
  DT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l.c, cuda_type(key.out), key.m, key.n, key.ldc));
  return l;
}

// The plan for key's shapes: its descriptors and cuBLASLt's heuristic answer, or a one-line error
// naming the shape.
Plan make_plan(Context& ctx, const PlanKey& key) {
  Plan p{make_layouts(key), {}};
  const Layouts& l = p.l;
  cublasLtMatmulPreference_t pref = nullptr;
  DT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  size_t ws = kWorkspaceBytes;
  uint32_t al_a = key.align_a, al_b = key.align_b, al_c = key.align_c;
  DT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  DT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a)));
  DT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b)));
  DT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof(al_c)));
  DT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof(al_c)));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(ctx.handle, l.op, l.a, l.b, l.c, l.c, pref, 1,
                                                     &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
    p.l.destroy();
    core::fail("cuBLASLt has no algorithm for m=", key.m, " n=", key.n, " k=", key.k, " in ",
               dtype_name(key.in), " out ", dtype_name(key.out), " (", cublasLtGetStatusName(st),
               ")");
  }
  p.algo = result.algo;
  return p;
}

// C (m x n, ld = m) = beta * C + alpha op(A) op(B), column-major; see the table at the top.
// alpha is a host scalar of the call, not part of the plan.
void matmul(DType in, bool ta, bool tb, int64_t m, int64_t n, int64_t k, const void* A, int64_t lda,
            const void* B, int64_t ldb, bool accumulate, DType out, void* C, float alpha) {
  Context& ctx = context();
  std::lock_guard<std::mutex> lock(ctx.mu);
  if (!ctx.handle) {
    DT_CUBLAS_CHECK(cublasLtCreate(&ctx.handle));
    ctx.workspace = DeviceBuffer(kWorkspaceBytes, "cuBLASLt workspace");
  }
  PlanKey key{m,          n,  k,   lda,          ldb,          m,           ta, tb,
              accumulate, in, out, alignment(A), alignment(B), alignment(C)};
  // A new plan's host cost is timed: its search, and its first (possibly module-loading) call.
  using Clock = std::chrono::steady_clock;
  auto it = ctx.plans.find(key);
  const bool fresh = it == ctx.plans.end();
  Clock::time_point t1;
  if (fresh) {
    const auto t0 = Clock::now();
    it = ctx.plans.emplace(key, make_plan(ctx, key)).first;
    t1 = Clock::now();
    ctx.time.search_s += std::chrono::duration<double>(t1 - t0).count();
  }
  const Plan& p = it->second;
  const float beta = accumulate ? 1.0f : 0.0f;
  const Layouts& l = p.l;
  DT_CUBLAS_CHECK(cublasLtMatmul(ctx.handle, l.op, &alpha, A, l.a, B, l.b, &beta, C, l.c, C, l.c,
                                 &p.algo, ctx.workspace.get(), kWorkspaceBytes, 0));
  if (fresh) ctx.time.first_call_s += std::chrono::duration<double>(Clock::now() - t1).count();
}

void check_dims(const char* op, int64_t N, int64_t I, int64_t O) {
  DT_CHECK(N >= 0 && I >= 0 && O >= 0, op, ": negative shape N=", N, " I=", I, " O=", O);
}

}  // namespace

void linear_fwd(DType in, const void* x_NI, const void* W_OI, int64_t N, int64_t I, int64_t O,
                DType out, void* y_NO, bool accumulate, float alpha) {
  check_dims("cuda::linear_fwd", N, I, O);
  check_device_ptr("cuda::linear_fwd", "x_NI", x_NI);
  check_device_ptr("cuda::linear_fwd", "W_OI", W_OI);
  check_device_ptr("cuda::linear_fwd", "y_NO", y_NO);
  if (N == 0 || O == 0) return;
  if (I == 0) {
    if (!accumulate) DT_CUDA_CHECK(cudaMemsetAsync(y_NO, 0, size_t(N * O) * dtype_size(out), 0));
    return;
  }
  matmul(in, true, false, O, N, I, W_OI, I, x_NI, I, accumulate, out, y_NO, alpha);
}

void linear_bwd_dx(DType in, const void* dy_NO, const void* W_OI, int64_t N, int64_t I, int64_t O,
                   DType out, void* dx_NI, bool accumulate, float alpha) {
  check_dims("cuda::linear_bwd_dx", N, I, O);
  check_device_ptr("cuda::linear_bwd_dx", "dy_NO", dy_NO);
  check_device_ptr("cuda::linear_bwd_dx", "W_OI", W_OI);
  check_device_ptr("cuda::linear_bwd_dx", "dx_NI", dx_NI);
  if (!dx_NI || N == 0 || I == 0) return;
  if (O > 0)
    matmul(in, false, false, I, N, O, W_OI, I, dy_NO, O, accumulate, out, dx_NI, alpha);
  else if (!accumulate)
    DT_CUDA_CHECK(cudaMemsetAsync(dx_NI, 0, size_t(N * I) * dtype_size(out), 0));
}

void linear_bwd_dw(DType in, const void* x_NI, const void* dy_NO, int64_t N, int64_t I, int64_t O,
                   float* dW_OI, float alpha, bool accumulate) {
  check_dims("cuda::linear_bwd_dw", N, I, O);
  check_device_ptr("cuda::linear_bwd_dw", "x_NI", x_NI);
  check_device_ptr("cuda::linear_bwd_dw", "dy_NO", dy_NO);
  check_device_ptr("cuda::linear_bwd_dw", "dW_OI", dW_OI);
  if (!dW_OI || O == 0 || I == 0) return;
  if (N > 0)
    matmul(in, false, true, I, O, N, x_NI, I, dy_NO, O, accumulate, DType::f32, dW_OI, alpha);
  else if (!accumulate)
    DT_CUDA_CHECK(cudaMemsetAsync(dW_OI, 0, size_t(O * I) * sizeof(float), 0));
}

void linear_fwd(DType in, const void* x_NI, const void* W_OI, int64_t N, int64_t I, int64_t O,
                float* y_NO) {
  linear_fwd(in, x_NI, W_OI, N, I, O, DType::f32, y_NO, false);
}

void linear_bwd(DType in, const void* x_NI, const void* W_OI, const void* dy_NO, int64_t N,
                int64_t I, int64_t O, float* dx_NI, bool accumulate_dx, float* dW_OI) {
  check_device_ptr("cuda::linear_bwd", "W_OI", W_OI);
  linear_bwd_dx(in, dy_NO, W_OI, N, I, O, DType::f32, dx_NI, accumulate_dx);
  linear_bwd_dw(in, x_NI, dy_NO, N, I, O, dW_OI);
}

int64_t linear_plan_count() {
  Context& ctx = context();
  std::lock_guard<std::mutex> lock(ctx.mu);
  return int64_t(ctx.plans.size());
}

LinearPlanTime linear_plan_time() {
  Context& ctx = context();
  std::lock_guard<std::mutex> lock(ctx.mu);
  return ctx.time;
}

}  // namespace deltatron::cuda
