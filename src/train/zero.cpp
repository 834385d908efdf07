// ZeRO's shards and the collectives of a sharded step (zero.h).
#include "train/zero.h"

#include <algorithm>
#include <array>

#include "core/bf16.h"
#include "core/buffer.h"
#include "core/error.h"
#include "ops/tensor.h"

namespace deltatron::train {

int64_t ZeroShards::size(int r) const {
  int64_t n = 0;
  for (const Run& run : runs[size_t(r)]) n += run.size();
  return n;
}

int64_t ZeroShards::largest() const {
  int64_t n = 0;
  for (int r = 0; r < ranks(); ++r) n = std::max(n, size(r));
  return n;
}

int ZeroShards::owner(int64_t offset) const {
  // The last rank whose range starts at or before offset (empty ranges share their start).
  const auto it = std::upper_bound(bounds.begin(), bounds.end(), offset);
  return std::clamp(int(it - bounds.begin()) - 1, 0, ranks() - 1);
}

std::vector<int> zero_owners(const std::vector<model::ParamSpec>& tensors, int ranks,
                             const TensorFilter& covers) {
  DT_CHECK(ranks >= 1, "ZeRO: ", ranks, " ranks");
  const auto covered = [&](const std::string& name) { return !covers || covers(name); };
  int64_t total = 0;
  for (const model::ParamSpec& t : tensors)
    if (covered(t.name)) total += core::numel(t.shape);
  // The rank of a covered tensor: floor(ranks * midpoint / total), non-decreasing in order.
  std::vector<int> owner(tensors.size(), -1);
  int64_t before = 0;  // covered elements before this tensor
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!covered(tensors[i].name)) continue;
    const int64_t n = core::numel(tensors[i].shape);
    owner[i] = int(std::min<int64_t>(
        ranks - 1, int64_t(ranks) * (2 * before + n) / std::max<int64_t>(1, 2 * total)));
    before += n;
  }
  return owner;
}

ZeroShards zero_shards(const model::Params& p, int ranks, const TensorFilter& covers) {
  std::vector<model::ParamSpec> tensors;
  for (const auto& name : p.names()) tensors.push_back({name, p.entry(name).shape});
  const std::vector<int> owner = zero_owners(tensors, ranks, covers);
  ZeroShards s;
  s.bounds.assign(size_t(ranks) + 1, p.total());
  s.bounds[0] = 0;
  s.runs.resize(size_t(ranks));
  // Covered tensors in offset order, their ranks non-decreasing, so bounds[r] = the offset of the
  // first covered tensor of a rank >= r.
  int next = 1;
  int last = -1;  // the previous tensor's rank (-1: it was not covered)
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& e = p.entry(tensors[i].name);
    const int r = owner[i];
    if (r < 0) {
      last = -1;
      continue;
    }
    for (; next <= r; ++next) s.bounds[size_t(next)] = e.offset;
    auto& runs = s.runs[size_t(r)];
    if (r == last)  // the run goes on (with the alignment gap before this tensor)
      runs.back().end = e.offset + e.numel;
    else
      runs.push_back({e.offset, e.offset + e.numel});
    last = r;
  }
  return s;
}

namespace {

// Calls f(flat, at, n) for the parts of elements [from, from + n) of the concatenation of runs:
// the part's flat offset, its position in [0, n) and its length.
template <typename F>
void for_each_part(const std::vector<ZeroShards::Run>& runs, int64_t from, int64_t n, F&& f) {
  int64_t pos = 0;  // the run's start in the concatenation
  for (const ZeroShards::Run& run : runs) {
    const int64_t a = std::max(from, pos), b = std::min(from + n, pos + run.size());
    if (a < b) f(run.begin + (a - pos), a - from, b - a);
    pos += run.size();
  }
}

}  // namespace

double shard_sum_squares(const ZeroShards& s, int r, const core::View& grad_flat) {
  double sum = 0;
  for (const ZeroShards::Run& run : s.runs[size_t(r)])
    if (run.size() > 0) sum += ops::sum_squares(grad_flat.slice(run.begin, run.size()), run.size());
  return sum;
}

void reduce_scatter_shards(dist::Comm& comm, const ZeroShards& s, const core::View& grad_flat,
                           int64_t chunk) {
  const int ranks = s.ranks(), me = comm.rank();
  DT_CHECK(ranks == comm.size(), "ZeRO: shards for ", ranks, " ranks on a communicator of ",
           comm.size());
  const int64_t c = std::min(chunk, s.largest());
  if (c == 0) return;
  core::Buffer stage(grad_flat.device, core::DType::f32, {int64_t(ranks + 1) * c},
                     "ZeRO 2 gradient reduce-scatter staging");
  const core::View in = stage.view().slice(0, int64_t(ranks) * c);
  const core::View out = stage.view().slice(int64_t(ranks) * c, c);
  const auto piece = [&](int r, int64_t done) {
    return std::clamp<int64_t>(s.size(r) - done, 0, c);
  };
  for (int64_t done = 0; done < s.largest(); done += c) {
    for (int r = 0; r < ranks; ++r) {
      const int64_t n = piece(r, done);
      for_each_part(s.runs[size_t(r)], done, n, [&](int64_t flat, int64_t at, int64_t k) {
        ops::cast(grad_flat.slice(flat, k), in.slice(r * c + at, k), k);
      });
      if (n < c) ops::zero(in.slice(r * c + n, c - n));
    }
    comm.reduce_scatter(in, out);
    for_each_part(s.runs[size_t(me)], done, piece(me, done),
                  [&](int64_t flat, int64_t at, int64_t k) {
                    ops::cast(out.slice(at, k), grad_flat.slice(flat, k), k);
                  });
  }
}

double sum_over_ranks(dist::Comm& comm, double x) {
  const int ranks = comm.size();
  if (ranks == 1) return x;
  core::Buffer b(comm.device(), core::DType::f64, {ranks}, "ZeRO per-rank sums");
  const core::View mine = b.view().slice(comm.rank(), 1);
  ops::copy_from_host(mine, &x);
  comm.all_gather(mine, b);
  std::vector<double> all(size_t(ranks), 0.0);
  ops::copy_to_host(b, all.data());
  double sum = 0;
  for (double v : all) sum += v;  // rank order, on every rank
  return sum;
}

namespace {

// The views of one buffer that the tensors of a shard occupy, spanned from the first tensor's to
// the end of the last one's (the buffers lay tensors out in offset order).
struct Span {
  core::View first, last;
  void add(const core::View& v) {
    if (v.data == nullptr || v.numel() == 0) return;
    if (first.data == nullptr) first = v;
    last = v;
  }
  // The span as one view; u16 (remainders) travels as bf16, the same bytes (broadcast moves
  // bytes; the communicators' dtype list has no u16).
  core::View view() const {
    const size_t es = core::dtype_size(first.dtype);
    const auto* a = static_cast<const char*>(first.data);
    const auto* b = static_cast<const char*>(last.data) + last.bytes();
    const core::DType dt = first.dtype == core::DType::u16 ? core::DType::bf16 : first.dtype;
    return core::View(first.data, dt, first.device, {int64_t(size_t(b - a) / es)});
  }
};

}  // namespace

void broadcast_shard_weights(dist::Comm& comm, const ZeroShards& s, const model::Params& p,
                             const TensorFilter& covers) {
  // Tensors in offset order; a run of consecutive covered tensors of one owner is one span per
  // buffer (master, compute copy, remainder), broadcast from the owner when the run ends.
  std::array<Span, 3> spans;
  int owner = -1;
  const auto flush = [&] {
    for (Span& sp : spans)
      if (owner >= 0 && sp.first.data != nullptr) comm.broadcast(sp.view(), owner);
    spans = {};
    owner = -1;
  };
  for (const auto& name : p.names()) {
    if (covers && !covers(name)) {
      flush();
      continue;
    }
    const ops::AdamWTensor t = p.adamw_tensor(name);
    const int r = s.owner(p.entry(name).offset);
    if (r != owner) flush();
    owner = r;
    // Offloaded masters stay with their owner (the others keep none of them), except the MoE
    // routers' fp32 masters, which stay on the device where the model reads them. The same
    // choice on every rank: it depends on the options and the layout alone.
    const model::StateOptions& o = p.options();
    const bool host_fp32 = o.offload_master && !o.master_remainder;
    if (!host_fp32 || p.entry(name).router_offset >= 0) spans[0].add(t.master);
    spans[1].add(t.compute_copy);
    if (!o.offload_master) spans[2].add(t.remainder);
  }
  flush();
}

void moment_to_host(const core::View& x, float* out) {
  if (x.dtype != core::DType::bf16) return ops::copy_to_host(x, out);
  const int64_t n = x.numel();
  std::vector<uint16_t> h(static_cast<size_t>(n));
  ops::copy_to_host(x, h.data());
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = core::bf16_to_f32(h[size_t(i)]);
}

void moment_from_host(const float* in, const core::View& x) {
  if (x.dtype != core::DType::bf16) return ops::copy_from_host(x, in);
  const int64_t n = x.numel();
  std::vector<uint16_t> h(static_cast<size_t>(n));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) h[size_t(i)] = core::bf16_round_nearest_even(in[i]);
  ops::copy_from_host(x, h.data());
}

}  // namespace deltatron::train
