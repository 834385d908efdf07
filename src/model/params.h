// The model's parameters on its device: fp32 master weights, their compute copies (bf16 on CUDA,
// or the masters themselves when the compute dtype is f32, always so on the CPU) and fp32
// gradients, each one flat buffer; tensors are addressed by HF name.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "model/weights.h"

namespace deltatron::model {

class Params {
 public:
  struct Entry {
    int64_t offset = 0, numel = 0;
    core::Shape shape;
  };
  // Copies `host` (every tensor, keyed by HF name) to `dev`. dt = compute / activation storage
  // type (f32 on the CPU).
  Params(core::Device dev, core::DType dt, const TensorMap& host);

  core::Device device() const { return dev_; }
  core::DType dt() const { return dt_; }
  const std::vector<std::string>& names() const { return names_; }
  const Entry& entry(const std::string& name) const;
  bool has(const std::string& name) const { return index_.count(name) != 0; }
  int64_t total() const { return total_; }
  // The out-of-memory hint for the parameter state: its size in GiB with and without the AdamW
  // moments, and what to change when it alone does not fit.
  std::string state_hint() const;

  core::View w(const std::string& name) const;       // compute copy (dt)
  core::View g(const std::string& name) const;       // gradient (f32)
  core::View master(const std::string& name) const;  // f32 master
  const core::View& master_flat() const { return master_.view(); }
  const core::View& grad_flat() const { return grad_.view(); }
  const core::View& compute_flat() const {
    return dt_ == core::DType::f32 ? master_.view() : compute_.view();
  }

  void upload(const TensorMap& host);          // masters <- host, then sync_compute()
  void download(TensorMap& host) const;        // host <- masters (same names/shapes)
  void download_grads(TensorMap& host) const;  // host (zeros_like params) <- gradients
  // Named host tensors to / from a flat f32 buffer laid out like the parameters (masters,
  // gradients, AdamW moments); `what` names the tensors in the size-mismatch error.
  void to_flat(const TensorMap& host, const core::View& flat, const char* what) const;
  void from_flat(const core::View& flat, TensorMap& host, const char* what) const;
  void zero_grads();
  void sync_compute();  // compute copies <- masters (rounded to bf16)

 private:
  core::View at(const core::Buffer& b, const std::string& name) const;
  core::Device dev_;
  core::DType dt_;
  std::vector<std::string> names_;
  std::map<std::string, Entry> index_;
  int64_t total_ = 0;
  core::Buffer master_, compute_, grad_;
};

}  // namespace deltatron::model
