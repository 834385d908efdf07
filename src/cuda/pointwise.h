// CUDA elementwise ops (SwiGLU, sigmoid gate, GDN gates, RoPE; the vision tower's GELU, bias,
// 2-D RoPE and row moves in pointwise_vision.cu) and plain tensor helpers (cast,
// add, column-block copy, fill, deterministic column sums). Contracts: ops/activation.h,
// ops/gdn_gates.h, ops/rope.h, here with storage types (cuda/dtype.h) and device pointers.
//
// Shape suffixes: N tokens, G value heads, H heads, K head dim; n a flat element count.
// `void*` tensors are stored in the DType named beside them (f32 or bf16); float* tensors are
// fp32; all pointers are device memory; everything computes in fp32. Work is queued on the
// legacy default stream, asynchronous to the host. Elementwise kernels use 16-byte accesses when
// every pointer is 16-byte aligned, a scalar path otherwise. Results are bitwise deterministic.
#pragma once

#include <cstdint>

#include "cuda/dtype.h"

namespace deltatron::cuda {

// ---- activations (ops/activation.h) --------------------------------------------------------

// h = silu(gate) * up.  gate, up [n] dt in;  h [n] dt out overwritten.
void swiglu_fwd(DType dt, const void* gate, const void* up, int64_t n, void* h);

// dgate = dh up silu'(gate), dup = dh silu(gate).  gate, up, dh [n] dt in;
// dgate, dup [n] dt out OVERWRITTEN (dh may alias either one); h [n] dt out or nullptr:
// silu(gate) up, bitwise swiglu_fwd's (the recomputation fused into the backward).
void swiglu_bwd(DType dt, const void* gate, const void* up, const void* dh, int64_t n, void* dgate,
                void* dup, void* h = nullptr);

// out = a * sigmoid(g).  a, g [n] dt in;  out [n] dt out overwritten.
void sigmoid_mul_fwd(DType dt, const void* a, const void* g, int64_t n, void* out);

// da = dout s, dg = dout a s (1 - s), s = sigmoid(g).  a, g, dout [n] dt in;
// da, dg [n] dt out OVERWRITTEN (dout may alias either one).
void sigmoid_mul_bwd(DType dt, const void* a, const void* g, const void* dout, int64_t n, void* da,
                     void* dg);

// ---- GDN gates (ops/gdn_gates.h) -----------------------------------------------------------

// beta = sigmoid(b);  g = -exp(A_log) softplus(a + dt_bias)  (softplus threshold 20).
//   b_NG, a_NG [N, G] dt in;  A_log_G, dt_bias_G [G] dt in (compute copies of the parameters)
//   beta_NG, g_NG [N, G] fp32 out overwritten. Saved for backward: the inputs.
void gdn_gates_fwd(DType dt, const void* b_NG, const void* a_NG, const void* A_log_G,
                   const void* dt_bias_G, int64_t N, int64_t G, float* beta_NG, float* g_NG);

// With u = a + dt_bias, s = sigmoid:
//   db = dbeta s(b) (1 - s(b));  da = -dg exp(A_log) softplus'(u)     [N, G] dt out OVERWRITTEN
//   dA_log[h] += sum_n dg g;  ddt_bias[h] += sum_n da (the fp32 values) [G] fp32 inout ACCUMULATED
//   dbeta_NG, dg_NG [N, G] fp32 in. Head sums: per-block partials (a workspace owned by this
//   file, grown on the first calls, which synchronizes the device once), then a fixed-order sum.
void gdn_gates_bwd(DType dt, const void* b_NG, const void* a_NG, const void* A_log_G,
                   const void* dt_bias_G, const float* dbeta_NG, const float* dg_NG, int64_t N,
                   int64_t G, void* db_NG, void* da_NG, float* dA_log_G, float* ddt_bias_G);

// ---- RoPE (ops/rope.h) ---------------------------------------------------------------------

// Partial interleaved-MRoPE rotary embedding, IN PLACE on x_NHK [N, H, K] (dt); same formulas as
// ops::rope_fwd: inv_freq_j = 1.0f / powf(float(theta), float(2j) / float(R)) (computed on the
// host exactly as the CPU op), angle = float(pos) * inv_freq_j in fp32, cos/sin of that fp32
// angle (evaluated in double, rounded to fp32), rotate-half inside the first R dims.
//   pos_3N [3, N] int32 device in (rows T, H, W);  R even, R <= K, R <= 512
//   mrope_section[3] host array (e.g. {11, 11, 10}).
void rope_fwd(DType dt, void* x_NHK, const int32_t* pos_3N, int64_t N, int64_t H, int64_t K,
              int64_t R, double theta, const int mrope_section[3]);

// Transpose of rope_fwd (rotation by -angle), IN PLACE on dx_NHK [N, H, K] (dt).
void rope_bwd(DType dt, void* dx_NHK, const int32_t* pos_3N, int64_t N, int64_t H, int64_t K,
              int64_t R, double theta, const int mrope_section[3]);

// ---- vision tower (pointwise_vision.cu) ----------------------------------------------------

// GELU (ops::gelu_fwd): exact (tanh_approx false) y = 0.5 x (1 + erf(x / sqrt 2)), or the tanh
// form y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).  x, y [n] dt; y may alias x.
void gelu_fwd(DType dt, const void* x, int64_t n, void* y, bool tanh_approx);
// dx = dy gelu'(x) (ops::gelu_bwd).  x, dy [n] dt in;  dx [n] dt out OVERWRITTEN (may alias dy).
void gelu_bwd(DType dt, const void* x, const void* dy, int64_t n, void* dx, bool tanh_approx);

// y[r, o] += b[o] (ops::bias_add).  y_NO [N, O] yt inout;  b_O [O] bt in (yt and bt may differ:
// an fp32 residual stream plus a bf16 bias).
void bias_add(DType yt, void* y_NO, DType bt, const void* b_O, int64_t N, int64_t O);
// db[o] += sum_n dy[n, o] (ops::bias_bwd), deterministic: per-part column sums over fixed row
// ranges, then col_sum_add in part order.  dy_NO [N, O] dt in;  db_O [O] fp32 inout ACCUMULATED.
void bias_bwd(DType dt, const void* dy_NO, int64_t N, int64_t O, float* db_O);

// 2-D rotary embedding of the vision tower (ops::rope_vision_fwd), IN PLACE on x_NHK [N, H, K]
// (dt), K % 4 == 0, K <= 256; pos_2N [2, N] int32 device (rows, then columns). sign = +1 forward,
// -1 backward (the transpose rotation). inv_j = theta^(-4j/K) in double on the host; angles,
// cos and sin in double on the device (as the CPU), rounded to fp32; the rotation in fp32.
void rope_vision(DType dt, void* x_NHK, const int32_t* pos_2N, int64_t N, int64_t H, int64_t K,
                 double theta, int sign);

// Row moves by index (ops::gather_rows / scatter_rows), src and dst of one dtype dt:
//   gather:  dst[m, :] = src[idx[m], :]   src [R, D], dst [M, D] (overwritten)
//   scatter: dst[idx[m], :] = src[m, :]   src [M, D], dst [R, D] (other rows kept; idx distinct)
// idx_M [M] int32 device: the indices stay on the device, so the caller validates them (the model
// builds them on the host); an index outside [0, R) is never dereferenced (gather writes a zero
// row, scatter skips it).
void gather_rows(DType dt, const void* src, const int32_t* idx_M, int64_t R, int64_t M, int64_t D,
                 void* dst);
void scatter_rows(DType dt, const void* src, const int32_t* idx_M, int64_t R, int64_t M, int64_t D,
                  void* dst);

// ---- plain helpers -------------------------------------------------------------------------

// dst = src converted (fp32 -> bf16 rounds to nearest even); from == to copies. [n] each.
void cast(DType from, const void* src, DType to, void* dst, int64_t n);

// y += x, fp32, [n] each.
void add_inplace(float* y, const float* x, int64_t n);

// y (fp32) += x (stored as xt), [n] each.
void add_inplace_dt(float* y, DType xt, const void* x, int64_t n);
// y[i] = round_dt(y[i] + alpha * x[i]) in f32 arithmetic; y and x of one dtype dt.
void axpy(DType dt, void* y, const void* x, float alpha, int64_t n);
// Dropout with a counter-based mask, as cpu::dropout (its window: cols, ld, col0); x, y of dtype
// dt (y may be x).
void dropout(DType dt, const void* x, void* y, uint32_t keep_below, float scale, uint64_t key,
             int64_t n, int64_t cols, int64_t ld, int64_t col0);

// dst[r, dst_col0 + c] = src[r, src_col0 + c] for r < rows, c < cols (row-major, leading
// dimensions src_ld / dst_ld in elements): splits and concatenates column blocks. No overlap.
void copy_cols(DType dt, const void* src, int64_t src_ld, int64_t src_col0, void* dst,
               int64_t dst_ld, int64_t dst_col0, int64_t rows, int64_t cols);

// x[i] = value (rounded to dt), [n].
void fill(DType dt, void* x, float value, int64_t n);

// y_C[c] += sum_r x_RC[r, c], summed in increasing r in a fixed tree (deterministic, no
// atomics): the second pass of the per-block partial sums of weight gradients. fp32.
void col_sum_add(const float* x_RC, int64_t rows, int64_t cols, float* y_C);

}  // namespace deltatron::cuda
