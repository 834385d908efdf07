// AdamW update, weight-decay grouping and deterministic gradient-norm clipping (optimizer.h).
#include "train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "core/error.h"
#include "core/view.h"
#include "ops/adamw.h"

namespace deltatron::train {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Elementwise loops parallelise only when the tensor is large enough to pay for the threads.
constexpr int64_t kParallelMin = 1 << 15;
// Block length of the gradient-norm sum: fixed, so the summation order is fixed too.
constexpr int64_t kNormBlock = 1 << 16;

// Checks that `m` has exactly the names and shapes of `ref`; names the first difference.
void check_same_layout(const std::map<std::string, core::Shape>& ref, const TensorMap& m,
                       const char* what) {
  for (const auto& [name, shape] : ref) {
    auto it = m.find(name);
    DT_CHECK(it != m.end(), what, ": parameter '", name, "' is missing");
    DT_CHECK(it->second.shape == shape, what, ": parameter '", name, "' has shape ",
             core::shape_str(it->second.shape), ", expected ", core::shape_str(shape));
    DT_CHECK(it->second.numel() == core::numel(shape), what, ": parameter '", name, "' has ",
             it->second.numel(), " values for shape ", core::shape_str(shape));
  }
  if (m.size() != ref.size())
    for (const auto& [name, t] : m)
      DT_CHECK(ref.count(name) != 0, what, ": unexpected parameter '", name,
               "' (not in the optimizer)");
}

}  // namespace

bool default_weight_decay(const std::string& name, const core::Shape& shape,
                          bool decay_embeddings) {
  if (shape.size() <= 1) return false;
  if (ends_with(name, "A_log") || ends_with(name, "dt_bias")) return false;
  if (ends_with(name, "embed_tokens.weight")) return decay_embeddings;
  return true;
}

AdamW::AdamW(const TensorMap& params, AdamWOptions opt) : opt_(std::move(opt)) {
  DT_CHECK(opt_.beta1 >= 0 && opt_.beta1 < 1, "AdamW: beta1 must be in [0, 1), got ", opt_.beta1);
  DT_CHECK(opt_.beta2 >= 0 && opt_.beta2 < 1, "AdamW: beta2 must be in [0, 1), got ", opt_.beta2);
  DT_CHECK(opt_.eps >= 0, "AdamW: eps must be >= 0, got ", opt_.eps);
  DT_CHECK(opt_.weight_decay >= 0, "AdamW: weight_decay must be >= 0, got ", opt_.weight_decay);
  for (const auto& [name, p] : params) {
    shapes_[name] = p.shape;
    decay_[name] = opt_.decay_predicate
                       ? opt_.decay_predicate(name, p.shape)
                       : default_weight_decay(name, p.shape, opt_.decay_embeddings);
  }
}

bool AdamW::decays(const std::string& name) const {
  auto it = decay_.find(name);
  DT_CHECK(it != decay_.end(), "AdamW: no parameter named '", name, "'");
  return it->second;
}

std::vector<std::string> AdamW::names() const {
  std::vector<std::string> out;
  out.reserve(shapes_.size());
  for (const auto& kv : shapes_) out.push_back(kv.first);
  return out;
}

const TensorMap& AdamW::exp_avg() const {
  allocate_moments();
  return m_;
}

const TensorMap& AdamW::exp_avg_sq() const {
  allocate_moments();
  return v_;
}

void AdamW::allocate_moments() const {
  if (moments_allocated_) return;
  for (const auto& [name, shape] : shapes_) {
    m_.emplace(name, core::Tensor(shape));
    v_.emplace(name, core::Tensor(shape));
  }
  moments_allocated_ = true;
}

void AdamW::step(TensorMap& params, const TensorMap& grads, double lr) {
  check_same_layout(shapes_, params, "AdamW step: parameters");
  check_same_layout(shapes_, grads, "AdamW step: gradients");
  DT_CHECK(!opt_.bf16_moments,
           "AdamW step: host tensors keep fp32 moments; bf16 moments are the engine's");
  allocate_moments();
  ++step_;
  // The per-element update is ops::adamw_step_multi's (cpu::adamw_step on host tensors), the
  // formula documented in optimizer.h.
  ops::AdamWArgs args;
  args.lr = lr;
  args.beta1 = opt_.beta1;
  args.beta2 = opt_.beta2;
  args.eps = opt_.eps;
  args.step = step_;
  std::vector<ops::AdamWTensor> tensors;
  tensors.reserve(m_.size());
  for (auto& [name, m] : m_) {
    ops::AdamWTensor t;
    t.master = core::View::of(params.at(name));
    t.m = core::View::of(m);
    t.v = core::View::of(v_.at(name));
    t.grad = core::View::of(grads.at(name));
    t.weight_decay = decay_.at(name) ? opt_.weight_decay : 0.0;
    tensors.push_back(t);
  }
  ops::adamw_step_multi(tensors, args);
}

void AdamW::set_state(int64_t step, TensorMap exp_avg, TensorMap exp_avg_sq) {
  DT_CHECK(step >= 0, "AdamW: step count must be >= 0, got ", step);
  check_same_layout(shapes_, exp_avg, "AdamW state: exp_avg");
  check_same_layout(shapes_, exp_avg_sq, "AdamW state: exp_avg_sq");
  step_ = step;
  m_ = std::move(exp_avg);
  v_ = std::move(exp_avg_sq);
  moments_allocated_ = true;
}

void AdamW::set_step_count(int64_t step) {
  DT_CHECK(step >= 0, "AdamW: step count must be >= 0, got ", step);
  step_ = step;
}

void AdamW::release_host_moments() {
  m_.clear();
  v_.clear();
  moments_allocated_ = false;
}

double grad_norm(const TensorMap& grads) {
  // Blocks (tensor, begin, end) in name order; each summed sequentially in double.
  struct Block {
    const float* x;
    int64_t n;
  };
  std::vector<Block> blocks;
  for (const auto& [name, g] : grads)
    for (int64_t b = 0; b < g.numel(); b += kNormBlock)
      blocks.push_back({g.ptr() + b, std::min(kNormBlock, g.numel() - b)});
  std::vector<double> partial(blocks.size(), 0.0);
  const int64_t nb = static_cast<int64_t>(blocks.size());
#pragma omp parallel for schedule(static) if (nb > 1)
  for (int64_t b = 0; b < nb; ++b) {
    double s = 0;
    for (int64_t i = 0; i < blocks[b].n; ++i) {
      const double x = blocks[b].x[i];
      s += x * x;
    }
    partial[b] = s;
  }
  double total = 0;
  for (double s : partial) total += s;
  return std::sqrt(total);
}

double clip_grad_norm(TensorMap& grads, double max_norm) {
  const double norm = grad_norm(grads);
  if (!std::isfinite(norm) || max_norm <= 0) return norm;
  const double coef = max_norm / (norm + 1e-6);
  if (coef >= 1.0) return norm;
  const float c = static_cast<float>(coef);
  for (auto& [name, g] : grads) {
    float* x = g.ptr();
    const int64_t n = g.numel();
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) x[i] *= c;
  }
  return norm;
}

}  // namespace deltatron::train
