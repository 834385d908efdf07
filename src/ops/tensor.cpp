// Device dispatch for the plain tensor helpers (contracts in ops/tensor.h).
#include "ops/tensor.h"

#include <atomic>
#include <cmath>
#include <cstring>
#include <initializer_list>

#include "core/error.h"
#include "cpu/tensor.h"
#include "ops/check.h"
#ifdef DT_HAVE_CUDA
#include "cuda/adamw.h"
#include "cuda/memory.h"
#include "cuda/pointwise.h"
#endif

namespace deltatron::ops {

namespace {

constexpr std::initializer_list<core::DType> kCopyable = {core::DType::f32, core::DType::bf16,
                                                          core::DType::i32};
// Byte operations take every dtype, bf16 and u16 on the CPU too (stored state, not arithmetic).
constexpr std::initializer_list<core::DType> kAny = {core::DType::f32, core::DType::bf16,
                                                     core::DType::i32, core::DType::f64,
                                                     core::DType::i64, core::DType::u16};

std::atomic<int64_t> g_cpu_host_reads{0};  // copy_to_host calls on CPU views (host_reads)

}  // namespace

void cast(const View& src, const View& dst, int64_t n) {
  Args a("cast");
  a.nonneg(n, "n");
  a.need(src, "src", dtypes::act, n);
  a.need(dst, "dst", dtypes::act, n);
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::cast(src.f32(), dst.f32(), n);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::cast(src.dtype, src.data, dst.dtype, dst.data, n);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void copy_cols(const View& src, int64_t src_ld, int64_t src_col0, const View& dst, int64_t dst_ld,
               int64_t dst_col0, int64_t rows, int64_t cols) {
  Args a("copy_cols");
  a.nonneg(rows, "rows"), a.nonneg(cols, "cols"), a.nonneg(src_col0, "src_col0"),
      a.nonneg(dst_col0, "dst_col0");
  if (src_col0 + cols > src_ld || dst_col0 + cols > dst_ld)
    core::fail("ops::copy_cols: columns [", src_col0, ", ", src_col0 + cols, ") of rows of ",
               src_ld, " into columns [", dst_col0, ", ", dst_col0 + cols, ") of rows of ", dst_ld,
               " do not fit");
  a.need(src, "src", kCopyable, rows * src_ld);
  a.need(dst, "dst", kCopyable, rows * dst_ld);
  a.same_dtype(src, "src", dst, "dst");
  switch (a.device()) {
    case core::Device::cpu:
      if (src.dtype == core::DType::i32)
        return cpu::copy_cols<int32_t>(src.i32(), src_ld, src_col0, dst.i32(), dst_ld, dst_col0,
                                       rows, cols);
      return cpu::copy_cols<float>(src.f32(), src_ld, src_col0, dst.f32(), dst_ld, dst_col0, rows,
                                   cols);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::copy_cols(src.dtype, src.data, src_ld, src_col0, dst.data, dst_ld, dst_col0,
                             rows, cols);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

namespace {
void rows_op(const char* op, bool scatter, const View& src, const View& idx_M, int64_t R, int64_t M,
             int64_t D, const View& dst) {
  Args a(op);
  a.nonneg(R, "R"), a.nonneg(M, "M"), a.nonneg(D, "D");
  a.need(src, "src", dtypes::act, (scatter ? M : R) * D);
  a.need(idx_M, "idx_M", dtypes::i32, M);
  a.need(dst, "dst", dtypes::act, (scatter ? R : M) * D);
  a.same_dtype(src, "src", dst, "dst");
  switch (a.device()) {
    case core::Device::cpu:
      if (scatter) return cpu::scatter_rows(src.f32(), idx_M.i32(), R, M, D, dst.f32());
      return cpu::gather_rows(src.f32(), idx_M.i32(), R, M, D, dst.f32());
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      if (scatter) return cuda::scatter_rows(src.dtype, src.data, idx_M.i32(), R, M, D, dst.data);
      return cuda::gather_rows(src.dtype, src.data, idx_M.i32(), R, M, D, dst.data);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}
}  // namespace

void gather_rows(const View& src, const View& idx_M, int64_t R, int64_t M, int64_t D,
                 const View& dst) {
  rows_op("gather_rows", false, src, idx_M, R, M, D, dst);
}

void scatter_rows(const View& src, const View& idx_M, int64_t R, int64_t M, int64_t D,
                  const View& dst) {
  rows_op("scatter_rows", true, src, idx_M, R, M, D, dst);
}

void fill(const View& x, float value, int64_t n) {
  Args a("fill");
  a.nonneg(n, "n");
  a.need(x, "x", kCopyable, n);
  switch (a.device()) {
    case core::Device::cpu:
      if (x.dtype == core::DType::i32) return cpu::fill<int32_t>(x.i32(), int32_t(value), n);
      return cpu::fill<float>(x.f32(), value, n);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      if (x.dtype == core::DType::i32) return cuda::fill_i32(x.i32(), int32_t(value), n);
      return cuda::fill(x.dtype, x.data, value, n);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void zero(const View& x) {
  if (x.empty()) return;
  Args a("zero");
  a.need_stored(x, "x", kAny, x.numel());
  switch (a.device()) {
    case core::Device::cpu:
      if (x.bytes() > 0) std::memset(x.data, 0, x.bytes());
      return;
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::zero(x.data, x.bytes());
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void add_inplace(const View& y, const View& x, int64_t n) {
  Args a("add_inplace");
  a.nonneg(n, "n");
  a.need(y, "y", dtypes::f32, n);
  a.need(x, "x", dtypes::act, n);
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::add_inplace(y.f32(), x.f32(), n);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::add_inplace_dt(y.f32(), x.dtype, x.data, n);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void dropout(const View& x, const View& y, double p, uint64_t key, int64_t n, const MaskWindow& w) {
  Args a("dropout");
  a.nonneg(n, "n");
  a.need(x, "x", dtypes::act, n);
  a.need(y, "y", dtypes::act, n);
  a.same_dtype(x, "x", y, "y");
  DT_CHECK(p >= 0 && p < 1, "ops::dropout: p = ", p, " is not in [0, 1)");
  DT_CHECK(w.cols == 0 || (w.cols > 0 && n % w.cols == 0 && w.col0 >= 0 && w.col0 + w.cols <= w.ld),
           "ops::dropout: the window of ", w.cols, " columns at ", w.col0, " of ", w.ld,
           " does not fit ", n, " elements");
  const uint32_t keep_below = uint32_t(std::llround((1.0 - p) * double(1u << 24)));
  const float scale = float(1.0 / (1.0 - p));
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::dropout(x.f32(), y.f32(), keep_below, scale, key, n, w.cols, w.ld, w.col0);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::dropout(x.dtype, x.data, y.data, keep_below, scale, key, n, w.cols, w.ld,
                           w.col0);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void axpy(const View& y, const View& x, float alpha, int64_t n) {
  Args a("axpy");
  a.nonneg(n, "n");
  a.need(y, "y", dtypes::act, n);
  a.need(x, "x", dtypes::act, n);
  a.same_dtype(y, "y", x, "x");
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::axpy(y.f32(), x.f32(), alpha, n);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::axpy(y.dtype, y.data, x.data, alpha, n);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

double sum_squares(const View& x, int64_t n) {
  Args a("sum_squares");
  a.nonneg(n, "n");
  a.need(x, "x", dtypes::f32, n);
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::sum_squares(x.f32(), n);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::sum_squares(x.f32(), n);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void sum_squares_to(const View& x, int64_t n, const View& out_1) {
  Args a("sum_squares_to");
  a.nonneg(n, "n");
  a.need(x, "x", dtypes::f32, n);
  a.need(out_1, "out_1", dtypes::f64, 1);
  switch (a.device()) {
    case core::Device::cpu:
      out_1.f64()[0] = cpu::sum_squares(x.f32(), n);
      return;
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::sum_squares_to(x.f32(), n, out_1.f64());
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void copy_from_host(const View& dst, const void* src_host) {
  if (dst.empty()) return;
  Args a("copy_from_host");
  a.need_stored(dst, "dst", kAny, dst.numel());
  if (dst.bytes() > 0 && src_host == nullptr)
    core::fail("ops::copy_from_host: src_host is null for a ", dst.describe(), " destination");
  switch (a.device()) {
    case core::Device::cpu:
      if (dst.bytes() > 0 && dst.data != src_host) std::memcpy(dst.data, src_host, dst.bytes());
      return;
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::copy_from_host(dst.data, src_host, dst.bytes());
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void copy_to_host(const View& src, void* dst_host) {
  if (src.empty()) return;
  Args a("copy_to_host");
  a.need_stored(src, "src", kAny, src.numel());
  if (src.bytes() > 0 && dst_host == nullptr)
    core::fail("ops::copy_to_host: dst_host is null for a ", src.describe(), " source");
  switch (a.device()) {
    case core::Device::cpu:
      g_cpu_host_reads.fetch_add(1);
      if (src.bytes() > 0 && src.data != dst_host) std::memcpy(dst_host, src.data, src.bytes());
      return;
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::copy_to_host(dst_host, src.data, src.bytes());
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

int64_t host_reads(core::Device dev) {
  switch (dev) {
    case core::Device::cpu:
      return g_cpu_host_reads.load();
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::device_to_host_copies();
#else
      core::fail("ops::host_reads: a cuda device, but this binary was built without CUDA");
#endif
  }
  core::fail("ops::host_reads: unknown device");
}

void synchronize(core::Device dev) {
  switch (dev) {
    case core::Device::cpu:
      return;
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::synchronize();
#else
      core::fail("ops::synchronize: a cuda device, but this binary was built without CUDA");
#endif
  }
  core::fail("ops::synchronize: unknown device");
}

}  // namespace deltatron::ops
