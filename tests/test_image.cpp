// Tests of image decoding (vs Pillow), Qwen3.5 preprocessing (vs the HF image processor) and
// the spec's numbers (docs/vision.md, /work/shared/spec/qwen35-vl.md sections 2 and 8).
//
// Fixtures: tests/data/images, written by tools/golden/make_image_fixtures.py with Pillow 13.0
// and transformers 5.17's Qwen2VLImageProcessorPil (index.json names the versions): the images,
// Pillow's Image.open(p).convert("RGB") bytes, Pillow's bicubic resize to the smart_resize size
// (bytes or their FNV-1a 64), the processor's grid_thw / patch / token counts, 128 sampled
// pixel_values per case plus their sum, all pixel_values of one tiny case, and HF's smart_resize
// over 26 sizes x 5 configs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/image.h"
#include "data/image_preprocess.h"
#include "data/image_resize.h"
#include "test_util.h"

using namespace deltatron;
using data::ImageProcessorConfig;
using data::ImageRGB8;
using dt_test::TempDir;
using namespace std::string_literals;

namespace {

const std::string kDir = std::string(DT_TEST_DATA) + "/images/";

const nlohmann::json& index_json() {
  static const nlohmann::json j = nlohmann::json::parse(dt_test::read_file(kDir + "index.json"));
  return j;
}

std::vector<uint8_t> bytes_of(const std::string& path) {
  const std::string s = dt_test::read_file(path);
  EXPECT_FALSE(s.empty()) << path << " is missing or empty";
  return {s.begin(), s.end()};
}

std::string fnv1a64(const std::vector<uint8_t>& b) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (uint8_t x : b) h = (h ^ x) * 0x100000001B3ull;
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

// Exact byte comparison of two RGB images; on mismatch, the count and the worst pixel.
void expect_same_rgb(const ImageRGB8& got, const std::vector<uint8_t>& want, int64_t w, int64_t h,
                     const std::string& what) {
  ASSERT_EQ(got.width, w) << what;
  ASSERT_EQ(got.height, h) << what;
  ASSERT_EQ(got.rgb_HW3.size(), want.size()) << what;
  int64_t differing = 0, worst = -1, worst_d = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const int64_t d = std::abs(int(got.rgb_HW3[i]) - int(want[i]));
    if (d == 0) continue;
    ++differing;
    if (d > worst_d) worst_d = d, worst = int64_t(i);
  }
  EXPECT_EQ(differing, 0) << what << ": " << differing << " of " << want.size()
                          << " bytes differ; worst at pixel (x " << (worst / 3) % w << ", y "
                          << worst / 3 / w << ", channel " << worst % 3 << "): got "
                          << int(got.rgb_HW3[size_t(worst < 0 ? 0 : worst)]) << ", Pillow "
                          << int(want[size_t(worst < 0 ? 0 : worst)]);
}

ImageProcessorConfig config_with(int64_t min_pixels, int64_t max_pixels) {
  ImageProcessorConfig c;
  c.min_pixels = min_pixels;
  c.max_pixels = max_pixels;
  return c;
}

}  // namespace

// ---- decoding ------------------------------------------------------------------------------

TEST(ImageDecode, MatchesPillowConvertRgb) {
  const auto& images = index_json()["images"];
  ASSERT_GE(images.size(), 20u);
  for (const auto& e : images) {
    const std::string file = e["file"];
    SCOPED_TRACE(file + " (" + e["note"].get<std::string>() + ")");
    const ImageRGB8 img = data::load_image(kDir + file);
    ASSERT_EQ(img.width, e["width"].get<int64_t>());
    ASSERT_EQ(img.height, e["height"].get<int64_t>());
    if (e.contains("rgb"))
      expect_same_rgb(img, bytes_of(kDir + e["rgb"].get<std::string>()), img.width, img.height,
                      file);
    EXPECT_EQ(fnv1a64(img.rgb_HW3), e["rgb_fnv1a64"].get<std::string>()) << file;
  }
}

TEST(ImageDecode, FormatFromMagicBytesNotName) {
  TempDir dir("image");
  // A PNG named .jpg, a JPEG named .webp, a WebP named .png: decoded by content.
  const std::vector<std::pair<std::string, std::string>> swaps = {
      {"rgb_37x53.png", "a.jpg"}, {"photo_97x61.jpg", "b.webp"}, {"lossy_41x27.webp", "c.png"}};
  for (const auto& [src, dst] : swaps) {
    const std::string path = dir.write(dst, dt_test::read_file(kDir + src));
    const ImageRGB8 a = data::load_image(path), b = data::load_image(kDir + src);
    EXPECT_EQ(a.rgb_HW3, b.rgb_HW3) << src << " as " << dst;
  }
  const auto fmt = [](std::string s) {
    return data::image_format_of({reinterpret_cast<const uint8_t*>(s.data()), s.size()});
  };
  EXPECT_EQ(fmt("\xFF\xD8\xFF\xE0"s), data::ImageFormat::jpeg);
  EXPECT_EQ(fmt("\x89PNG\r\n\x1a\n"s), data::ImageFormat::png);
  EXPECT_EQ(fmt("RIFF\x10\0\0\0WEBPVP8 "s), data::ImageFormat::webp);
  EXPECT_EQ(fmt("RIFF\x10\0\0\0WAVEfmt "s), data::ImageFormat::unknown);
  EXPECT_EQ(fmt("\x89PNG"s), data::ImageFormat::unknown);
  EXPECT_EQ(fmt(""), data::ImageFormat::unknown);
}

TEST(ImageDecode, ErrorsNameTheFileAndLine) {
  TempDir dir("image");
  const std::string where = "train.jsonl:7";
  using dt_test::expect_error;
  const std::string missing = dir / "missing.jpg";
  expect_error([&] { data::load_image(missing); }, {missing, "cannot open"});
  expect_error([&] { data::load_image(missing, where); }, {where + ": ", missing, "cannot open"});
  expect_error([&] { data::load_image(dir.path.string(), where); }, {where, "directory"});
  const std::string empty = dir.write("empty.png", "");
  expect_error([&] { data::load_image(empty, where); }, {where, empty, "empty"});
  const std::string text = dir.write("notes.jpg", "this is not an image\n");
  expect_error([&] { data::load_image(text, where); }, {where, text, "not a JPEG, PNG or WebP"});

  // Truncated files of each format: cut in half, and just after the magic bytes.
  for (const std::string src : {"photo_97x61.jpg", "progressive_51x35.jpg", "rgb_37x53.png",
                                "palette_31x23.png", "lossy_41x27.webp", "lossless_33x21.webp"}) {
    const std::string full = dt_test::read_file(kDir + src);
    for (size_t keep : {full.size() / 2, size_t(16)}) {
      SCOPED_TRACE(src + " cut to " + std::to_string(keep) + " bytes");
      const std::string cut = dir.write("cut_" + src, full.substr(0, keep));
      const std::string msg = dt_test::error_of([&] { data::load_image(cut, where); });
      EXPECT_NE(msg.find(where + ": image " + cut + ": "), std::string::npos) << msg;
      EXPECT_TRUE(msg.find("truncated") != std::string::npos ||
                  msg.find("corrupt") != std::string::npos)
          << msg;
    }
  }
  // A JPEG whose entropy-coded data is overwritten with garbage markers.
  std::string bad = dt_test::read_file(kDir + "photo_97x61.jpg");
  for (size_t i = bad.size() / 2; i < bad.size() / 2 + 64; ++i) bad[i] = char(0xFF);
  const std::string bad_path = dir.write("bad.jpg", bad);
  const std::string msg = dt_test::error_of([&] { data::load_image(bad_path); });
  EXPECT_NE(msg.find("image " + bad_path), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  // A PNG with a broken CRC in IHDR.
  std::string crc = dt_test::read_file(kDir + "rgb_37x53.png");
  crc[29] = char(crc[29] ^ 0x55);
  const std::string crc_path = dir.write("crc.png", crc);
  expect_error([&] { data::load_image(crc_path); }, {crc_path, "corrupt or truncated PNG"});
}

// Damaged files of every format: cut at 40 lengths, or with bytes overwritten past the headers.
// Each decode either succeeds (libjpeg/libwebp tolerate some corrupt data, as Pillow does) or
// throws a one-line core::Error naming the file; nothing else (no crash, no other exception).
TEST(ImageDecode, DamagedFilesNeverCrash) {
  int64_t decodes = 0, errors = 0;
  for (const auto& e : index_json()["images"]) {
    const std::string file = e["file"];
    const std::string full = dt_test::read_file(kDir + file);
    if (full.size() > 20000) continue;  // the 640x480 PNG: slow to cut 40 times, nothing new
    std::vector<std::string> damaged;
    for (int i = 1; i <= 40; ++i) damaged.push_back(full.substr(0, full.size() * size_t(i) / 41));
    std::mt19937 rng(7);
    for (int i = 0; i < 40; ++i) {
      std::string d = full;
      const size_t from = std::min(full.size() - 1, size_t(48));
      for (int k = 0; k < 4; ++k) d[from + rng() % (full.size() - from)] = char(rng());
      damaged.push_back(d);
    }
    for (const std::string& d : damaged) {
      ++decodes;
      try {
        const ImageRGB8 img =
            data::decode_image({reinterpret_cast<const uint8_t*>(d.data()), d.size()}, file);
        EXPECT_EQ(int64_t(img.rgb_HW3.size()), img.width * img.height * 3) << file;
      } catch (const core::Error& err) {
        ++errors;
        const std::string msg = err.what();
        EXPECT_NE(msg.find("image " + file + ": "), std::string::npos) << msg;
        EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
      }
    }
  }
  EXPECT_GT(decodes, 1000);
  EXPECT_GT(errors, decodes / 2);  // most cut or damaged files fail
}

// ---- resampling ----------------------------------------------------------------------------

TEST(ImageResize, MatchesPillowBicubic) {
  for (const auto& c : index_json()["cases"]) {
    const std::string name = c["case"];
    SCOPED_TRACE(name);
    const ImageRGB8 img = data::load_image(kDir + c["file"].get<std::string>());
    const int64_t h = c["resized_hw"][0], w = c["resized_hw"][1];
    const ImageRGB8 r = data::resize_bicubic(img, w, h);
    if (c.contains("resized"))
      expect_same_rgb(r, bytes_of(kDir + c["resized"].get<std::string>()), w, h, name);
    EXPECT_EQ(fnv1a64(r.rgb_HW3), c["resized_fnv1a64"].get<std::string>()) << name;
  }
}

TEST(ImageResize, TapsAndIdentity) {
  // Kernel values (a = -0.5): K(0) = 1, K(+-1) = K(+-2) = 0, K(0.5) = 0.5625, K(1.5) = -0.0625.
  EXPECT_EQ(data::bicubic_kernel(0.0), 1.0);
  EXPECT_EQ(data::bicubic_kernel(1.0), 0.0);
  EXPECT_EQ(data::bicubic_kernel(-2.0), 0.0);
  EXPECT_EQ(data::bicubic_kernel(0.5), 0.5625);
  EXPECT_EQ(data::bicubic_kernel(-1.5), -0.0625);
  // Shrinking by 10 stretches the support to 20: 41 taps, Q22 weights summing to about 2^22.
  const data::ResampleTaps t = data::bicubic_taps(640, 64);
  EXPECT_EQ(t.ksize, 41);
  int64_t sum = 0;
  for (int64_t k = 0; k < t.count[10]; ++k) sum += t.taps[size_t(10 * t.ksize + k)];
  EXPECT_NEAR(double(sum), double(1 << 22), 8.0);
  // Same size: a copy. A constant image stays constant at any size.
  ImageRGB8 img{5, 3, {}};
  for (int i = 0; i < 45; ++i) img.rgb_HW3.push_back(uint8_t(i * 5));
  EXPECT_EQ(data::resize_bicubic(img, 5, 3).rgb_HW3, img.rgb_HW3);
  ImageRGB8 flat{7, 4, std::vector<uint8_t>(84, 201)};
  for (auto [w, h] : {std::pair{3, 11}, {64, 2}, {1, 1}, {200, 90}}) {
    const ImageRGB8 r = data::resize_bicubic(flat, w, h);
    EXPECT_EQ(r.rgb_HW3, std::vector<uint8_t>(size_t(w * h * 3), 201)) << w << "x" << h;
  }
}

// ---- preprocessing -------------------------------------------------------------------------

TEST(ImagePreprocess, MatchesHfProcessor) {
  for (const auto& c : index_json()["cases"]) {
    const std::string name = c["case"];
    SCOPED_TRACE(name);
    const ImageProcessorConfig cfg = config_with(c["min_pixels"], c["max_pixels"]);
    const ImageRGB8 img = data::load_image(kDir + c["file"].get<std::string>());
    const data::ImagePatches p = data::preprocess_image(img, cfg);
    EXPECT_EQ(p.grid_t, c["grid_thw"][0].get<int64_t>());
    EXPECT_EQ(p.grid_h, c["grid_thw"][1].get<int64_t>());
    EXPECT_EQ(p.grid_w, c["grid_thw"][2].get<int64_t>());
    EXPECT_EQ(p.num_patches(), c["patches"].get<int64_t>());
    EXPECT_EQ(data::image_pad_tokens(p, cfg.merge_size), c["tokens"].get<int64_t>());
    ASSERT_EQ(p.patch_dim, 1536);
    ASSERT_EQ(int64_t(p.pixel_values_NK.size()), p.num_patches() * 1536);
    // Sampled entries: bit-identical (the spec allows 2/127.5; the PIL path needs no slack).
    double worst = 0;
    for (const auto& s : c["samples"]) {
      const int64_t r = s[0], k = s[1];
      const float want = s[2].get<float>(), got = p.pixel_values_NK[size_t(r * 1536 + k)];
      EXPECT_EQ(got, want) << "pixel_values[" << r << ", " << k << "]";
      worst = std::max(worst, double(std::fabs(got - want)));
    }
    EXPECT_LE(worst, 2.0 / 127.5);
    double sum = 0;
    for (float v : p.pixel_values_NK) sum += v;
    EXPECT_NEAR(sum, c["pixel_sum"].get<double>(), 1e-9 * double(p.pixel_values_NK.size()));
    if (c.contains("pixel_values")) {
      const std::vector<uint8_t> raw = bytes_of(kDir + c["pixel_values"].get<std::string>());
      ASSERT_EQ(raw.size(), p.pixel_values_NK.size() * 4);
      std::vector<float> want(p.pixel_values_NK.size());
      std::memcpy(want.data(), raw.data(), raw.size());  // little-endian float32
      for (size_t i = 0; i < want.size(); ++i)
        ASSERT_EQ(p.pixel_values_NK[i], want[i]) << "pixel_values flat index " << i;
    }
  }
}

TEST(ImagePreprocess, SmartResizeMatchesHf) {
  int64_t rows = 0, errors = 0;
  for (const auto& e : index_json()["smart_resize"]) {
    const int64_t H = e["H"], W = e["W"], mn = e["min_pixels"], mx = e["max_pixels"];
    SCOPED_TRACE(std::to_string(W) + "x" + std::to_string(H) + " min " + std::to_string(mn) +
                 " max " + std::to_string(mx));
    ++rows;
    if (e.contains("error")) {
      ++errors;
      dt_test::expect_error([&] { data::smart_resize(H, W, 32, mn, mx); }, {"aspect ratio"});
      continue;
    }
    const auto [h, w] = data::smart_resize(H, W, 32, mn, mx);
    EXPECT_EQ(h, e["h"].get<int64_t>());
    EXPECT_EQ(w, e["w"].get<int64_t>());
    EXPECT_EQ((h / 16) * (w / 16) / 4, e["tokens"].get<int64_t>());
  }
  EXPECT_EQ(rows, 130);
  EXPECT_EQ(errors, 5);
}

// The spec's section 8 table (HF defaults: min 65536, max 16777216, factor 32), and its QVU /
// ms-swift column (min_pixels 4096).
TEST(ImagePreprocess, SpecSection8Numbers) {
  struct Row {
    int64_t W, H, rw, rh, grid_h, grid_w, patches, tokens;
  };
  const Row rows[] = {{448, 448, 448, 448, 28, 28, 784, 196},
                      {1280, 720, 1280, 704, 44, 80, 3520, 880},
                      {720, 1280, 704, 1280, 80, 44, 3520, 880},
                      {1920, 1080, 1920, 1088, 68, 120, 8160, 2040},
                      {640, 480, 640, 480, 30, 40, 1200, 300},
                      {800, 600, 800, 608, 38, 50, 1900, 475},
                      {1024, 768, 1024, 768, 48, 64, 3072, 768},
                      {224, 224, 256, 256, 16, 16, 256, 64},
                      {100, 100, 256, 256, 16, 16, 256, 64},
                      {4000, 3000, 4000, 3008, 188, 250, 47000, 11750},
                      {5000, 5000, 4096, 4096, 256, 256, 65536, 16384}};
  for (const Row& r : rows) {
    const auto [h, w] = data::smart_resize(r.H, r.W, 32, 65536, 16777216);
    EXPECT_EQ(w, r.rw) << r.W << "x" << r.H;
    EXPECT_EQ(h, r.rh) << r.W << "x" << r.H;
    EXPECT_EQ(h / 16, r.grid_h);
    EXPECT_EQ(w / 16, r.grid_w);
    EXPECT_EQ((h / 16) * (w / 16), r.patches);
    EXPECT_EQ((h / 16) * (w / 16) / 4, r.tokens);
  }
  const std::tuple<int64_t, int64_t, int64_t> qvu[] = {
      {448, 448, 196}, {1280, 720, 880}, {1920, 1080, 2040}, {224, 224, 49}, {100, 100, 9}};
  for (const auto& [W, H, tokens] : qvu) {
    const auto [h, w] = data::smart_resize(H, W, 32, 4096, 16777216);
    EXPECT_EQ((h / 16) * (w / 16) / 4, tokens) << W << "x" << H << " (min_pixels 4096)";
  }
  // LLaMA-Factory first resizes 1280x720 to 1024x576; then 576 tokens.
  const auto [h, w] = data::smart_resize(576, 1024, 32, 65536, 16777216);
  EXPECT_EQ((h / 16) * (w / 16) / 4, 576);

  // Normalisation: u8 0 -> -1, 128 -> 0.0039216, 255 -> 1; and the whole pipeline on a 448x448
  // image whose pixels are 0, 128 and 255 (no resize).
  ImageRGB8 img{448, 448, std::vector<uint8_t>(448 * 448 * 3)};
  img.rgb_HW3[0] = 0, img.rgb_HW3[1] = 128, img.rgb_HW3[2] = 255;
  const data::ImagePatches p = data::preprocess_image(img, ImageProcessorConfig{});
  EXPECT_EQ(p.grid_h, 28);
  EXPECT_EQ(p.grid_w, 28);
  EXPECT_EQ(data::image_pad_tokens(p, 2), 196);
  // Pixel (0, 0) is patch 0, column ((ch * 2 + t) * 16 + 0) * 16 + 0 for t = 0, 1.
  for (int t = 0; t < 2; ++t) {
    EXPECT_EQ(p.pixel_values_NK[size_t((0 * 2 + t) * 256)], -1.0f);
    EXPECT_NEAR(p.pixel_values_NK[size_t((1 * 2 + t) * 256)], 0.0039216f, 1e-7);
    EXPECT_EQ(p.pixel_values_NK[size_t((2 * 2 + t) * 256)], 1.0f);
  }
}

// Row and column layout from the spec's formulas, on an image whose bytes encode position.
TEST(ImagePreprocess, PatchLayout) {
  const int64_t W = 96, H = 64;  // grid 4 x 6, merged 2 x 3
  ImageRGB8 img{W, H, std::vector<uint8_t>(size_t(W * H * 3))};
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x)
      for (int64_t c = 0; c < 3; ++c) img.rgb_HW3[size_t((y * W + x) * 3 + c)] = uint8_t(x + y + c);
  ImageProcessorConfig cfg;
  cfg.do_normalize = false;
  cfg.do_rescale = false;  // values are the bytes themselves
  const data::ImagePatches p = data::patchify_image(img, cfg);
  ASSERT_EQ(p.num_patches(), 24);
  for (int64_t n = 0; n < 24; ++n) {
    const int64_t mw = n % 2, mh = (n / 2) % 2, bw = (n / 4) % 3, bh = (n / 4) / 3;
    const int64_t r = 2 * bh + mh, c = 2 * bw + mw;
    for (int64_t k = 0; k < 1536; ++k) {
      const int64_t px = k % 16, py = (k / 16) % 16, ch = k / 512;
      const float want = float(uint8_t(c * 16 + px + r * 16 + py + ch));
      ASSERT_EQ(p.pixel_values_NK[size_t(n * 1536 + k)], want) << "row " << n << " col " << k;
    }
  }
  dt_test::expect_error(
      [&] {
        data::patchify_image(ImageRGB8{40, 32, {}}, cfg);
      },
      {"multiples of patch_size * merge_size = 32"});
}

TEST(ImagePreprocess, ConfigFromJson) {
  // Qwen/Qwen3.5-2B-Base preprocessor_config.json (spec 1.3).
  const auto j = nlohmann::json::parse(R"({"size": {"longest_edge": 16777216,
      "shortest_edge": 65536}, "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
      "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
      "processor_class": "Qwen3VLProcessor", "image_processor_type": "Qwen2VLImageProcessorFast"})");
  const ImageProcessorConfig c = ImageProcessorConfig::from_json(j, "pp.json");
  EXPECT_EQ(c.min_pixels, 65536);
  EXPECT_EQ(c.max_pixels, 16777216);
  EXPECT_EQ(c.factor(), 32);
  EXPECT_TRUE(c.do_resize && c.do_rescale && c.do_normalize);
  EXPECT_EQ(c.image_mean[2], 0.5f);
  // Legacy keys win over size; a scalar mean applies to all channels.
  const auto legacy = ImageProcessorConfig::from_json(
      nlohmann::json::parse(R"({"size": {"shortest_edge": 65536, "longest_edge": 16777216},
          "min_pixels": 4096, "max_pixels": 1003520, "image_mean": 0.25})"),
      "pp.json");
  EXPECT_EQ(legacy.min_pixels, 4096);
  EXPECT_EQ(legacy.max_pixels, 1003520);
  EXPECT_EQ(legacy.image_mean[1], 0.25f);
  dt_test::expect_error(
      [] {
        ImageProcessorConfig::from_json(nlohmann::json::parse(R"({"resample": 2})"), "pp.json");
      },
      {"pp.json", "resample 2"});
  dt_test::expect_error(
      [] {
        ImageProcessorConfig::from_json(nlohmann::json::parse(R"({"patch_size": "x"})"), "pp.json");
      },
      {"pp.json", "bad preprocessor config value"});
  dt_test::expect_error([] { ImageProcessorConfig::load("/nonexistent/pp.json"); },
                        {"/nonexistent/pp.json", "cannot open"});
}
