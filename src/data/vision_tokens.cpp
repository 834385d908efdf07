// Vision-language samples at the token level: placeholder expansion, label masking, MRoPE
// positions (HF's get_rope_index) and truncation that never splits an image.
#include <algorithm>

#include "core/error.h"
#include "data/vision_data.h"

namespace deltatron::data {

namespace {

int64_t tokens_of(const int32_t* thw, int64_t merge_size) {
  return int64_t(thw[0]) * thw[1] * thw[2] / (merge_size * merge_size);
}

}  // namespace

void expand_image_tokens(Sample& s, std::vector<LoadedImage> images, const VisionTokenIds& ids,
                         int64_t merge_size) {
  DT_CHECK(ids.image_pad >= 0 && ids.vision_start >= 0 && ids.vision_end >= 0,
           "images, but the tokenizer has no <|image_pad|> / <|vision_start|> / <|vision_end|>");
  const int64_t pads = std::count(s.input_ids.begin(), s.input_ids.end(), ids.image_pad);
  DT_CHECK(pads == static_cast<int64_t>(images.size()), "the rendered sample has ", pads,
           " <|image_pad|> token(s) but the row has ", images.size(),
           " image(s) (\"<|image_pad|>\" typed in the text, or an image inside a think block the "
           "template drops?)");
  std::vector<int32_t> ids_out, labels_out;
  s.image_grid_thw.clear();
  s.images.clear();
  s.pixel_values.clear();
  size_t next = 0;
  for (size_t t = 0; t < s.input_ids.size(); ++t) {
    const int32_t id = s.input_ids[t];
    if (id != ids.image_pad) {
      const bool vision = id == ids.vision_start || id == ids.vision_end;
      ids_out.push_back(id);
      labels_out.push_back(vision ? kIgnoreIndex : s.labels[t]);
      continue;
    }
    LoadedImage& im = images[next++];
    int32_t thw[3];
    for (int k = 0; k < 3; ++k) thw[k] = static_cast<int32_t>(im.grid_thw[k]);
    DT_CHECK(thw[1] % merge_size == 0 && thw[2] % merge_size == 0, "image ", im.ref.path, ": grid ",
             thw[1], " x ", thw[2], " is not a multiple of merge_size ", merge_size);
    const int64_t n = tokens_of(thw, merge_size);
    ids_out.insert(ids_out.end(), n, ids.image_pad);
    labels_out.insert(labels_out.end(), n, kIgnoreIndex);
    s.image_grid_thw.insert(s.image_grid_thw.end(), thw, thw + 3);
    s.pixel_values.insert(s.pixel_values.end(), im.pixel_values.begin(), im.pixel_values.end());
    s.images.push_back(std::move(im.ref));
  }
  s.input_ids = std::move(ids_out);
  s.labels = std::move(labels_out);
  s.position_ids = mrope_positions(s.input_ids, s.image_grid_thw, ids.image_pad, merge_size);
}

std::vector<int32_t> mrope_positions(const std::vector<int32_t>& input_ids,
                                     const std::vector<int32_t>& image_grid_thw,
                                     int32_t image_pad_id, int64_t merge_size) {
  const int64_t L = static_cast<int64_t>(input_ids.size());
  const int64_t images = static_cast<int64_t>(image_grid_thw.size()) / 3;
  std::vector<int32_t> pos(3 * L);
  int64_t cur = 0, next = 0;
  for (int64_t t = 0; t < L;) {
    if (input_ids[t] != image_pad_id) {
      for (int r = 0; r < 3; ++r) pos[r * L + t] = static_cast<int32_t>(cur);
      ++cur;
      ++t;
      continue;
    }
    DT_CHECK(next < images, "mrope_positions: more image blocks than the ", images, " grids");
    const int32_t* thw = &image_grid_thw[3 * next++];
    const int64_t gt = thw[0], gh = thw[1] / merge_size, gw = thw[2] / merge_size;
    DT_CHECK(t + gt * gh * gw <= L, "mrope_positions: image ", next - 1, " needs ", gt * gh * gw,
             " tokens, the sample ends after ", L - t);
    for (int64_t f = 0; f < gt; ++f)
      for (int64_t h = 0; h < gh; ++h)
        for (int64_t w = 0; w < gw; ++w, ++t) {
          DT_CHECK(input_ids[t] == image_pad_id, "mrope_positions: image ", next - 1,
                   " has fewer <|image_pad|> tokens than its grid ", gt, "x", gh, "x", gw);
          pos[t] = static_cast<int32_t>(cur + f);
          pos[L + t] = static_cast<int32_t>(cur + h);
          pos[2 * L + t] = static_cast<int32_t>(cur + w);
        }
    cur += std::max(gh, gw);
  }
  DT_CHECK(next == images, "mrope_positions: ", images, " grids but ", next, " image blocks");
  return pos;
}

void truncate_sample(Sample& s, int64_t max_len, const VisionTokenIds& ids, int64_t merge_size) {
  const int64_t L = static_cast<int64_t>(s.input_ids.size());
  if (max_len < 0 || max_len >= L) return;
  int64_t cut = max_len;
  size_t kept_images = 0, kept_patches = 0;
  if (!s.image_grid_thw.empty()) {
    // Walk the image blocks: one whose <|vision_end|> lies at or past the cut moves the cut to
    // its <|vision_start|> (or the first pad when the start token is missing).
    int64_t t = 0;
    size_t k = 0;
    while (t < L && k < s.image_grid_thw.size() / 3) {
      if (s.input_ids[t] != ids.image_pad) {
        ++t;
        continue;
      }
      const int32_t* thw = &s.image_grid_thw[3 * k];
      const int64_t n = tokens_of(thw, merge_size);
      const int64_t begin = t > 0 && s.input_ids[t - 1] == ids.vision_start ? t - 1 : t;
      const int64_t end = t + n < L && s.input_ids[t + n] == ids.vision_end ? t + n + 1 : t + n;
      if (end > cut) {
        cut = std::min(cut, begin);
        break;
      }
      kept_patches += static_cast<size_t>(thw[0]) * thw[1] * thw[2];
      ++kept_images;
      ++k;
      t += n;
    }
    size_t total_patches = 0;
    for (size_t i = 0; i < s.image_grid_thw.size(); i += 3)
      total_patches += static_cast<size_t>(s.image_grid_thw[i]) * s.image_grid_thw[i + 1] *
                       s.image_grid_thw[i + 2];
    const size_t patch_dim = total_patches ? s.pixel_values.size() / total_patches : 0;
    s.image_grid_thw.resize(3 * kept_images);
    if (s.images.size() > kept_images) s.images.resize(kept_images);
    if (!s.pixel_values.empty()) s.pixel_values.resize(kept_patches * patch_dim);
  }
  if (!s.position_ids.empty()) {
    std::vector<int32_t> pos(3 * cut);
    for (int r = 0; r < 3; ++r)
      std::copy_n(s.position_ids.begin() + r * L, cut, pos.begin() + r * cut);
    s.position_ids = std::move(pos);
  }
  s.input_ids.resize(cut);
  s.labels.resize(cut);
}

}  // namespace deltatron::data
