// A non-owning view of a tensor on some device: data pointer, element type, device and shape
// (contiguous, row-major). Op contracts take views; the checked accessors and `expect` turn a
// wrong dtype, device or shape into an error naming the op and the tensor.
#pragma once

#include <cstdint>
#include <string>

#include "core/device.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"

namespace deltatron::core {

inline const char* device_name(Device d) { return d == Device::cuda ? "cuda" : "cpu"; }

struct View {
  void* data = nullptr;
  DType dtype = DType::f32;
  Device device = Device::cpu;
  Shape shape;

  View() = default;
  View(void* p, DType t, Device d, Shape s) : data(p), dtype(t), device(d), shape(std::move(s)) {}
  // A host float32 tensor (the CPU engine's core::Tensor).
  static View of(Tensor& t) { return View(t.ptr(), DType::f32, Device::cpu, t.shape); }
  static View of(const Tensor& t) {
    return View(const_cast<float*>(t.ptr()), DType::f32, Device::cpu, t.shape);
  }

  int64_t numel() const { return core::numel(shape); }
  size_t bytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  int64_t rank() const { return static_cast<int64_t>(shape.size()); }
  int64_t dim(int64_t i) const {
    DT_CHECK(i >= 0 && i < rank(), "dimension ", i, " of a rank-", rank(), " view");
    return shape[static_cast<size_t>(i)];
  }
  std::string describe() const {
    return std::string(dtype_name(dtype)) + " " + shape_str(shape) + " on " + device_name(device);
  }

  // Typed pointers; a view of another element type is an error.
  float* f32() const { return static_cast<float*>(typed(DType::f32)); }
  int32_t* i32() const { return static_cast<int32_t*>(typed(DType::i32)); }
  uint16_t* bf16() const { return static_cast<uint16_t*>(typed(DType::bf16)); }
  double* f64() const { return static_cast<double*>(typed(DType::f64)); }
  int64_t* i64() const { return static_cast<int64_t*>(typed(DType::i64)); }
  uint16_t* u16() const { return static_cast<uint16_t*>(typed(DType::u16)); }
  // An absent optional argument of an op (the contract's "may be empty").
  bool empty() const { return data == nullptr; }

  // Rows [begin, end) of the first dimension (a contiguous sub-view).
  View rows(int64_t begin, int64_t end) const {
    DT_CHECK(rank() >= 1 && 0 <= begin && begin <= end && end <= shape[0], "rows [", begin, ", ",
             end, ") of a view of shape ", shape_str(shape));
    Shape s = shape;
    s[0] = end - begin;
    const size_t row = static_cast<size_t>(numel() / std::max<int64_t>(shape[0], 1));
    return View(static_cast<char*>(data) + begin * row * dtype_size(dtype), dtype, device, s);
  }
  // Elements [offset, offset + n) of a contiguous view, as a flat view of n elements.
  View slice(int64_t offset, int64_t n) const {
    DT_CHECK(0 <= offset && 0 <= n && offset + n <= numel(), "elements [", offset, ", ", offset + n,
             ") of a view of ", numel(), " elements");
    return View(static_cast<char*>(data) + size_t(offset) * dtype_size(dtype), dtype, device, {n});
  }
  // The same elements with another shape of the same element count.
  View reshaped(Shape s) const {
    DT_CHECK(core::numel(s) == numel(), "cannot view ", shape_str(shape), " as ", shape_str(s));
    return View(data, dtype, device, std::move(s));
  }

 private:
  void* typed(DType want) const {
    DT_CHECK(dtype == want, "a ", describe(), " view used as ", dtype_name(want));
    return data;
  }
};

// An op's check of one argument: "<op>: <name> is <dtype [shape] on device>, expected ...".
inline void expect(const View& v, DType dtype, Device device, const Shape& shape, const char* op,
                   const char* name) {
  if (v.dtype == dtype && v.device == device && v.shape == shape && (v.data || v.numel() == 0))
    return;
  fail(op, ": ", name, " is ", v.data || v.numel() == 0 ? v.describe() : "a null view",
       ", expected ", dtype_name(dtype), " ", shape_str(shape), " on ", device_name(device));
}

}  // namespace deltatron::core
