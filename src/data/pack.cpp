// Builds packs (THD batches) from samples: boundaries, targets, positions, padding mask.
#include "data/pack.h"

#include <algorithm>

#include "core/error.h"

namespace deltatron::data {

namespace {
int64_t round_up(int64_t n, int64_t a) { return (n + a - 1) / a * a; }
}  // namespace

Pack make_pack(const std::vector<const Sample*>& samples, const std::vector<int64_t>& index,
               int64_t align) {
  DT_CHECK(align >= 1, "pack alignment must be >= 1, got ", align);
  DT_CHECK(samples.size() == index.size(), "make_pack: ", samples.size(), " samples but ",
           index.size(), " indices");
  Pack p;
  int64_t total = 0;
  for (const Sample* s : samples)
    total += round_up(static_cast<int64_t>(s->input_ids.size()), align);
  DT_CHECK(total < (int64_t(1) << 31), "pack of ", total, " tokens exceeds the int32 range");
  p.N = total;
  p.input_ids.assign(total, 0);
  p.labels.assign(total, kIgnoreIndex);
  p.targets.assign(total, kIgnoreIndex);
  p.position_ids.assign(3 * total, 0);
  p.is_pad.assign(total, 1);
  p.cu_seqlens.push_back(0);
  p.cu_seqlens_padded.push_back(0);
  int64_t off = 0, real = 0;
  for (size_t i = 0; i < samples.size(); ++i) {
    const Sample& s = *samples[i];
    const int64_t len = static_cast<int64_t>(s.input_ids.size());
    DT_CHECK(s.labels.size() == s.input_ids.size(), "sample ", index[i], ": labels length ",
             s.labels.size(), " != input_ids length ", len);
    const bool own_pos = !s.position_ids.empty();
    DT_CHECK(!own_pos || static_cast<int64_t>(s.position_ids.size()) == 3 * len, "sample ",
             index[i], ": position_ids has ", s.position_ids.size(), " values, expected 3 x ", len);
    int32_t next = 0;  // padding positions continue after the sample's largest one
    if (own_pos)
      for (int32_t v : s.position_ids) next = std::max(next, v + 1);
    const int64_t span = round_up(len, align);
    for (int64_t t = 0; t < span; ++t) {
      const int64_t n = off + t;
      for (int r = 0; r < 3; ++r)
        p.position_ids[r * total + n] = !own_pos  ? static_cast<int32_t>(t)
                                        : t < len ? s.position_ids[r * len + t]
                                                  : next + static_cast<int32_t>(t - len);
      if (t < len) {
        p.input_ids[n] = s.input_ids[t];
        p.labels[n] = s.labels[t];
        p.targets[n] = t + 1 < len ? s.labels[t + 1] : kIgnoreIndex;
        p.is_pad[n] = 0;
      }
    }
    off += span;
    real += len;
    p.cu_seqlens.push_back(static_cast<int32_t>(real));
    p.cu_seqlens_padded.push_back(static_cast<int32_t>(off));
    p.sample_index.push_back(index[i]);
    p.pixel_values.insert(p.pixel_values.end(), s.pixel_values.begin(), s.pixel_values.end());
    p.image_grid_thw.insert(p.image_grid_thw.end(), s.image_grid_thw.begin(),
                            s.image_grid_thw.end());
  }
  p.mtp_input_ids = roll_within_segments(p.input_ids, p.cu_seqlens_padded, 0);
  p.mtp_targets = roll_within_segments(p.targets, p.cu_seqlens_padded, kIgnoreIndex);
  return p;
}

std::vector<int32_t> roll_within_segments(const std::vector<int32_t>& values,
                                          const std::vector<int32_t>& cu, int32_t fill) {
  DT_CHECK(!cu.empty() && cu.front() == 0 && cu.back() == static_cast<int32_t>(values.size()),
           "roll_within_segments: boundaries do not cover the ", values.size(), " values");
  std::vector<int32_t> out(values.size(), fill);
  for (size_t s = 0; s + 1 < cu.size(); ++s)
    for (int32_t t = cu[s]; t + 1 < cu[s + 1]; ++t) out[t] = values[t + 1];
  return out;
}

std::vector<std::vector<int64_t>> group_in_order(const std::vector<int64_t>& lengths,
                                                 int64_t budget, int64_t align) {
  DT_CHECK(budget >= 1, "pack token budget must be >= 1, got ", budget);
  std::vector<std::vector<int64_t>> groups;
  int64_t used = 0;
  for (int64_t i = 0; i < static_cast<int64_t>(lengths.size()); ++i) {
    const int64_t span = round_up(lengths[i], align);
    if (groups.empty() || used + span > budget) {
      groups.emplace_back();
      used = 0;
    }
    groups.back().push_back(i);
    used += span;
  }
  return groups;
}

}  // namespace deltatron::data
