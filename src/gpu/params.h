// The model's parameters on the GPU: fp32 master weights, their compute copies (bf16, or the
// masters themselves in the fp32 debug mode) and fp32 gradients, each one flat buffer.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "gpu/buf.h"
#include "model/weights.h"

namespace deltatron::gpu {

class Params {
 public:
  struct Entry {
    int64_t offset = 0, numel = 0;
    core::Shape shape;
  };
  // Uploads `host` (every tensor, keyed by HF name). dt = compute / activation storage type.
  Params(const model::TensorMap& host, DType dt);

  DType dt() const { return dt_; }
  const std::vector<std::string>& names() const { return names_; }
  const Entry& entry(const std::string& name) const;
  int64_t total() const { return total_; }
  // The out-of-memory hint for the parameter state: its size in GiB with and without the AdamW
  // moments, and what to change when it alone does not fit.
  std::string state_hint() const;

  const void* w(const std::string& name) const;  // compute copy (dt)
  float* g(const std::string& name);             // gradient (fp32)
  float* master(const std::string& name);        // fp32 master
  float* master_flat() { return master_.f32(); }
  float* grad_flat() { return grad_.f32(); }
  void* compute_flat() { return dt_ == DType::f32 ? master_.get() : compute_.get(); }

  void upload(const model::TensorMap& host);          // masters <- host, then sync_compute()
  void download(model::TensorMap& host) const;        // host <- masters (same names/shapes)
  void download_grads(model::TensorMap& host) const;  // host (zeros_like params) <- gradients
  // Named host tensors to / from a flat fp32 device buffer laid out like the parameters (masters,
  // gradients, AdamW moments); `what` names the tensors in the size-mismatch error.
  void to_flat(const model::TensorMap& host, float* flat, const char* what) const;
  void from_flat(const float* flat, model::TensorMap& host, const char* what) const;
  void zero_grads();
  void sync_compute();  // compute copies <- masters (round to bf16)

 private:
  DType dt_;
  std::vector<std::string> names_;
  std::map<std::string, Entry> index_;
  int64_t total_ = 0;
  Buf master_, compute_, grad_;
};

}  // namespace deltatron::gpu
