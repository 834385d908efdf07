// The model's parameters on its device (see params.h).
#include "model/params.h"

#include <algorithm>
#include <sstream>

#include "core/bf16.h"
#include "core/error.h"
#include "ops/tensor.h"

namespace deltatron::model {

namespace {
// Every tensor starts on a 256-byte boundary (cuBLASLt picks kernels by alignment).
constexpr int64_t kAlign = 64;
int64_t aligned(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
}  // namespace

std::string master_name(const StateOptions& o) { return o.master_remainder ? "remainder" : "fp32"; }
std::string moments_name(const StateOptions& o) {
  return o.moments == core::DType::bf16 ? "bf16" : "fp32";
}
std::string offload_name(const StateOptions& o) {
  return o.offload_master ? "master+moments" : o.offload_moments ? "moments" : "none";
}
ops::AdamWOffload adamw_offload(const StateOptions& o) {
  ops::AdamWOffload off;
  off.moments = o.offload_moments;
  off.master = o.offload_master;
  return off;
}

StateOptions parse_state_options(const std::string& master, const std::string& moments,
                                 const std::string& offload, const std::string& where) {
  DT_CHECK(
      master == "fp32" || master == "remainder", where,
      ": training.master must be fp32 or remainder (the bf16 weight + 16-bit remainder), got '",
      master, "'");
  DT_CHECK(moments == "fp32" || moments == "bf16", where,
           ": training.moments must be fp32 or bf16, got '", moments, "'");
  DT_CHECK(offload == "none" || offload == "moments" || offload == "master+moments", where,
           ": training.offload must be none, moments or master+moments, got '", offload, "'");
  StateOptions o;
  o.master_remainder = master == "remainder";
  o.moments = moments == "bf16" ? core::DType::bf16 : core::DType::f32;
  o.offload_moments = offload != "none";
  o.offload_master = offload == "master+moments";
  return o;
}

StateBytes state_bytes(core::DType dt, const StateOptions& o) {
  const bool f32 = dt == core::DType::f32;
  StateBytes b;
  if (o.frozen) {  // the weights alone
    b.held = b.train = f32 ? 4 : 2;
    return b;
  }
  b.held = 4;  // gradient
  const double master = o.master_remainder ? 2 : 4;
  if (o.master_remainder)
    b.held += 2 + (f32 ? 4 : 0);
  else
    b.held += f32 ? 0 : 2;
  (o.offload_master ? b.host : b.held) += master;
  const double moments = o.moments == core::DType::bf16 ? 4 : 8;
  b.train = b.held + (o.offload_moments ? 0 : moments);
  if (o.offload_moments) b.host += moments;
  return b;
}

bool keeps_f32_weight(const std::string& name) { return name.ends_with("mlp.gate.weight"); }

namespace {
std::vector<ParamSpec> specs_of(const TensorMap& host) {
  std::vector<ParamSpec> out;
  for (const auto& [name, t] : host) out.push_back({name, t.shape});
  return out;
}
}  // namespace

Params::Params(core::Device dev, core::DType dt, const TensorMap& host, const StateOptions& opt,
               const NameFilter& keep)
    : Params(dev, dt, specs_of(host), opt, keep) {
  upload(host);
}

Params::Params(core::Device dev, core::DType dt, const ParamSource& src, const StateOptions& opt,
               const NameFilter& keep)
    : Params(dev, dt, src.specs, opt, keep) {
  if (opt.gathered) return;  // nothing held here (ZeRO 3: the shards are the engine's)
  for (const ParamSpec& s : src.specs)
    if (!held_apart(s.name)) upload_tensor(s.name, src.make(s));
  finish_upload();
}

Params::Params(core::Device dev, core::DType dt, std::vector<ParamSpec> specs,
               const StateOptions& opt, const NameFilter& keep)
    : dev_(dev), dt_(dt), opt_(opt) {
  std::sort(specs.begin(), specs.end(),
            [](const ParamSpec& a, const ParamSpec& b) { return a.name < b.name; });
  // The tensors held apart: out of the layout, but counted in the counters' (Entry::counter).
  int64_t counter = 0;
  std::vector<ParamSpec> kept;
  std::vector<int64_t> counters;
  for (ParamSpec& spec : specs) {
    const int64_t at = counter;
    counter += aligned(core::numel(spec.shape));
    if (keep && !keep(spec.name)) {
      DT_CHECK(apart_.insert(spec.name).second, "model parameter ", spec.name, " is given twice");
      continue;
    }
    counters.push_back(at);
    kept.push_back(std::move(spec));
  }
  specs = std::move(kept);
  DT_CHECK(dev == core::Device::cuda || dt == core::DType::f32,
           "the CPU computes in float32 only (compute dtype ", core::dtype_name(dt), ")");
  DT_CHECK(opt.moments == core::DType::f32 || opt.moments == core::DType::bf16, "AdamW moments in ",
           core::dtype_name(opt.moments), " (f32 or bf16)");
  DT_CHECK(!opt.offload_master || opt.offload_moments,
           "training.offload: the masters are offloaded only with the moments (master+moments)");
  DT_CHECK(!opt.offload_master || opt.master_remainder || dt != core::DType::f32,
           "training.offload = master+moments with training.master = fp32 needs bf16 compute "
           "(with f32 compute the f32 weights are the masters the model reads); use "
           "training.master = remainder to offload the remainders");
  DT_CHECK(!opt.frozen || (!opt.offload_moments && !opt.master_remainder),
           "a frozen parameter store has no training state to offload or split");
  // A gathered store holds no offloaded state (master_remainder only tells the shards' owner to
  // keep the lean pair: train/zero3.h; frozen: the base of a LoRA run, weights alone).
  DT_CHECK(!opt.gathered || (!opt.offload_moments && !opt.offload_master),
           "a gathered parameter store (ZeRO 3) is not offloaded");
  const bool host_masters = opt.offload_master && !opt.master_remainder;
  // ZeRO 1/2: the offloaded masters of this rank's tensors only, laid out one after the other.
  const bool owners = opt.offload_master && opt.offload_owned;
  std::vector<bool> owned(specs.size(), true);
  if (owners) {
    owned = opt.offload_owned(specs);
    DT_CHECK(owned.size() == specs.size(), "internal: offload_owned gave ", owned.size(),
             " answers for ", specs.size(), " tensors");
  }
  int64_t router_total = 0;
  for (size_t k = 0; k < specs.size(); ++k) {
    const ParamSpec& spec = specs[k];
    const std::string& name = spec.name;
    const int64_t numel = core::numel(spec.shape);
    DT_CHECK(!index_.count(name), "model parameter ", name, " is given twice");
    names_.push_back(name);
    Entry e;
    e.offset = total_;
    e.numel = numel;
    e.shape = spec.shape;
    e.counter = counters[k];
    const bool lean_layout = opt_.master_remainder || opt_.frozen;
    if (!lean_layout || dt_ == core::DType::f32) {
      e.f32_offset = total_;  // every tensor, laid out as the others
    } else if (keeps_f32_weight(name)) {
      e.f32_offset = f32_total_;
      f32_total_ += aligned(numel);
    }
    if (host_masters && keeps_f32_weight(name)) {
      e.router_offset = router_total;
      router_total += aligned(numel);
    }
    if (opt.offload_master && owned[k]) {
      e.host_offset = owners ? host_total_ : total_;
      host_total_ += aligned(numel);
    }
    if (host_masters) e.f32_offset = e.host_offset;  // the fp32 masters are the host's
    index_[name] = e;
    total_ += aligned(numel);
  }
  const bool lean_layout = opt_.master_remainder || opt_.frozen;
  if (!lean_layout || dt_ == core::DType::f32) f32_total_ = total_;
  if (!opt.offload_master) host_total_ = 0;
  const int64_t host_n = std::max<int64_t>(1, host_total_);
  if (opt_.gathered) return;  // the layout alone; the shards' owner binds the views (its hint)
  core::allocator(dev_).set_oom_hint(state_hint());
  if (opt_.frozen) {
    if (dt_ != core::DType::f32) compute_ = core::Buffer(dev_, dt_, {total_}, "frozen weights");
    if (f32_total_ > 0)
      master_ = core::Buffer(
          dev_, core::DType::f32, {f32_total_},
          dt_ == core::DType::f32 ? "frozen f32 weights" : "frozen f32 router weights");
  } else if (opt_.master_remainder) {
    compute_ = core::Buffer(dev_, core::DType::bf16, {total_}, "bf16 weights (lean masters)");
    remainder_ =
        opt_.offload_master
            ? core::Buffer::pinned_host(core::DType::u16, {host_n}, "offloaded master remainders")
            : core::Buffer(dev_, core::DType::u16, {total_}, "master remainders");
    ops::zero(compute_);
    ops::zero(remainder_);
    if (f32_total_ > 0)
      master_ = core::Buffer(dev_, core::DType::f32, {f32_total_},
                             dt_ == core::DType::f32 ? "f32 weights" : "f32 router weights");
  } else {
    master_ = host_masters ? core::Buffer::pinned_host(core::DType::f32, {host_n},
                                                       "offloaded fp32 master weights")
                           : core::Buffer(dev_, core::DType::f32, {total_}, "fp32 master weights");
    if (dt_ != core::DType::f32) compute_ = core::Buffer(dev_, dt_, {total_}, "compute copies");
    if (router_total > 0)
      router_ = core::Buffer(dev_, core::DType::f32, {router_total}, "fp32 router masters");
  }
  if (!opt_.frozen) grad_ = core::Buffer(dev_, core::DType::f32, {total_}, "fp32 gradients");
  if (master_.numel() > 0) ops::zero(master_);
  if (grad_.numel() > 0) ops::zero(grad_);
}

std::string Params::state_hint() const {
  const StateBytes b = state_bytes(dt_, opt_);
  const double gib = double(total_) / double(1ull << 30);
  std::ostringstream hint;
  hint.precision(3);
  hint << "the model's " << double(total_) / 1e9 << "B parameters need " << b.held * gib
       << " GiB on the device for weights and gradients and " << b.train * gib
       << " GiB with the AdamW moments (" << b.train
       << " bytes per parameter: training.master = " << master_name(opt_)
       << ", training.moments = " << moments_name(opt_)
       << ", training.offload = " << offload_name(opt_)
       << (dt_ == core::DType::f32 ? ", f32 compute" : ", bf16 compute")
       << "), before any activations: this model does not fit this device; use fewer layers, a "
          "smaller model, a device with more memory";
  if (dt_ != core::DType::f32 && !(opt_.master_remainder && opt_.moments == core::DType::bf16))
    hint << ", training.master = remainder and training.moments = bf16 (12 bytes per "
            "parameter)";
  if (dt_ != core::DType::f32 && !opt_.offload_master)
    hint << ", or training.offload = master+moments (6 bytes per parameter on the device)";
  return hint.str();
}

const Params::Entry& Params::entry(const std::string& name) const {
  auto it = index_.find(name);
  DT_CHECK(
      it != index_.end(), "model parameter ", name,
      held_apart(name) ? " is frozen: it is held apart from this parameter store" : " is missing");
  return it->second;
}

core::View Params::at(const core::Buffer& b, const std::string& name) const {
  const Entry& e = entry(name);
  return b.view().slice(e.offset, e.numel).reshaped(e.shape);
}

core::View Params::at_f32(const std::string& name) const {
  const Entry& e = entry(name);
  if (e.router_offset >= 0) return router_.view().slice(e.router_offset, e.numel).reshaped(e.shape);
  DT_CHECK(e.f32_offset >= 0, "model parameter ", name,
           " has no f32 weights with training.master = remainder and bf16 compute (only the "
           "tensors model::keeps_f32_weight names keep them)");
  return master_.view().slice(e.f32_offset, e.numel).reshaped(e.shape);
}

namespace {
const core::View& bound(const Params::Entry& e, const core::View& v, const std::string& name,
                        const char* what) {
  DT_CHECK(v.data != nullptr || e.numel == 0, "model parameter ", name, ": its ", what,
           " is not gathered (ZeRO 3: the tensor's unit is not bound while it is used)");
  return v;
}
}  // namespace

core::View Params::w(const std::string& name) const {
  if (opt_.gathered) return bound(entry(name), entry(name).bound_w, name, "weight");
  return dt_ == core::DType::f32 ? at_f32(name) : at(compute_, name);
}
core::View Params::g(const std::string& name) const {
  if (opt_.gathered) return entry(name).bound_g;  // empty: no gradient wanted
  if (opt_.frozen) return core::View{};
  const core::View v = at(grad_, name);
  if (take_unwritten(name)) ops::zero(v);
  return v;
}

Params::GradTarget Params::g_target(const std::string& name) const {
  if (opt_.gathered || opt_.frozen) return {g(name), true};
  return {at(grad_, name), !take_unwritten(name)};
}

bool Params::take_unwritten(const std::string& name) const {
  return !unwritten_.empty() && unwritten_.erase(name) > 0;
}
core::View Params::master(const std::string& name) const {
  if (opt_.gathered) return bound(entry(name), entry(name).bound_f32, name, "f32 weight");
  return at_f32(name);
}

void Params::bind(const std::string& name, const core::View& w, const core::View& f32,
                  const core::View& g) {
  DT_CHECK(opt_.gathered, "model parameter ", name, ": bind needs a gathered store (ZeRO 3)");
  auto it = index_.find(name);
  DT_CHECK(it != index_.end(), "model parameter ", name, " is missing");
  Entry& e = it->second;
  const auto check = [&](const core::View& v, core::DType dt, const char* what) {
    DT_CHECK(v.data == nullptr || (v.numel() == e.numel && v.dtype == dt && v.device == dev_),
             "model parameter ", name, ": bound ", what, " is ", v.describe(), ", expected ",
             core::dtype_name(dt), " ", core::shape_str(e.shape), " on ", core::device_name(dev_));
  };
  check(w, dt_, "weight");
  check(f32, core::DType::f32, "f32 weight");
  check(g, core::DType::f32, "gradient");
  e.bound_w = w.data ? w.reshaped(e.shape) : w;
  e.bound_f32 = f32.data ? f32.reshaped(e.shape) : f32;
  e.bound_g = g.data ? g.reshaped(e.shape) : g;
}

void Params::unbind(const std::string& name) {
  auto it = index_.find(name);
  DT_CHECK(it != index_.end(), "model parameter ", name, " is missing");
  it->second.bound_w = it->second.bound_f32 = it->second.bound_g = core::View{};
}

ops::AdamWTensor Params::adamw_tensor(const std::string& name) const {
  const Entry& e = entry(name);
  DT_CHECK(!opt_.frozen, "model parameter ", name, " is frozen: it has no optimizer step");
  DT_CHECK(!opt_.gathered, "model parameter ", name,
           ": a gathered store (ZeRO 3) has no flat state; the shards' owner steps it");
  ops::AdamWTensor t;
  settle_grads();
  t.grad = grad_.view().slice(e.offset, e.numel);
  t.index = e.counter;
  if (e.router_offset >= 0)
    t.master = router_.view().slice(e.router_offset, e.numel);
  else if (e.f32_offset >= 0)
    t.master = master_.view().slice(e.f32_offset, e.numel);
  if (opt_.master_remainder) {
    t.compute_copy = compute_.view().slice(e.offset, e.numel);
    const int64_t r = opt_.offload_master ? e.host_offset : e.offset;
    if (r >= 0) t.remainder = remainder_.view().slice(r, e.numel);  // another rank's: none
  } else if (dt_ != core::DType::f32) {
    t.compute_copy = compute_.view().slice(e.offset, e.numel);
  }
  return t;
}

void Params::to_flat(const TensorMap& host, const core::View& flat, const char* what) const {
  for (const auto& [name, t] : host) {
    if (held_apart(name)) continue;
    const Entry& e = entry(name);
    DT_CHECK(t.numel() == e.numel, what, " ", name, " has ", t.numel(), " elements, expected ",
             e.numel);
    if (flat.dtype == core::DType::bf16) {
      std::vector<uint16_t> h(static_cast<size_t>(e.numel));
      const float* x = t.ptr();
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < e.numel; ++i) h[i] = core::bf16_round_nearest_even(x[i]);
      ops::copy_from_host(flat.slice(e.offset, e.numel), h.data());
    } else {
      ops::copy_from_host(flat.slice(e.offset, e.numel), t.ptr());
    }
  }
}

void Params::from_flat(const core::View& flat, TensorMap& host, const char* what) const {
  for (auto& [name, t] : host) {
    if (held_apart(name)) {  // frozen: no gradient, no moments
      t.zero();
      continue;
    }
    const Entry& e = entry(name);
    DT_CHECK(t.numel() == e.numel, what, " ", name, " has ", t.numel(), " elements, expected ",
             e.numel);
    flat_to_host(flat, name, t.ptr());
  }
}

void Params::flat_to_host(const core::View& flat, const std::string& name, float* out) const {
  const Entry& e = entry(name);
  if (flat.dtype != core::DType::bf16) return ops::copy_to_host(flat.slice(e.offset, e.numel), out);
  std::vector<uint16_t> h(static_cast<size_t>(e.numel));
  ops::copy_to_host(flat.slice(e.offset, e.numel), h.data());
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < e.numel; ++i) out[i] = core::bf16_to_f32(h[i]);
}

void Params::upload(const TensorMap& host) {
  for (const auto& [name, t] : host)
    if (!held_apart(name)) upload_tensor(name, t);
  finish_upload();
}

void Params::upload_tensor(const std::string& name, const core::Tensor& t) {
  if (opt_.gathered) return;  // nothing held here (ZeRO 3: the shards are the engine's)
  const Entry& e = entry(name);
  DT_CHECK(t.numel() == e.numel, "parameter ", name, " has ", t.numel(), " elements, expected ",
           e.numel);
  if (e.f32_offset >= 0) ops::copy_from_host(master_.view().slice(e.f32_offset, e.numel), t.ptr());
  if (e.router_offset >= 0)
    ops::copy_from_host(router_.view().slice(e.router_offset, e.numel), t.ptr());
  if (opt_.frozen) {
    if (dt_ == core::DType::f32) return;  // the f32 weights above are all there is
    std::vector<uint16_t> wt(static_cast<size_t>(e.numel));
    const float* x = t.ptr();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < e.numel; ++i) wt[i] = core::bf16_round_ties_away(x[i]);
    ops::copy_from_host(compute_.view().slice(e.offset, e.numel), wt.data());
    return;
  }
  if (!opt_.master_remainder && master_.device() != dev_) {
    // Offloaded fp32 masters: the compute copy made on the host, as adamw_compute_copy does.
    std::vector<uint16_t> wt(static_cast<size_t>(e.numel));
    const float* x = t.ptr();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < e.numel; ++i) wt[i] = core::bf16_round_ties_away(x[i]);
    ops::copy_from_host(compute_.view().slice(e.offset, e.numel), wt.data());
  }
  if (!opt_.master_remainder) return;
  // The lean pair, split on the host (exact; core/bf16.h).
  std::vector<uint16_t> wt(static_cast<size_t>(e.numel)), rem(static_cast<size_t>(e.numel));
  const float* x = t.ptr();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < e.numel; ++i) core::master_split(x[i], wt[i], rem[i]);
  ops::copy_from_host(compute_.view().slice(e.offset, e.numel), wt.data());
  const int64_t r = opt_.offload_master ? e.host_offset : e.offset;
  if (r >= 0) ops::copy_from_host(remainder_.view().slice(r, e.numel), rem.data());
}

void Params::finish_upload() {
  // fp32 masters: the bf16 compute copies, rounded as the pair's weights (ties away from zero).
  if (!opt_.gathered && !opt_.frozen && !opt_.master_remainder && dt_ != core::DType::f32 &&
      master_.device() == dev_)
    ops::adamw_compute_copy(master_, compute_, total_);
}

void Params::download(TensorMap& host) const {
  DT_CHECK(!opt_.gathered, "a gathered store (ZeRO 3) holds no weights to download");
  for (auto& [name, t] : host) {
    if (held_apart(name)) continue;  // another store's (frozen: as loaded)
    const Entry& e = entry(name);
    DT_CHECK(t.numel() == e.numel, "parameter ", name, " has ", t.numel(), " elements, expected ",
             e.numel);
    download_tensor(name, t.ptr());
  }
}

bool Params::owns_master(const std::string& name) const {
  return !opt_.offload_master || entry(name).host_offset >= 0;
}

void Params::download_tensor(const std::string& name, float* x) const {
  DT_CHECK(!opt_.gathered, "a gathered store (ZeRO 3) holds no weights to download");
  const Entry& e = entry(name);
  DT_CHECK(owns_master(name), "model parameter ", name,
           ": its offloaded master is another rank's (ZeRO with training.offload): read it "
           "through the engine");
  if (!opt_.master_remainder && !(opt_.frozen && e.f32_offset < 0)) {
    ops::copy_to_host(at_f32(name), x);
    return;
  }
  if (opt_.frozen) {  // bf16 weights, widened (exact)
    std::vector<uint16_t> wt(static_cast<size_t>(e.numel));
    ops::copy_to_host(compute_.view().slice(e.offset, e.numel), wt.data());
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < e.numel; ++i) x[i] = core::bf16_to_f32(wt[i]);
    return;
  }
  // The lean pair, joined on the host (exact).
  std::vector<uint16_t> wt(static_cast<size_t>(e.numel)), rem(static_cast<size_t>(e.numel));
  ops::copy_to_host(compute_.view().slice(e.offset, e.numel), wt.data());
  const int64_t r = opt_.offload_master ? e.host_offset : e.offset;
  ops::copy_to_host(remainder_.view().slice(r, e.numel), rem.data());
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < e.numel; ++i) x[i] = core::master_join(wt[i], rem[i]);
}

void Params::download_grads(TensorMap& host) const {
  DT_CHECK(!opt_.frozen && !opt_.gathered,
           opt_.frozen ? "the frozen parameters have no gradients"
                       : "a gathered store (ZeRO 3) holds no gradients to download");
  settle_grads();
  from_flat(grad_, host, "gradient");
}

void Params::zero_grads() {
  if (grad_.numel() == 0) return;
  unwritten_.clear();  // the gradients' values are dropped: none of them is read before written
  unwritten_.insert(names_.begin(), names_.end());
}

void Params::settle_grads() const {
  if (unwritten_.empty()) return;
  if (unwritten_.size() == names_.size()) {
    ops::zero(grad_);  // nothing written yet: one memset
  } else {
    for (const std::string& n : unwritten_) ops::zero(at(grad_, n));
  }
  unwritten_.clear();
}

}  // namespace deltatron::model
