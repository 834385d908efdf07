// Host float32 tensor: a shape and a contiguous row-major buffer. The CPU engine's only tensor.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"

namespace deltatron::core {

using Shape = std::vector<int64_t>;

inline int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

inline std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

struct Tensor {
  Shape shape;
  std::vector<float> data;

  Tensor() = default;
  explicit Tensor(Shape s)
      : shape(std::move(s)), data(static_cast<size_t>(core::numel(shape)), 0.f) {}

  int64_t numel() const { return static_cast<int64_t>(data.size()); }
  float* ptr() { return data.data(); }
  const float* ptr() const { return data.data(); }
  int64_t dim(size_t i) const { return shape.at(i); }
  void zero() { std::fill(data.begin(), data.end(), 0.f); }
};

}  // namespace deltatron::core
