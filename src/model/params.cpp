// The model's parameters on its device (see params.h).
#include "model/params.h"

#include <sstream>

#include "core/error.h"
#include "ops/tensor.h"

namespace deltatron::model {

namespace {
// Every tensor starts on a 256-byte boundary (cuBLASLt picks kernels by alignment).
constexpr int64_t kAlign = 64;
}  // namespace

Params::Params(core::Device dev, core::DType dt, const TensorMap& host) : dev_(dev), dt_(dt) {
  DT_CHECK(dev == core::Device::cuda || dt == core::DType::f32,
           "the CPU computes in float32 only (compute dtype ", core::dtype_name(dt), ")");
  for (const auto& [name, t] : host) {
    names_.push_back(name);
    index_[name] = Entry{total_, t.numel(), t.shape};
    total_ += (t.numel() + kAlign - 1) / kAlign * kAlign;
  }
  core::allocator(dev_).set_oom_hint(state_hint());
  master_ = core::Buffer(dev_, core::DType::f32, {total_}, "fp32 master weights");
  grad_ = core::Buffer(dev_, core::DType::f32, {total_}, "fp32 gradients");
  if (dt_ != core::DType::f32) compute_ = core::Buffer(dev_, dt_, {total_}, "compute copies");
  ops::zero(master_);
  ops::zero(grad_);
  upload(host);
}

std::string Params::state_hint() const {
  // fp32 master + fp32 gradient (+ bf16 copy) + two fp32 AdamW moments when training
  const double gib = double(total_) / double(1ull << 30);
  const double held = dt_ == core::DType::f32 ? 8 : 10, train = held + 8;
  std::ostringstream hint;
  hint.precision(3);
  hint << "the model's " << double(total_) / 1e9 << "B parameters need " << held * gib
       << " GiB on the device for weights and gradients and " << train * gib
       << " GiB with the AdamW moments (fp32 master weights, gradients and moments"
       << (dt_ == core::DType::f32 ? "" : ", bf16 compute copies")
       << "), before any activations: this model does not fit this device; use fewer layers, a "
          "smaller model or a device with more memory";
  return hint.str();
}

const Params::Entry& Params::entry(const std::string& name) const {
  auto it = index_.find(name);
  DT_CHECK(it != index_.end(), "model parameter ", name, " is missing");
  return it->second;
}

core::View Params::at(const core::Buffer& b, const std::string& name) const {
  const Entry& e = entry(name);
  return b.view().slice(e.offset, e.numel).reshaped(e.shape);
}

core::View Params::w(const std::string& name) const {
  return at(dt_ == core::DType::f32 ? master_ : compute_, name);
}
core::View Params::g(const std::string& name) const { return at(grad_, name); }
core::View Params::master(const std::string& name) const { return at(master_, name); }

void Params::to_flat(const TensorMap& host, const core::View& flat, const char* what) const {
  for (const auto& [name, t] : host) {
    const Entry& e = entry(name);
    DT_CHECK(t.numel() == e.numel, what, " ", name, " has ", t.numel(), " elements, expected ",
             e.numel);
    ops::copy_from_host(flat.slice(e.offset, e.numel), t.ptr());
  }
}

void Params::from_flat(const core::View& flat, TensorMap& host, const char* what) const {
  for (auto& [name, t] : host) {
    const Entry& e = entry(name);
    DT_CHECK(t.numel() == e.numel, what, " ", name, " has ", t.numel(), " elements, expected ",
             e.numel);
    ops::copy_to_host(flat.slice(e.offset, e.numel), t.ptr());
  }
}

void Params::upload(const TensorMap& host) {
  to_flat(host, master_, "parameter");
  sync_compute();
}

void Params::download(TensorMap& host) const { from_flat(master_, host, "parameter"); }
void Params::download_grads(TensorMap& host) const { from_flat(grad_, host, "gradient"); }
void Params::zero_grads() { ops::zero(grad_); }

void Params::sync_compute() {
  if (dt_ != core::DType::f32) ops::cast(master_, compute_, total_);
}

}  // namespace deltatron::model
