// The one batch type: a pack of samples in THD layout with per-sample alignment padding.
#pragma once

#include <cstdint>
#include <vector>

#include "core/segments.h"
#include "data/sample.h"

namespace deltatron::data {

// A pack of S samples laid end to end. Sample s owns the physical span
// [cu_seqlens_padded[s], cu_seqlens_padded[s+1]); its len_s real tokens come first, alignment
// padding trails. A padded (B, T) batch is a pack whose spans all have length T.
//   N                  physical tokens, = cu_seqlens_padded[S]
//   input_ids   [N]    token ids; padding slots hold 0 (any valid id; they never reach real tokens)
//   labels      [N]    HF-aligned labels of each sample; -100 on padding
//   targets     [N]    what position t is trained to predict: labels[t+1] of the same sample,
//                      -100 at each sample's last token and on padding (the loss mask is
//                      targets != -100)
//   position_ids [3N]  three MRoPE rows (T, H, W), equal for text; restart at 0 in every sample
//                      (a sample's own rows when it has them; its padding continues from its
//                      largest position + 1)
//   pixel_values [P * patch_dim], image_grid_thw [I * 3]: the samples' images in pack order
//                      (Sample's fields concatenated; empty for text)
//   cu_seqlens  [S+1]  cumulative real lengths (no padding)
//   cu_seqlens_padded [S+1] physical boundaries: the segments every token-mixing op sees
//   mtp_input_ids [N]  the MTP head's inputs and labels (spec 3.2): input_ids and targets rolled
//   mtp_targets   [N]  left by one inside each physical segment (roll_within_segments), with 0
//                      and -100 at each segment's last slot; rolled once, here
//   is_pad      [N]    1 on padding slots (excluded from router statistics), 0 on real tokens
//   sample_index [S]   caller's index of each sample (e.g. its line in the dataset)
struct Pack {
  int64_t N = 0;
  std::vector<int32_t> input_ids, labels, targets, position_ids;
  std::vector<float> pixel_values;
  std::vector<int32_t> image_grid_thw;
  std::vector<int32_t> cu_seqlens, cu_seqlens_padded;
  std::vector<int32_t> mtp_input_ids, mtp_targets;
  std::vector<uint8_t> is_pad;
  std::vector<int64_t> sample_index;

  int num_samples() const { return static_cast<int>(sample_index.size()); }
  core::Segments segments() const {
    return core::Segments{cu_seqlens_padded.data(), num_samples()};
  }
};

// Packs the given samples in order. Each sample's span is padded up to a multiple of
// `align` (>= 1). index[i] is recorded as sample_index[i].
Pack make_pack(const std::vector<const Sample*>& samples, const std::vector<int64_t>& index,
               int64_t align = 1);

// Shift left by one inside each segment of `cu` (boundaries, cu.back() == values.size()):
// out[t] = values[t+1] when t+1 lies in t's segment, else `fill` (the last slot of every
// segment). Used for the MTP inputs and labels, which must never cross a sample boundary:
// values [1,2,3,4,5] with cu [0,3,5] give [2,3,fill,5,fill].
std::vector<int32_t> roll_within_segments(const std::vector<int32_t>& values,
                                          const std::vector<int32_t>& cu, int32_t fill);

// Greedy in-order grouping: consecutive items share a pack while the total of their lengths,
// each rounded up to a multiple of align, stays <= budget; an item longer than the budget gets
// a pack of its own. Returns positions into `lengths`.
std::vector<std::vector<int64_t>> group_in_order(const std::vector<int64_t>& lengths,
                                                 int64_t budget, int64_t align = 1);

}  // namespace deltatron::data
