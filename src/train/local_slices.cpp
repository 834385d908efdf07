// This rank's slices of the parameters under expert and tensor parallelism (local_slices.h).
#include "train/local_slices.h"

#include <algorithm>
#include <cstdio>

#include "core/error.h"
#include "model/expert_parallel.h"
#include "model/footprint.h"
#include "model/tensor_parallel.h"

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
