// Qwen3.5 image preprocessing: config, smart_resize, resize, normalise, patchify
// (contract in image_preprocess.h).
#include "data/image_preprocess.h"

#include <cfenv>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/image_resize.h"

namespace deltatron::data {

ImageProcessorConfig ImageProcessorConfig::from_json(const nlohmann::json& j,
                                                     const std::string& name) {
  DT_CHECK(j.is_object(), name, ": the preprocessor config is not a JSON object");
  ImageProcessorConfig c;
  try {
    auto get_int = [&](const char* key, int64_t& out) {
      if (j.contains(key) && !j[key].is_null()) out = j[key].get<int64_t>();
    };
    get_int("patch_size", c.patch_size);
    get_int("temporal_patch_size", c.temporal_patch_size);
    get_int("merge_size", c.merge_size);
    if (j.contains("size") && j["size"].is_object()) {
      const auto& s = j["size"];
      if (s.contains("shortest_edge")) c.min_pixels = s["shortest_edge"].get<int64_t>();
      if (s.contains("longest_edge")) c.max_pixels = s["longest_edge"].get<int64_t>();
    }
    get_int("min_pixels", c.min_pixels);
    get_int("max_pixels", c.max_pixels);
    if (j.contains("do_resize")) c.do_resize = j["do_resize"].get<bool>();
    if (j.contains("do_rescale")) c.do_rescale = j["do_rescale"].get<bool>();
    if (j.contains("do_normalize")) c.do_normalize = j["do_normalize"].get<bool>();
    if (j.contains("rescale_factor")) c.rescale_factor = j["rescale_factor"].get<double>();
    if (j.contains("resample") && !j["resample"].is_null())
      DT_CHECK(j["resample"].get<int64_t>() == 3, name, ": resample ", j["resample"].dump(),
               " is not supported (only 3, bicubic)");
    for (const char* key : {"image_mean", "image_std"}) {
      if (!j.contains(key)) continue;
      auto& out = std::string(key) == "image_mean" ? c.image_mean : c.image_std;
      const auto& v = j[key];
      if (v.is_number()) {
        out.fill(v.get<float>());
      } else {
        DT_CHECK(v.is_array() && v.size() == 3, name, ": ", key, " must be a number or 3 numbers");
        for (size_t i = 0; i < 3; ++i) out[i] = v[i].get<float>();
      }
    }
  } catch (const nlohmann::json::exception& e) {
    core::fail(name, ": bad preprocessor config value (", e.what(), ")");
  }
  DT_CHECK(c.patch_size > 0 && c.temporal_patch_size > 0 && c.merge_size > 0, name,
           ": patch_size, temporal_patch_size and merge_size must be positive");
  DT_CHECK(c.min_pixels > 0 && c.max_pixels >= c.min_pixels, name, ": min_pixels ", c.min_pixels,
           " and max_pixels ", c.max_pixels, " must satisfy 0 < min <= max");
  for (float s : c.image_std) DT_CHECK(s != 0.0f, name, ": image_std has a zero");
  return c;
}

ImageProcessorConfig ImageProcessorConfig::load(const std::string& path) {
  std::ifstream in(path);
  DT_CHECK(in.good(), path, ": cannot open the preprocessor config");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    core::fail(path, ": not valid JSON (", e.what(), ")");
  }
  return from_json(j, path);
}

std::pair<int64_t, int64_t> smart_resize(int64_t height, int64_t width, int64_t factor,
                                         int64_t min_pixels, int64_t max_pixels) {
  DT_CHECK(height > 0 && width > 0 && factor > 0, "smart_resize: image ", width, "x", height,
           ", factor ", factor);
  const double ratio = double(std::max(height, width)) / double(std::min(height, width));
  DT_CHECK(ratio <= 200, "image of ", width, "x", height, ": aspect ratio ", ratio,
           " is above 200, which the Qwen image processor refuses");
  // Python's round(): half to even. nearbyint rounds so under the default FE_TONEAREST mode.
  DT_CHECK(std::fegetround() == FE_TONEAREST,
           "smart_resize: the FPU rounding mode is not "
           "round-to-nearest");
  const double f = double(factor);
  int64_t h = int64_t(std::nearbyint(double(height) / f)) * factor;
  int64_t w = int64_t(std::nearbyint(double(width) / f)) * factor;
  const double area = double(height) * double(width);  // exact below 2^53
  if (h * w > max_pixels) {
    const double beta = std::sqrt(area / double(max_pixels));
    h = std::max(factor, int64_t(std::floor(double(height) / beta / f)) * factor);
    w = std::max(factor, int64_t(std::floor(double(width) / beta / f)) * factor);
  } else if (h * w < min_pixels) {
    const double beta = std::sqrt(double(min_pixels) / area);
    h = int64_t(std::ceil(double(height) * beta / f)) * factor;
    w = int64_t(std::ceil(double(width) * beta / f)) * factor;
  }
  return {h, w};
}

ImageRGB8 resize_for_processor(const ImageRGB8& image, const ImageProcessorConfig& cfg) {
  if (!cfg.do_resize) return image;
  const auto [h, w] =
      smart_resize(image.height, image.width, cfg.factor(), cfg.min_pixels, cfg.max_pixels);
  return resize_bicubic(image, w, h);
}

ImagePatches patchify_image(const ImageRGB8& img, const ImageProcessorConfig& cfg) {
  const int64_t P = cfg.patch_size, T = cfg.temporal_patch_size, M = cfg.merge_size;
  DT_CHECK(img.height % (P * M) == 0 && img.width % (P * M) == 0, "image of ", img.width, "x",
           img.height, ": sides must be multiples of patch_size * merge_size = ", P * M);
  ImagePatches out;
  out.grid_t = 1;
  out.grid_h = img.height / P;
  out.grid_w = img.width / P;
  out.patch_dim = 3 * T * P * P;
  out.pixel_values_NK.resize(size_t(out.num_patches() * out.patch_dim));

  // The normalised value of every possible byte, per channel (the same float operations as
  // HF's rescale (in double, then to float32) and normalize (float32)).
  std::array<std::array<float, 256>, 3> lut;
  for (int ch = 0; ch < 3; ++ch) {
    for (int u = 0; u < 256; ++u) {
      float v = cfg.do_rescale ? float(double(u) * cfg.rescale_factor) : float(u);
      if (cfg.do_normalize) v = (v - cfg.image_mean[size_t(ch)]) / cfg.image_std[size_t(ch)];
      lut[size_t(ch)][size_t(u)] = v;
    }
  }
  const int64_t bw_count = out.grid_w / M;
  for (int64_t n = 0; n < out.num_patches(); ++n) {
    const int64_t mw = n % M, mh = (n / M) % M, bw = (n / (M * M)) % bw_count,
                  bh = (n / (M * M)) / bw_count;
    const int64_t r = M * bh + mh, c = M * bw + mw;
    float* row = out.pixel_values_NK.data() + n * out.patch_dim;
    for (int64_t ch = 0; ch < 3; ++ch) {
      for (int64_t t = 0; t < T; ++t) {
        float* dst = row + (ch * T + t) * P * P;
        for (int64_t py = 0; py < P; ++py) {
          const uint8_t* src = img.rgb_HW3.data() + ((r * P + py) * img.width + c * P) * 3 + ch;
          for (int64_t px = 0; px < P; ++px) dst[py * P + px] = lut[size_t(ch)][src[px * 3]];
        }
      }
    }
  }
  return out;
}

ImagePatches preprocess_image(const ImageRGB8& image, const ImageProcessorConfig& cfg) {
  return patchify_image(resize_for_processor(image, cfg), cfg);
}

int64_t image_pad_tokens(const ImagePatches& p, int64_t merge_size) {
  return p.num_patches() / (merge_size * merge_size);
}

}  // namespace deltatron::data
