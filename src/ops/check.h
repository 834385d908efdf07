// Argument checks of the view-based ops: one device per call, allowed dtypes, element counts.
//
// Every view op starts with an `Args` that sees each tensor argument once, then switches on
// `args.device()`. A failed check throws core::Error in one line naming the op and the argument:
//   "ops::linear_fwd: y_NO is bf16 [64] on cpu, expected f32 with 128 elements on cpu"
// The first tensor seen fixes the call's device; a later tensor on another device fails with the
// same sentence (its expected device is the first one's). `cpu_f32()` then rejects the storage
// types the CPU backend does not compute in (bf16: the CPU is float32 only).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "core/segments.h"
#include "core/view.h"

namespace deltatron::ops {

using core::View;

// Allowed-dtype sets of the op contracts.
namespace dtypes {
inline constexpr std::initializer_list<core::DType> f32 = {core::DType::f32};
inline constexpr std::initializer_list<core::DType> act = {core::DType::f32, core::DType::bf16};
inline constexpr std::initializer_list<core::DType> i32 = {core::DType::i32};
}  // namespace dtypes

class Args {
 public:
  explicit Args(const char* op) : op_(op) {}

  // A required tensor of exactly n elements of one of `allowed` on the call's device. Its data
  // may be null only when n == 0.
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
  // On the CPU every floating-point tensor must be f32.
  void cpu_f32() const {
    for (const Seen& s : seen_)
      if (s.view->dtype == core::DType::bf16)
        core::fail("ops::", op_, ": ", s.name, " is ", s.view->describe(),
                   ", expected f32 on cpu (the CPU backend computes in float32 only)");
  }
  // The error of a device without a backend in this build.
  [[noreturn]] void no_cuda() const {
    core::fail("ops::", op_, ": a cuda view, but this binary was built without CUDA");
  }
  [[noreturn]] void bad_device() const { core::fail("ops::", op_, ": unknown device"); }
  const char* op() const { return op_; }

 private:
  struct Seen {
    const View* view;
    const char* name;
  };

  void check(const View& v, const char* name, std::initializer_list<core::DType> allowed,
             int64_t n) {
    if (v.empty() && n == 0) return;  // nothing to read or write
    const core::Device want_dev = have_device_ ? device_ : v.device;
    bool dtype_ok = false;
    for (core::DType t : allowed) dtype_ok = dtype_ok || v.dtype == t;
    const bool ok = dtype_ok && v.device == want_dev && v.numel() == n && (v.data || n == 0);
    if (!ok) {
      std::string types;
      for (core::DType t : allowed)
        if (want_dev != core::Device::cpu || t != core::DType::bf16)
          types += (types.empty() ? "" : " or ") + std::string(dtype_name(t));
      core::fail("ops::", op_, ": ", name, " is ",
                 v.data || v.numel() == 0 ? v.describe() : "a null view", ", expected ", types,
                 " with ", n, " elements on ", core::device_name(want_dev));
    }
    if (!have_device_) {
      device_ = v.device;
      have_device_ = true;
    }
    seen_.push_back({&v, name});
  }

  const char* op_;
  bool have_device_ = false;
  core::Device device_ = core::Device::cpu;
  std::vector<Seen> seen_;
};

}  // namespace deltatron::ops
