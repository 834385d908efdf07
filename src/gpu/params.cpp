// The model's parameters on the GPU (see params.h).
#include "gpu/params.h"

#include <cuda_runtime_api.h>

#include <sstream>

#include "core/error.h"
#include "cuda/device.h"
#include "cuda/pointwise.h"

namespace deltatron::gpu {

namespace {
// Every tensor starts on a 256-byte boundary (cuBLASLt picks kernels by alignment).
constexpr int64_t kAlign = 64;
}  // namespace

Params::Params(const model::TensorMap& host, DType dt) : dt_(dt) {
  for (const auto& [name, t] : host) {
    names_.push_back(name);
    index_[name] = Entry{total_, t.numel(), t.shape};
    total_ += (t.numel() + kAlign - 1) / kAlign * kAlign;
  }
  set_oom_hint(state_hint());
  master_ = Buf(total_, DType::f32, "fp32 master weights");
  grad_ = Buf(total_, DType::f32, "fp32 gradients");
  if (dt_ != DType::f32) compute_ = Buf(total_, dt_, "compute copies of the weights");
  master_.zero();
  grad_.zero();
  upload(host);
}

std::string Params::state_hint() const {
  // fp32 master + fp32 gradient (+ bf16 copy) + two fp32 AdamW moments when training
  const double gib = double(total_) / double(1ull << 30);
  const double held = dt_ == DType::f32 ? 8 : 10, train = held + 8;
  std::ostringstream hint;
  hint.precision(3);
  hint << "the model's " << double(total_) / 1e9 << "B parameters need " << held * gib
       << " GiB on the device for weights and gradients and " << train * gib
       << " GiB with the AdamW moments (fp32 master weights, gradients and moments"
       << (dt_ == DType::f32 ? "" : ", bf16 compute copies")
       << "), before any activations: this model does not fit this GPU; use fewer layers, a "
          "smaller model or a GPU with more memory";
  return hint.str();
}

const Params::Entry& Params::entry(const std::string& name) const {
  auto it = index_.find(name);
  DT_CHECK(it != index_.end(), "model parameter ", name, " is missing");
  return it->second;
}

const void* Params::w(const std::string& name) const {
  const Entry& e = entry(name);
  const Buf& b = dt_ == DType::f32 ? master_ : compute_;
  return b.at(e.offset);
}

float* Params::g(const std::string& name) { return grad_.f32() + entry(name).offset; }
float* Params::master(const std::string& name) { return master_.f32() + entry(name).offset; }

void Params::to_flat(const model::TensorMap& host, float* flat, const char* what) const {
  for (const auto& [name, t] : host) {
    const Entry& e = entry(name);
    DT_CHECK(t.numel() == e.numel, what, " ", name, " has ", t.numel(), " elements, expected ",
             e.numel);
    DT_CUDA_CHECK(
        cudaMemcpy(flat + e.offset, t.ptr(), size_t(e.numel) * 4, cudaMemcpyHostToDevice));
  }
}

void Params::from_flat(const float* flat, model::TensorMap& host, const char* what) const {
  for (auto& [name, t] : host) {
    const Entry& e = entry(name);
    DT_CHECK(t.numel() == e.numel, what, " ", name, " has ", t.numel(), " elements, expected ",
             e.numel);
    DT_CUDA_CHECK(
        cudaMemcpy(t.ptr(), flat + e.offset, size_t(e.numel) * 4, cudaMemcpyDeviceToHost));
  }
}

void Params::upload(const model::TensorMap& host) {
  to_flat(host, master_.f32(), "parameter");
  sync_compute();
}

void Params::download(model::TensorMap& host) const { from_flat(master_.f32(), host, "parameter"); }

void Params::download_grads(model::TensorMap& host) const {
  from_flat(grad_.f32(), host, "gradient");
}

void Params::zero_grads() { grad_.zero(); }

void Params::sync_compute() {
  if (dt_ != DType::f32) cuda::cast(DType::f32, master_.get(), dt_, compute_.get(), total_);
}

}  // namespace deltatron::gpu
