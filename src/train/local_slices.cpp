// This rank's slices of the parameters under expert and tensor parallelism (local_slices.h).
#include "train/local_slices.h"

#include <algorithm>
#include <cstdio>
#include <memory>

#include "core/error.h"
#include "model/expert_parallel.h"
#include "model/footprint.h"
#include "model/params.h"
#include "model/tensor_parallel.h"
#include "train/zero3.h"

namespace deltatron::train {

io::SliceFn local_slices(const ExpertGroups& eg, const TensorGroups& tg) {
  if (!eg.on() && !tg.on()) return {};
  const bool ep = eg.on();
  const int64_t El = ep ? eg.model.num_local : 0, e0 = ep ? eg.model.first : 0;
  const int64_t E = ep ? El * eg.group->size() : 0;
  const bool tp = tg.on();
  const int64_t r = tp ? tg.model.rank() : 0, P = tp ? tg.model.size() : 1;
  return [=](const model::Config& c, const std::string& name,
             const core::Shape& full) -> std::optional<io::ParamSlice> {
    const bool expert = ep && model::is_routed_expert_tensor(name);
    const bool sharded = tp && model::is_tp_sharded(c, name);
    if (!expert && !sharded) return std::nullopt;
    io::ParamSlice s;
    s.shape = full;
    int64_t base = 0;  // the first element of this rank's experts
    if (expert) {      // experts [e0, e0 + El): one run of the [E, ...] tensor
      DT_CHECK(!full.empty() && full[0] == E, name, ": shape ", core::shape_str(full),
               ", expected ", E, " experts");
      const int64_t per = core::numel(full) / E;
      s.shape[0] = El;
      base = e0 * per;
      if (!sharded) {
        s.runs.push_back({base, El * per});
        return s;
      }
    }
    // tp (with ep: of this rank's experts, a [El, ...] tensor starting at `base`).
    const core::Shape whole = s.shape;
    s.shape.at(size_t(model::tp_split(c, name).dim)) /= P;
    for (const auto& [offset, count] : model::tp_runs(c, name, whole, r, P))
      s.runs.push_back({base + offset, count});
    return s;
  };
}

std::vector<model::ParamSpec> local_specs(const model::Config& c, const io::SliceFn& base) {
  std::vector<model::ParamSpec> out;
  for (model::ParamSpec s : model::param_specs(c)) {
    if (base)
      if (const auto sl = base(c, s.name, s.shape)) s.shape = sl->shape;
    out.push_back(std::move(s));
  }
  return out;
}

io::SliceFn zero3_slices(const model::Config& c, const io::SliceFn& base, int ranks, int rank,
                         int expert_ranks, int expert_rank, const Zero3Read& read) {
  // The layout of the engine's store: the local tensors, a vision tower held apart left out
  // (model::Model holds the tensors it does not train apart; a LoRA run's frozen base holds all).
  model::NameFilter keep;
  if (!read.lora_base &&
      (c.vision_mode == model::VisionMode::frozen || c.vision_mode == model::VisionMode::merger))
    keep = [c](const std::string& name) { return model::vision_trains(c, name); };
  const bool whole_routers = read.lora_base && read.bf16;
  model::StateOptions layout_only;
  layout_only.gathered = true;  // names and shapes alone: nothing allocated
  const model::Params p(core::Device::cpu, core::DType::f32,
                        model::ParamSource{local_specs(c, base), {}}, layout_only, keep);
  const auto l = std::make_shared<const Zero3Layout>(
      zero3_layout(p, c, ranks, rank, expert_ranks, expert_rank));
  return [l, base, whole_routers](const model::Config& cc, const std::string& name,
                                  const core::Shape& full) -> std::optional<io::ParamSlice> {
    std::optional<io::ParamSlice> local = base ? base(cc, name, full) : std::nullopt;
    const auto it = l->index.find(name);
    if (it == l->index.end()) return local;  // held apart: as base gives it
    // A frozen bf16 store keeps the routers whole (Zero3Store): the local tensor.
    if (whole_routers && model::keeps_f32_weight(name)) return local;
    const Zero3Layout::Tensor& t = l->tensors[it->second];
    const Zero3Layout::Unit& u = l->units[size_t(t.unit)];
    const int64_t r = l->rank_of(u);
    const int64_t numel = local ? core::numel(local->shape) : core::numel(full);
    DT_CHECK(numel == t.numel, name, ": ", numel, " local elements, the ZeRO 3 layout has ",
             t.numel);
    const int64_t a = std::max(t.offset, r * u.piece);
    const int64_t n = std::max<int64_t>(0, std::min(t.offset + t.numel, (r + 1) * u.piece) - a);
    const int64_t from = a - t.offset;  // the piece: local elements [from, from + n)
    io::ParamSlice s;
    s.shape = {n};
    if (!local) {
      if (n > 0) s.runs.push_back({from, n});
      return s;
    }
    int64_t pos = 0;  // the local tensor is the concatenation of base's runs
    for (const io::ElementRun& run : local->runs) {
      const int64_t lo = std::max(from, pos), hi = std::min(from + n, pos + run.count);
      if (lo < hi) s.runs.push_back({run.offset + (lo - pos), hi - lo});
      pos += run.count;
    }
    return s;
  };
}

io::SliceFn read_slices(const model::Config& c, const io::SliceFn& local, bool pieces,
                        const Parallel& dp, const ExpertGroups& eg, const Zero3Read& read) {
  if (!pieces) return local;
  const dist::Comm* same = eg.same_experts.get();
  return zero3_slices(c, local, dp.comm->size(), dp.comm->rank(), same ? same->size() : 0,
                      same ? same->rank() : 0, read);
}

model::ParamSource piece_source(const model::Config& c, const io::SliceFn& local,
                                const model::TensorMap& params) {
  return model::ParamSource{local_specs(c, local), [&params](const model::ParamSpec& s) {
                              const auto it = params.find(s.name);
                              DT_CHECK(it != params.end(), "the checkpoint has no tensor ", s.name);
                              return it->second;
                            }};
}

LocalSlice local_slice(const io::SliceFn& f, const model::Config& c) {
  if (!f) return {};
  return [f, c](const std::string& name, const core::Shape& full) { return f(c, name, full); };
}

void keep_slices(model::TensorMap& t, const io::SliceFn& f, const model::Config& c) {
  if (!f) return;
  for (auto& [name, x] : t)
    if (const auto s = f(c, name, x.shape)) x = io::take_slice(x, *s, name);
}

void print_load_stats(const char* what, const Parallel& par, const io::LoadStats& s,
                      const model::Config& c) {
  std::fprintf(stderr,
               "%s: rank %d of %d: loaded its share of the weights: kept %lld bytes, loader peak "
               "%lld bytes (whole model %lld bytes in f32)\n",
               what, par.rank(), par.size(), static_cast<long long>(s.kept_bytes),
               static_cast<long long>(std::max(s.peak_bytes, s.kept_bytes)),
               static_cast<long long>(4 * model::param_count(c)));
}

}  // namespace deltatron::train
