// Argument checks of the view-based ops: one device per call, each view's dtype and element
// count against the op's dimensions, empty views for the optional arguments. Errors read
// "ops::<op>: <name> is bf16 [64] on cpu, expected f32 with 128 elements on cpu".
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/error.h"
#include "core/view.h"

namespace deltatron::ops::check {

using core::Device;
using core::DType;
using core::View;

struct Arg {
  const char* name;
  const View& view;
};

// The one device of the call's non-empty views (cpu when every view is empty); mixing is an error.
inline Device device_of(const char* op, std::initializer_list<Arg> args) {
  const Arg* first = nullptr;
  for (const Arg& a : args) {
    if (a.view.empty()) continue;
    if (!first) {
      first = &a;
    } else if (a.view.device != first->view.device) {
      core::fail("ops::", op, ": ", a.name, " is on ", core::device_name(a.view.device), " but ",
                 first->name, " is on ", core::device_name(first->view.device),
                 " (all tensors of one call must be on one device)");
    }
  }
  return first ? first->view.device : Device::cpu;
}

// The element types an argument accepts (one or two).
struct Types {
  DType t[2];
  int n;
  Types(DType a) : t{a, a}, n(1) {}  // NOLINT: implicit, so a plain DType reads as one type
  Types(DType a, DType b) : t{a, b}, n(2) {}
  bool has(DType d) const { return t[0] == d || (n == 2 && t[1] == d); }
  std::string str() const {
    return std::string(core::dtype_name(t[0])) + (n == 2 ? " or " : "") +
           (n == 2 ? core::dtype_name(t[1]) : "");
  }
};

// Storage types of token activations: f32 on the CPU; f32 or bf16 on CUDA.
inline Types activation_types(Device dev) {
  return dev == Device::cpu ? Types(DType::f32) : Types(DType::f32, DType::bf16);
}

// `v` holds n elements of one of `types` on `dev`. A required view may be null only when n == 0.
inline void view(const char* op, const char* name, const View& v, Device dev, int64_t n,
                 Types types) {
  if (types.has(v.dtype) && v.device == dev && v.numel() == n && (!v.empty() || n == 0)) return;
  const bool bf16_on_cpu = v.dtype == DType::bf16 && dev == Device::cpu;
  core::fail("ops::", op, ": ", name, " is ", v.empty() && n > 0 ? "an empty view" : v.describe(),
             ", expected ", types.str(), " with ", n, " elements on ", core::device_name(dev),
             bf16_on_cpu ? " (the CPU backend is float32 only)" : "");
}

// An optional argument: empty, or as `view`.
inline void optional(const char* op, const char* name, const View& v, Device dev, int64_t n,
                     Types types) {
  if (!v.empty()) view(op, name, v, dev, n, types);
}

// `b` has the element type of `a` (e.g. x and W of one GEMM).
inline void same_dtype(const char* op, const char* a_name, const View& a, const char* b_name,
                       const View& b) {
  DT_CHECK(a.dtype == b.dtype, "ops::", op, ": ", b_name, " is ", core::dtype_name(b.dtype),
           " but ", a_name, " is ", core::dtype_name(a.dtype),
           " (they must have one element type)");
}

// Non-negative dimensions.
inline void dims(const char* op, std::initializer_list<int64_t> ds) {
  for (int64_t d : ds) DT_CHECK(d >= 0, "ops::", op, ": negative dimension ", d);
}

}  // namespace deltatron::ops::check
