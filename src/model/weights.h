// Parameter and gradient lookup by Hugging Face name, with errors that name the tensor.
#pragma once

#include <map>
#include <string>

#include "core/tensor.h"

namespace deltatron::model {

// Parameters (and their gradients) keyed by full HF tensor name, e.g.
// "model.layers.0.linear_attn.A_log". Values are float32 on the host.
using TensorMap = std::map<std::string, core::Tensor>;

inline const core::Tensor& weight(const TensorMap& params, const std::string& name) {
  auto it = params.find(name);
  DT_CHECK(it != params.end(), "model parameter ", name, " is missing");
  return it->second;
}

// Gradient buffer of a parameter; the map must have been filled (zeros_like) beforehand.
inline float* grad(TensorMap& grads, const std::string& name) {
  auto it = grads.find(name);
  DT_CHECK(it != grads.end(), "gradient buffer for ", name, " is missing");
  return it->second.ptr();
}

inline TensorMap zeros_like(const TensorMap& params) {
  TensorMap out;
  for (const auto& [name, t] : params) out.emplace(name, core::Tensor(t.shape));
  return out;
}

}  // namespace deltatron::model
