// Argument checks of the view-based ops: one device per call, allowed dtypes, element counts.
//
// Every view op starts with an `Args` that sees each tensor argument once, then switches on
// `args.device()`. A failed check throws core::Error in one line naming the op and the argument:
//   "ops::linear_fwd: y_NO is bf16 [64] on cpu, expected f32 with 128 elements on cpu"
// The first tensor seen fixes the call's device; a later tensor on another device fails with the
// same sentence, naming the first one:
//   "ops::linear_fwd: y_NO is f32 [128] on cuda, expected f32 with 128 elements on cpu like x_NI
//    (one device per call)"
// The CPU backend computes in float32 only: a bf16 tensor on the CPU fails at once, whatever the
// op's CUDA contract allows ("..., expected f32 with 64 elements on cpu (the CPU backend computes
// in float32 only)").
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/error.h"
#include "core/segments.h"
#include "core/view.h"

namespace deltatron::ops {

using core::View;

// Allowed-dtype sets of the op contracts (an op may also pass its own, e.g. {x.dtype}).
namespace dtypes {
inline constexpr std::initializer_list<core::DType> f32 = {core::DType::f32};
inline constexpr std::initializer_list<core::DType> f64 = {core::DType::f64};
inline constexpr std::initializer_list<core::DType> act = {core::DType::f32, core::DType::bf16};
inline constexpr std::initializer_list<core::DType> i32 = {core::DType::i32};
inline constexpr std::initializer_list<core::DType> i64 = {core::DType::i64};
inline constexpr std::initializer_list<core::DType> u16 = {core::DType::u16};
}  // namespace dtypes

class Args {
 public:
  explicit Args(const char* op) : op_(op) {}

  // A required tensor of exactly n elements of one of `allowed` on the call's device (bf16 only
  // on CUDA). Its data may be null only when n == 0.
  const View& need(const View& v, const char* name, std::initializer_list<core::DType> allowed,
                   int64_t n) {
    check(v, name, allowed, n);
    return v;
  }
  // An optional tensor: an empty view (no data) is skipped; otherwise as `need`. Returns whether
  // it is present.
  bool maybe(const View& v, const char* name, std::initializer_list<core::DType> allowed,
             int64_t n) {
    if (v.empty()) return false;
    check(v, name, allowed, n);
    return true;
  }
  // Stored state (the optimizer's lean moments, masters and remainders): as `need` / `maybe`, but
  // bf16 is allowed on the CPU too, where it is only a storage form (the arithmetic is f32).
  const View& need_stored(const View& v, const char* name,
                          std::initializer_list<core::DType> allowed, int64_t n) {
    check(v, name, allowed, n, true);
    return v;
  }
  bool maybe_stored(const View& v, const char* name, std::initializer_list<core::DType> allowed,
                    int64_t n) {
    if (v.empty()) return false;
    check(v, name, allowed, n, true);
    return true;
  }
  // b has a's dtype (e.g. x and W of a linear layer).
  void same_dtype(const View& a, const char* a_name, const View& b, const char* b_name) const {
    if (a.dtype != b.dtype)
      core::fail("ops::", op_, ": ", b_name, " is ", b.describe(), ", expected ",
                 core::dtype_name(a.dtype), " like ", a_name);
  }
  // A dimension or count argument is >= 0.
  void nonneg(int64_t v, const char* name) const {
    if (v < 0) core::fail("ops::", op_, ": ", name, " = ", v, " is negative");
  }
  // Segment bounds: `cu` the [seg.n + 1] i32 view on the call's device, `seg` the same bounds on
  // the host, which must run from 0 to N without decreasing.
  void segments(const View& cu, core::Segments seg, int64_t N) {
    if (seg.n < 0 || (seg.n > 0 && seg.cu == nullptr))
      core::fail("ops::", op_, ": seg has n = ", seg.n, seg.cu ? "" : " and no bounds");
    need(cu, "cu", dtypes::i32, int64_t(seg.n) + 1);
    if (seg.cu == nullptr) return;  // n == 0: no bounds given
    bool ok = seg.cu[0] == 0 && seg.cu[seg.n] == N;
    for (int s = 0; ok && s < seg.n; ++s) ok = seg.cu[s] <= seg.cu[s + 1];
    if (!ok)
      core::fail("ops::", op_, ": segment bounds must run from 0 to N = ", N,
                 " without decreasing (", seg.n, " segments, last bound ", seg.cu[seg.n], ")");
  }
  // On the CPU: the cu view holds the same bounds as seg.
  void cpu_segments(const View& cu, core::Segments seg) const {
    const int32_t* c = static_cast<const int32_t*>(cu.data);
    if (c == seg.cu || seg.cu == nullptr) return;
    for (int s = 0; s <= seg.n; ++s)
      if (c[s] != seg.cu[s])
        core::fail("ops::", op_, ": cu[", s, "] = ", c[s], " but seg.cu[", s, "] = ", seg.cu[s],
                   " (the two must hold the same bounds)");
  }
  // The device of the call (that of the first tensor seen; cpu when none was given).
  core::Device device() const { return have_device_ ? device_ : core::Device::cpu; }
  // The error of a device without a backend in this build.
  [[noreturn]] void no_cuda() const {
    core::fail("ops::", op_, ": a cuda view, but this binary was built without CUDA");
  }
  [[noreturn]] void bad_device() const { core::fail("ops::", op_, ": unknown device"); }
  const char* op() const { return op_; }

 private:
  void check(const View& v, const char* name, std::initializer_list<core::DType> allowed, int64_t n,
             bool stored = false) {
    if (v.empty() && n == 0) return;  // nothing to read or write
    const core::Device want_dev = have_device_ ? device_ : v.device;
    const bool on_cpu = want_dev == core::Device::cpu && !stored;
    bool dtype_ok = false;
    for (core::DType t : allowed)
      dtype_ok = dtype_ok || (v.dtype == t && !(on_cpu && t == core::DType::bf16));
    const bool ok = dtype_ok && v.device == want_dev && v.numel() == n && (v.data || n == 0);
    if (!ok) {
      std::string types;
      for (core::DType t : allowed) {
        const std::string s = core::dtype_name(t);
        if ((on_cpu && t == core::DType::bf16) ||
            (" " + types + " ").find(" " + s + " ") != std::string::npos)
          continue;
        types += (types.empty() ? "" : " or ") + s;
      }
      const bool other_device = have_device_ && v.device != want_dev;
      const bool bf16_on_cpu = on_cpu && v.dtype == core::DType::bf16;
      core::fail("ops::", op_, ": ", name, " is ",
                 v.data || v.numel() == 0 ? v.describe() : "a null view", ", expected ", types,
                 " with ", n, " elements on ", core::device_name(want_dev),
                 other_device ? " like " + first_ + " (one device per call)" : "",
                 bf16_on_cpu && !other_device ? " (the CPU backend computes in float32 only)" : "");
    }
    if (!have_device_) {
      device_ = v.device;
      first_ = name;
      have_device_ = true;
    }
  }

  const char* op_;
  bool have_device_ = false;
  core::Device device_ = core::Device::cpu;
  std::string first_;  // the name of the tensor that fixed the device
};

}  // namespace deltatron::ops
