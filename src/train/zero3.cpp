// ZeRO 3's layout and shard store: the pieces a rank holds, the gathers and gradient reductions
// of model::ParamGather, and the collective reads of one tensor (zero3.h).
#include "train/zero3.h"

#include <algorithm>
#include <sstream>

#include "core/bf16.h"
#include "core/error.h"
#include "model/expert_parallel.h"
#include "ops/tensor.h"
#include "train/zero.h"

namespace deltatron::train {

namespace {
constexpr int64_t kAlign = 64;  // elements: 256 bytes of f32, as model::Params aligns tensors
int64_t aligned(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
}  // namespace

int64_t zero3_aligned(int64_t n) { return aligned(n); }

namespace {
// The part of [offset, offset + numel) of a unit's space in rank r's piece: [a, b) (a >= b:
// none).
struct Overlap {
  int64_t a = 0, b = 0;
  int64_t size() const { return std::max<int64_t>(0, b - a); }
};
Overlap overlap(const Zero3Layout::Unit& u, int r, int64_t offset, int64_t numel) {
  return {std::max(offset, r * u.piece), std::min(offset + numel, (r + 1) * u.piece)};
}

// dst = src, the same dtype and count: bf16 (moments, weights) and u16 (remainders, viewed as
// bf16) too, which the CPU's ops::cast refuses (it computes in f32 only). src in host memory (the
// CPU's, or offloaded state) is copied to dst's device; else both are on one device.
void copy_same(const core::View& src, const core::View& dst) {
  if (src.device == core::Device::cpu)
    ops::copy_from_host(dst, src.data);
  else
    ops::cast(src, dst, src.numel());
}
}  // namespace

int64_t Zero3Store::overlap_size(const Zero3Layout::Unit& u, int r, int64_t offset, int64_t numel) {
  return overlap(u, r, offset, numel).size();
}

int zero3_model_unit(const model::Config& c, const std::string& name) {
  const std::string prefix = c.name("layers.");
  if (name.rfind(prefix, 0) != 0) return model::ParamGather::kOuterUnit;
  const size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos) return model::ParamGather::kOuterUnit;
  const std::string digits = name.substr(prefix.size(), dot - prefix.size());
  if (digits.empty() || !std::all_of(digits.begin(), digits.end(), ::isdigit))
    return model::ParamGather::kOuterUnit;
  const int64_t i = std::stoll(digits);
  DT_CHECK(i < c.num_hidden_layers, "ZeRO 3: parameter ", name, " of layer ", i, " (the model has ",
           c.num_hidden_layers, " layers)");
  return int(i);
}

const Zero3Layout::Tensor& Zero3Layout::tensor(const std::string& name) const {
  const auto it = index.find(name);
  DT_CHECK(it != index.end(), "ZeRO 3: model parameter ", name, " is missing");
  return tensors[it->second];
}

Zero3Layout zero3_layout(const model::Params& p, const model::Config& c, int ranks, int rank,
                         int expert_ranks, int expert_rank) {
  DT_CHECK(ranks >= 1 && rank >= 0 && rank < ranks, "ZeRO 3: rank ", rank, " of ", ranks);
  DT_CHECK(expert_ranks == 0 || (expert_rank >= 0 && expert_rank < expert_ranks),
           "ZeRO 3: expert rank ", expert_rank, " of ", expert_ranks);
  Zero3Layout l;
  l.ranks = ranks;
  l.rank = rank;
  l.expert_ranks = expert_ranks;
  l.expert_rank = expert_rank;
  l.model_units = int(c.num_hidden_layers) + 1;
  l.units.resize(size_t(l.model_units) * (expert_ranks > 0 ? 2 : 1));
  for (size_t u = size_t(l.model_units); u < l.units.size(); ++u) l.units[u].expert = true;
  const bool bf16 = p.dt() != core::DType::f32;
  for (const auto& name : p.names()) {
    const auto& e = p.entry(name);
    Zero3Layout::Tensor t;
    t.name = name;
    const int mu = zero3_model_unit(c, name);
    t.unit = expert_ranks > 0 && model::is_routed_expert_tensor(name) ? l.expert_unit_of(mu)
                                                                      : Zero3Layout::unit_of(mu);
    t.numel = e.numel;
    t.one_rank = e.counter;
    t.f32_read = bf16 && model::keeps_f32_weight(name);
    Zero3Layout::Unit& u = l.units[size_t(t.unit)];
    t.offset = u.numel;
    u.numel += aligned(t.numel);
    u.f32_read = u.f32_read || t.f32_read;
    u.tensors.push_back(l.tensors.size());
    l.index[name] = l.tensors.size();
    l.tensors.push_back(std::move(t));
  }
  for (auto& u : l.units) {
    const int n = l.ranks_of(u);
    u.piece = aligned((u.numel + n - 1) / n);
    u.local = l.shard;
    l.shard += u.piece;
  }
  return l;
}

std::string Zero3Store::shard_hint() const {
  const double gib = double(l_.shard) / double(1ull << 30);
  const bool f32_model = p_.dt() == core::DType::f32;
  const double weights = f32_model ? 4 : lean_ ? (offload_.master ? 2 : 4) : host_master_ ? 2 : 6;
  const double held = weights + (frozen_ ? 0 : 4);  // bytes a parameter of the shard, + gradients
  std::ostringstream hint;
  hint.precision(3);
  hint << "ZeRO 3: this rank's shard (" << double(l_.shard) / 1e9 << "B of the model's "
       << double(p_.total()) / 1e9 << "B parameters over " << comm_.size() << " ranks) needs about "
       << held * gib
       << " GiB on the device for its weights and gradients before the AdamW moments and the "
          "gathered layers (training.master = "
       << (lean_ ? "remainder" : "fp32") << ", training.offload = "
       << (offload_.master    ? "master+moments"
           : offload_.moments ? "moments"
                              : "none")
       << "): use more data-parallel ranks";
  if (!frozen_ && !lean_ && !f32_model)
    hint << ", training.master = remainder and training.moments = bf16";
  if (!frozen_ && !offload_.master && !f32_model) hint << ", or training.offload = master+moments";
  return hint.str();
}

void Zero3Store::ops_zero(const core::Buffer& b) {
  if (b.numel() > 0) ops::zero(b);
}

Zero3Store::Zero3Store(model::Params& params, const model::Config& c, dist::Comm& comm,
                       dist::Comm* experts, const ops::AdamWOffload& offload)
    : lean_(params.options().master_remainder),
      frozen_(params.frozen()),
      offload_(offload),
      p_(params),
      comm_(comm),
      experts_(experts),
      l_(zero3_layout(params, c, comm.size(), comm.rank(), experts ? experts->size() : 0,
                      experts ? experts->rank() : 0)) {
  DT_CHECK(p_.gathered(), "ZeRO 3: the model's parameter store must be a gathered one");
  for (const dist::Comm* cm :
       {static_cast<const dist::Comm*>(&comm), static_cast<const dist::Comm*>(experts)})
    DT_CHECK(cm == nullptr || cm->device() == p_.device(), "ZeRO 3: the communicator is on ",
             core::device_name(cm->device()), ", the model on ", core::device_name(p_.device()));
  const int64_t n = std::max<int64_t>(1, l_.shard);
  const core::Device dev = p_.device();
  const bool f32_model = p_.dt() == core::DType::f32;
  DT_CHECK(!frozen_ || !offloaded(), "ZeRO 3: a frozen store has no training state to offload");
  DT_CHECK(!offload_.master || offload_.moments,
           "ZeRO 3: training.offload: the masters are offloaded only with the moments "
           "(master+moments)");
  DT_CHECK(!offload_.master || lean_ || p_.dt() == core::DType::bf16,
           "ZeRO 3: training.offload = master+moments with training.master = fp32 needs bf16 "
           "compute (with f32 compute the f32 weights are the masters the model reads); use "
           "training.master = remainder to offload the remainders");
  host_master_ = offload_.master && !lean_;
  routers_apart_ = (lean_ || host_master_) && !f32_model;
  core::allocator(dev).set_oom_hint(shard_hint());
  if (!lean_ || f32_model) {
    const char* what = f32_model      ? "f32 weights (ZeRO 3 shard)"
                       : host_master_ ? "offloaded fp32 master weights (ZeRO 3 shard)"
                                      : "fp32 master weights (ZeRO 3 shard)";
    master_ = host_master_ ? core::Buffer::pinned_host(core::DType::f32, {n}, what)
                           : core::Buffer(dev, core::DType::f32, {n}, what);
  }
  if (lean_) {  // the pair: bf16 weights (the compute copies of a bf16 model) and remainders
    compute_ = core::Buffer(dev, core::DType::bf16, {n}, "bf16 weights (ZeRO 3 shard, lean)");
    remainder_ = offload_.master
                     ? core::Buffer::pinned_host(core::DType::u16, {n},
                                                 "offloaded master remainders (ZeRO 3 shard)")
                     : core::Buffer(dev, core::DType::u16, {n}, "master remainders (ZeRO 3 shard)");
  } else if (!f32_model) {
    compute_ = core::Buffer(dev, p_.dt(), {n}, "compute copies (ZeRO 3 shard)");
  }
  if (routers_apart_) {  // the f32 weights of the tensors a bf16 model reads in f32 (routers)
    int64_t routers = 0;
    router_at_.assign(l_.tensors.size(), -1);
    for (size_t i = 0; i < l_.tensors.size(); ++i) {
      const auto& t = l_.tensors[i];
      const auto& u = l_.units[size_t(t.unit)];
      const int64_t k = overlap_size(u, l_.rank_of(u), t.offset, t.numel);
      if (!t.f32_read || k == 0) continue;
      router_at_[i] = routers;
      routers += k;
    }
    if (routers > 0)
      router_ = core::Buffer(dev, core::DType::f32, {routers}, "f32 router weights (ZeRO 3)");
  }
  if (!frozen_) grad_ = core::Buffer(dev, core::DType::f32, {n}, "fp32 gradients (ZeRO 3 shard)");
  if (frozen_ && !f32_model) {  // the f32-read tensors whole, on every rank
    int64_t total = 0;
    for (const auto& t : l_.tensors)
      if (t.f32_read) frozen_router_at_[t.name] = total, total += aligned(t.numel);
    if (total > 0)
      frozen_routers_ =
          core::Buffer(dev, core::DType::f32, {total}, "frozen f32 router weights (whole)");
  }
  ops_zero(master_);
  ops_zero(compute_);
  ops_zero(remainder_);
  ops_zero(router_);
  ops_zero(grad_);
  int64_t piece = 1;
  for (size_t u = 0; u < l_.units.size(); ++u) {
    const auto& unit = l_.units[u];
    piece = std::max(piece, unit.piece);
    if (pool_of(int(u)) % 2 == 1) {  // a layer unit
      int64_t& largest = largest_layer_[unit.expert ? 1 : 0];
      largest = std::max(largest, unit.piece * l_.ranks_of(unit));
    }
  }
  if (!frozen_)
    piece_sum_ = core::Buffer(dev, core::DType::f32, {piece}, "ZeRO 3 reduced gradient piece");
}

int Zero3Store::pool_of(int u) const {
  const auto& unit = l_.units[size_t(u)];
  const bool outer = u % l_.model_units == 0;  // 0 and model_units: the outer units
  return (unit.expert ? 2 : 0) + (outer ? 0 : 1);
}

std::vector<int> Zero3Store::units_of(int model_unit) const {
  std::vector<int> out = {Zero3Layout::unit_of(model_unit)};
  DT_CHECK(out[0] >= 0 && out[0] < l_.model_units, "ZeRO 3: no unit ", model_unit);
  const int e = l_.expert_unit_of(model_unit);
  if (e >= 0 && l_.units[size_t(e)].numel > 0) out.push_back(e);
  return out;
}

core::Buffer Zero3Store::take(int u, core::DType dt, int64_t n, const char* what) {
  const int kind = pool_of(u);
  auto& pool = pool_[kind];
  for (auto it = pool.begin(); it != pool.end(); ++it)
    if (it->view().dtype == dt && it->numel() >= n) {
      core::Buffer b = std::move(*it);
      pool.erase(it);
      return b;
    }
  const int64_t size = kind % 2 == 0 ? n : std::max(n, largest_layer_[kind / 2]);
  return core::Buffer(p_.device(), dt, {size}, what);
}

void Zero3Store::give(int u, core::Buffer&& b) {
  if (b.numel() > 0) pool_[pool_of(u)].push_back(std::move(b));
}

int64_t Zero3Store::piece_size(const std::string& name) const {
  const auto& t = l_.tensor(name);
  const auto& u = l_.units[size_t(t.unit)];
  return overlap(u, l_.rank_of(u), t.offset, t.numel).size();
}

namespace {
// Where this rank's piece starts in host values of `given` elements: the whole tensor's (or -1),
// or the piece alone.
int64_t piece_start(const std::string& name, int64_t given, int64_t numel, int64_t piece,
                    int64_t at, const char* what) {
  if (given < 0 || given == numel) return at;
  DT_CHECK(given == piece, "ZeRO 3: ", what, " ", name, " given as ", given,
           " elements: expected the whole tensor's ", numel, " or this rank's piece of ", piece);
  return 0;
}
}  // namespace

void Zero3Store::load_weight(const std::string& name, const float* host, int64_t given) {
  const auto& t = l_.tensor(name);
  const auto& u = l_.units[size_t(t.unit)];
  const int rank = l_.rank_of(u);
  const Overlap o = overlap(u, rank, t.offset, t.numel);
  const int64_t start = piece_start(name, given, t.numel, o.size(), o.a - t.offset, "weight");
  if (const auto it = frozen_router_at_.find(name); it != frozen_router_at_.end()) {
    DT_CHECK(given < 0 || given == t.numel, "ZeRO 3: ", name,
             ": a frozen bf16 store keeps the routers whole: give the whole tensor");
    ops::copy_from_host(frozen_routers_.view().slice(it->second, t.numel), host);
  }
  const int64_t n = o.size(), at = u.local + o.a - rank * u.piece;
  if (n == 0) return;
  const float* x = host + start;
  if (master_.numel() > 0) ops::copy_from_host(master_.view().slice(at, n), x);
  if (host_master_) {  // the compute copies of host masters, rounded here as finish_load does
    std::vector<uint16_t> wt(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) wt[size_t(i)] = core::bf16_round_ties_away(x[i]);
    ops::copy_from_host(compute_.view().slice(at, n), wt.data());
  }
  if (lean_) {  // the pair, split on the host (exact; core/bf16.h), as model::Params does
    std::vector<uint16_t> wt(static_cast<size_t>(n)), rem(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) core::master_split(x[i], wt[size_t(i)], rem[size_t(i)]);
    ops::copy_from_host(compute_.view().slice(at, n), wt.data());
    ops::copy_from_host(remainder_.view().slice(at, n), rem.data());
  }
  const int64_t r = router_at_.empty() ? -1 : router_at_[l_.index.at(name)];
  if (r >= 0) ops::copy_from_host(router_.view().slice(r, n), x);
}

void Zero3Store::finish_load() {
  // fp32 masters of a bf16 model: the compute copies, rounded as the pair's weights (host
  // masters: rounded by load_weight).
  if (!lean_ && !host_master_ && compute_.numel() > 0)
    ops::adamw_compute_copy(master_, compute_, master_.numel());
  if (frozen_ && compute_.numel() > 0) master_ = core::Buffer();  // the bf16 weights alone
}

void Zero3Store::alloc_moments(core::DType dt) {
  const int64_t n = std::max<int64_t>(1, l_.shard);
  if (offload_.moments) {  // pinned host memory, streamed through the device by the step
    m_ = core::Buffer::pinned_host(dt, {n}, "offloaded AdamW exp_avg (ZeRO 3 shard)");
    v_ = core::Buffer::pinned_host(dt, {n}, "offloaded AdamW exp_avg_sq (ZeRO 3 shard)");
  } else {
    m_ = core::Buffer(p_.device(), dt, {n}, "AdamW exp_avg (ZeRO 3 shard)");
    v_ = core::Buffer(p_.device(), dt, {n}, "AdamW exp_avg_sq (ZeRO 3 shard)");
  }
  ops_zero(m_);
  ops_zero(v_);
}

void Zero3Store::load_moment(const std::string& name, bool second, const float* host,
                             int64_t given) {
  const auto& t = l_.tensor(name);
  const auto& u = l_.units[size_t(t.unit)];
  const int rank = l_.rank_of(u);
  const Overlap o = overlap(u, rank, t.offset, t.numel);
  const int64_t start = piece_start(name, given, t.numel, o.size(), o.a - t.offset, "moment");
  if (o.size() > 0)
    moment_from_host(host + start,
                     (second ? v_ : m_).view().slice(u.local + o.a - rank * u.piece, o.size()));
}

void Zero3Store::read(const std::string& name, Part part, float* out) {
  const auto& t = l_.tensor(name);
  const auto& u = l_.units[size_t(t.unit)];
  if (part == Part::weight && master_.numel() == 0) return read_pair(name, out);
  const core::Buffer& src = part == Part::weight    ? master_
                            : part == Part::grad    ? grad_
                            : part == Part::exp_avg ? m_
                                                    : v_;
  DT_CHECK(src.numel() > 0, "ZeRO 3: ", name, ": ",
           frozen_ ? "a frozen store keeps no gradients, moments or fp32 values"
                   : "no AdamW moments yet");
  if (t.numel == 0) return;
  // Offloaded fp32 masters: a router's are in router_ (stepped on the device).
  const int64_t router =
      part == Part::weight && host_master_ ? router_at_[l_.index.at(name)] : int64_t(-1);
  core::Buffer recv(p_.device(), src.view().dtype, {t.numel}, "ZeRO 3 tensor being read");
  dist::Comm& comm = comm_of(u);  // the unit's ranks (an expert unit: the same experts')
  for (int r = 0; r < l_.ranks_of(u); ++r) {
    const Overlap o = overlap(u, r, t.offset, t.numel);
    if (o.size() == 0) continue;
    const core::View dst = recv.view().slice(o.a - t.offset, o.size());
    if (r == l_.rank_of(u))
      copy_same(router >= 0 ? router_.view().slice(router, o.size())
                            : src.view().slice(u.local + o.a - r * u.piece, o.size()),
                dst);
    comm.broadcast(dst, r);
  }
  moment_to_host(recv, out);  // f32 copied, bf16 widened exactly
}

void Zero3Store::read_pair(const std::string& name, float* out) {
  // The lean pair of a bf16 model: the weights and the remainders of every piece broadcast from
  // their ranks (u16 travels as bf16: the same bytes), joined on the host (exact).
  const auto& t = l_.tensor(name);
  const auto& u = l_.units[size_t(t.unit)];
  if (t.numel == 0) return;
  core::Buffer wt(p_.device(), core::DType::bf16, {t.numel}, "ZeRO 3 weights being read");
  core::Buffer rem(p_.device(), core::DType::bf16, {t.numel}, "ZeRO 3 remainders being read");
  const auto as_bf16 = [](const core::View& v) {
    return core::View(v.data, core::DType::bf16, v.device, {v.numel()});
  };
  dist::Comm& comm = comm_of(u);
  for (int r = 0; r < l_.ranks_of(u); ++r) {
    const Overlap o = overlap(u, r, t.offset, t.numel);
    if (o.size() == 0) continue;
    const int64_t at = o.a - t.offset, mine = u.local + o.a - r * u.piece;
    if (r == l_.rank_of(u)) {
      copy_same(compute_.view().slice(mine, o.size()), wt.view().slice(at, o.size()));
      copy_same(as_bf16(remainder_.view().slice(mine, o.size())), rem.view().slice(at, o.size()));
    }
    comm.broadcast(wt.view().slice(at, o.size()), r);
    comm.broadcast(rem.view().slice(at, o.size()), r);
  }
  std::vector<uint16_t> w(static_cast<size_t>(t.numel)), m(static_cast<size_t>(t.numel));
  ops::copy_to_host(wt, w.data());
  ops::copy_to_host(rem, m.data());
  for (int64_t i = 0; i < t.numel; ++i) out[i] = core::master_join(w[size_t(i)], m[size_t(i)]);
}

std::vector<Zero3Store::Piece> Zero3Store::pieces() const {
  DT_CHECK(!frozen_, "ZeRO 3: a frozen store has no optimizer step");
  std::vector<Piece> out;
  for (size_t i = 0; i < l_.tensors.size(); ++i) {
    const auto& t = l_.tensors[i];
    const auto& u = l_.units[size_t(t.unit)];
    const int rank = l_.rank_of(u);
    const Overlap o = overlap(u, rank, t.offset, t.numel);
    if (o.size() == 0) continue;
    const int64_t at = u.local + o.a - rank * u.piece, n = o.size();
    Piece pc;
    pc.tensor = i;
    if (routers_apart_ && router_at_[i] >= 0)  // a router's f32 weights (bf16: lean or host)
      pc.t.master = router_.view().slice(router_at_[i], n);
    else if (master_.numel() > 0)  // the fp32 master (inout), or the lean pair's f32 weights (out)
      pc.t.master = master_.view().slice(at, n);
    if (compute_.numel() > 0) pc.t.compute_copy = compute_.view().slice(at, n);
    if (lean_) pc.t.remainder = remainder_.view().slice(at, n);
    pc.t.grad = grad_.view().slice(at, n);
    if (m_.numel() > 0) {
      pc.t.m = m_.view().slice(at, n);
      pc.t.v = v_.view().slice(at, n);
    }
    pc.t.index = t.one_rank + (o.a - t.offset);  // the one-rank run's counters
    out.push_back(pc);
  }
  return out;
}

Zero3Store::Gathered Zero3Store::gather_weights(int u) {
  const auto& unit = l_.units[size_t(u)];
  const int64_t full = unit.piece * l_.ranks_of(unit);
  dist::Comm& comm = comm_of(unit);
  Gathered g;
  const bool f32_model = p_.dt() == core::DType::f32;
  const core::View& mine = f32_model ? master_.view() : compute_.view();
  g.w = take(u, p_.dt(), full, "ZeRO 3 gathered weights");
  comm.all_gather(mine.slice(unit.local, unit.piece), g.w.view().slice(0, full));
  if (!f32_model && unit.f32_read && !frozen_) {  // the f32 weights a bf16 model reads (routers)
    g.f32 = take(u, core::DType::f32, full, "ZeRO 3 gathered f32 weights");
    if (!routers_apart_) {
      comm.all_gather(master_.view().slice(unit.local, unit.piece), g.f32.view().slice(0, full));
    } else {  // the routers' f32 weights placed in this rank's block (the rest is never read)
      const int rank = l_.rank_of(unit);
      const core::View block = g.f32.view().slice(rank * unit.piece, unit.piece);
      ops::zero(block);
      for (size_t i : unit.tensors) {
        const auto& t = l_.tensors[i];
        if (router_at_[i] < 0) continue;
        const Overlap o = overlap(unit, rank, t.offset, t.numel);
        ops::cast(router_.view().slice(router_at_[i], o.size()),
                  block.slice(o.a - rank * unit.piece, o.size()), o.size());
      }
      comm.all_gather(block, g.f32.view().slice(0, full));  // in place
    }
  }
  return g;
}

void Zero3Store::gather(int model_unit, bool grads) {
  DT_CHECK(!grads || !frozen_, "ZeRO 3: unit ", model_unit, " of a frozen store has no gradient");
  for (const int u : units_of(model_unit)) {
    DT_CHECK(!live_.count(u), "ZeRO 3: unit ", model_unit, " gathered twice");
    const auto& unit = l_.units[size_t(u)];
    const int64_t full = unit.piece * l_.ranks_of(unit);
    Gathered g;
    if (auto it = ready_.find(u); it != ready_.end()) {  // prefetched
      g = std::move(it->second);
      ready_.erase(it);
    } else {
      g = gather_weights(u);
    }
    if (grads) {
      g.g = take(u, core::DType::f32, full, "ZeRO 3 gathered gradients");
      ops::zero(g.g.view().slice(0, full));
    }
    const bool f32_model = p_.dt() == core::DType::f32;
    for (size_t i : unit.tensors) {
      const auto& t = l_.tensors[i];
      const core::View w = g.w.view().slice(t.offset, t.numel);
      const core::View f32 =
          f32_model     ? w
          : !t.f32_read ? core::View{}
          : frozen_     ? frozen_routers_.view().slice(frozen_router_at_.at(t.name), t.numel)
                        : g.f32.view().slice(t.offset, t.numel);
      p_.bind(t.name, w, f32, grads ? g.g.view().slice(t.offset, t.numel) : core::View{});
    }
    live_[u] = std::move(g);
  }
}

void Zero3Store::prefetch(int model_unit) {
  // Issued now, taken by gather(). On the CPU (Gloo) the all_gather completes here; on CUDA it
  // is queued on the default stream with the kernels (dist/comm.h), so it does not overlap them
  // yet: a side stream for it is future work (docs/parallel.md).
  const int u0 = Zero3Layout::unit_of(model_unit);
  if (u0 < 0 || u0 >= l_.model_units) return;
  for (const int u : units_of(model_unit))
    if (!live_.count(u) && !ready_.count(u)) ready_[u] = gather_weights(u);
}

void Zero3Store::release(int model_unit, bool grads) {
  for (const int u : units_of(model_unit)) {
    const auto it = live_.find(u);
    DT_CHECK(it != live_.end(), "ZeRO 3: unit ", model_unit, " released but not gathered");
    const auto& unit = l_.units[size_t(u)];
    for (size_t i : unit.tensors) p_.unbind(l_.tensors[i].name);
    if (grads) {  // the sum over the unit's ranks of this rank's piece, added to its shard's
      DT_CHECK(it->second.g.numel() > 0, "ZeRO 3: unit ", model_unit,
               " released with gradients but gathered without");
      const core::View sum = piece_sum_.view().slice(0, unit.piece);
      comm_of(unit).reduce_scatter(it->second.g.view().slice(0, unit.piece * l_.ranks_of(unit)),
                                   sum);
      ops::add_inplace(grad_.view().slice(unit.local, unit.piece), sum, unit.piece);
    }
    give(u, std::move(it->second.w));
    give(u, std::move(it->second.f32));
    give(u, std::move(it->second.g));
    live_.erase(it);
  }
}

}  // namespace deltatron::train
