// Vision-language training data against Hugging Face: chat rows with images (three input
// forms) become the processor's input_ids, image_grid_thw and pixel_values and get_rope_index's
// positions (tests/data/vl_data, tools/golden/make_vl_data_fixtures.py); errors name the line
// and file; the dataset cache notices changed images; packs restart positions per sample.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "data/chat_template.h"
#include "data/dataset.h"
#include "data/formats.h"
#include "data/tokenizer.h"
#include "data/vision_data.h"
#include "train/train_data.h"

using namespace deltatron;
namespace fs = std::filesystem;

namespace {

const data::Tokenizer& tok() {
  static const data::Tokenizer t = data::Tokenizer::load(DT_QWEN35_TOKENIZER_JSON);
  return t;
}

const std::string kDir = std::string(DT_TEST_DATA) + "/vl_data";
const std::string kImages = std::string(DT_TEST_DATA) + "/images";

data::FormatOptions vl_options() {
  data::FormatOptions o;
  o.format = data::Format::chat;
  o.chat.format = data::ChatFormat::qwen3_5;
  o.vision.enabled = true;
  o.vision.processor = data::ImageProcessorConfig::load(kDir + "/preprocessor_config.json");
  return o;
}

std::string fnv1a64(const void* p, size_t n) {
  uint64_t h = 0xCBF29CE484222325ULL;
  for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<const uint8_t*>(p)[i]) * 0x100000001B3ULL;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

// The first index where two int vectors differ, printed with both values.
std::string first_diff(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    if (a[i] != b[i])
      return "index " + std::to_string(i) + ": " + std::to_string(a[i]) + " vs " +
             std::to_string(b[i]);
  return "sizes " + std::to_string(a.size()) + " vs " + std::to_string(b.size());
}

// A fresh temporary directory, removed at the end of the test.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name) {
    path = fs::temp_directory_path() / ("dt_vl_" + name + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(path / name, std::ios::binary) << text;
    return (path / name).string();
  }
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

void expect_same_sample(const data::Sample& a, const data::Sample& b, const std::string& what) {
  EXPECT_EQ(a.input_ids, b.input_ids) << what << ": " << first_diff(a.input_ids, b.input_ids);
  EXPECT_EQ(a.labels, b.labels) << what << ": " << first_diff(a.labels, b.labels);
  EXPECT_EQ(a.position_ids, b.position_ids) << what;
  EXPECT_EQ(a.image_grid_thw, b.image_grid_thw) << what;
  ASSERT_EQ(a.pixel_values.size(), b.pixel_values.size()) << what;
  EXPECT_EQ(fnv1a64(a.pixel_values.data(), 4 * a.pixel_values.size()),
            fnv1a64(b.pixel_values.data(), 4 * b.pixel_values.size()))
      << what;
  ASSERT_EQ(a.images.size(), b.images.size()) << what;
  for (size_t k = 0; k < a.images.size(); ++k)
    EXPECT_TRUE(a.images[k].hash[0] == b.images[k].hash[0] &&
                a.images[k].hash[1] == b.images[k].hash[1])
        << what << ": image " << k;
}

TEST(VlData, MatchesHfProcessorAndRopeIndex) {
  data::DataStats st;
  std::vector<int64_t> lines;
  const std::vector<data::Sample> samples =
      data::read_jsonl(kDir + "/samples.jsonl", tok(), vl_options(), &st, &lines);
  std::ifstream in(kDir + "/expected.jsonl");
  ASSERT_TRUE(in.good());
  const data::VisionTokenIds ids = data::VisionTokenIds::from(tok());
  int checked = 0;
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json ex = nlohmann::json::parse(line);
    const int64_t ln = ex["line"].get<int64_t>();
    const auto it = std::find(lines.begin(), lines.end(), ln);
    ASSERT_NE(it, lines.end()) << "line " << ln << " produced no sample: " << st.summary();
    const data::Sample& s = samples[it - lines.begin()];
    const std::string where = "samples.jsonl:" + std::to_string(ln);
    const auto want_ids = ex["input_ids"].get<std::vector<int32_t>>();
    ASSERT_EQ(s.input_ids, want_ids) << where << ": " << first_diff(s.input_ids, want_ids);
    ASSERT_EQ(s.labels.size(), s.input_ids.size());
    for (size_t t = 0; t < s.input_ids.size(); ++t)
      if (s.input_ids[t] == ids.image_pad || s.input_ids[t] == ids.vision_start ||
          s.input_ids[t] == ids.vision_end)
        ASSERT_EQ(s.labels[t], data::kIgnoreIndex) << where << ": vision token " << t;
    EXPECT_GT(data::count_label_tokens(s), 0) << where;
    if (!ex.contains("image_grid_thw")) {
      EXPECT_TRUE(s.position_ids.empty() && s.pixel_values.empty() && s.images.empty()) << where;
      ++checked;
      continue;
    }
    std::vector<int32_t> grid;
    for (const auto& g : ex["image_grid_thw"])
      for (const auto& v : g) grid.push_back(v.get<int32_t>());
    EXPECT_EQ(s.image_grid_thw, grid) << where;
    const auto shape = ex["pixel_values_shape"].get<std::vector<int64_t>>();
    ASSERT_EQ(s.pixel_values.size(), static_cast<size_t>(shape[0] * shape[1])) << where;
    EXPECT_EQ(fnv1a64(s.pixel_values.data(), 4 * s.pixel_values.size()),
              ex["pixel_values_fnv1a64"].get<std::string>())
        << where << ": pixel values are not bit-identical to HF's";
    double sum = 0;
    for (float v : s.pixel_values) sum += v;
    EXPECT_NEAR(sum, ex["pixel_values_sum"].get<double>(), 1e-9 * s.pixel_values.size()) << where;
    std::vector<int32_t> pos;
    for (const auto& row : ex["position_ids"])
      for (const auto& v : row) pos.push_back(v.get<int32_t>());
    ASSERT_EQ(s.position_ids, pos) << where << ": " << first_diff(s.position_ids, pos);
    ++checked;
  }
  EXPECT_EQ(checked, 5);
  EXPECT_EQ(st.samples, 5) << st.summary();
}

// The rendered text (before expansion) is the template's, whatever form the images come in.
TEST(VlData, RendersTheTemplateText) {
  std::ifstream rows(kDir + "/samples.jsonl"), exp(kDir + "/expected.jsonl");
  data::ChatOptions opt;
  opt.format = data::ChatFormat::qwen3_5;
  std::string r, e;
  int n = 0;
  while (std::getline(rows, r) && std::getline(exp, e)) {
    data::OrderedJson row = data::OrderedJson::parse(r);
    data::take_row_images(row);
    const data::RenderedChat out = data::render_chat(row, opt);
    ASSERT_TRUE(out.ok) << out.error;
    EXPECT_EQ(out.text(), nlohmann::json::parse(e)["text"].get<std::string>()) << "row " << n;
    ++n;
  }
  EXPECT_EQ(n, 5);
}

TEST(VlData, ThreeInputFormsGiveIdenticalSamples) {
  TempDir dir("forms");
  const std::string a = kImages + "/photo_97x61.jpg", b = kImages + "/lossy_41x27.webp";
  const std::string tail = R"(, {"role": "assistant", "content": "Two pictures."}]})";
  const std::vector<std::pair<std::string, std::string>> forms = {
      {"parts", R"({"messages": [{"role": "user", "content": [{"type": "image", "image": ")" + a +
                    R"("}, {"type": "image", "path": ")" + b +
                    R"("}, {"type": "text", "text": "Compare them."}]})" + tail},
      {"tags",
       R"({"images": [")" + a + R"(", ")" + b +
           R"("], "messages": [{"role": "user", "content": "<image><image>Compare them."})" + tail},
      {"trl_parts", R"({"images": [")" + a + R"(", ")" + b +
                        R"("], "messages": [{"role": "user", "content": [{"type": "image"}, )"
                        R"({"type": "image"}, {"type": "text", "text": "Compare them."}]})" +
                        tail},
      {"trl_string", R"({"images": [")" + a + R"(", ")" + b +
                         R"("], "messages": [{"role": "user", "content": "Compare them."})" + tail},
      {"datasets_nulls",
       R"({"images": [")" + a + R"(", ")" + b +
           R"("], "messages": [{"role": "user", "content": [{"type": "image", "text": null, )"
           R"("image": null}, {"type": "image", "text": null, "image": null}, {"type": "text", )"
           R"("text": "Compare them.", "image": null}]})" +
           tail},
      {"openai_url", R"({"messages": [{"role": "user", "content": [{"type": "image_url", )"
                     R"("image_url": {"url": "file://)" +
                         a + R"("}}, {"type": "image_url", "image_url": ")" + b +
                         R"("}, {"type": "text", "text": "Compare them."}]})" + tail},
  };
  std::vector<data::Sample> got;
  for (const auto& [name, row] : forms) {
    const std::string path = dir.write(name + ".jsonl", row + "\n");
    data::DataStats st;
    std::vector<data::Sample> s;
    ASSERT_NO_THROW(s = data::read_jsonl(path, tok(), vl_options(), &st)) << name;
    ASSERT_EQ(s.size(), 1u) << name << ": " << st.summary();
    ASSERT_EQ(s[0].image_grid_thw.size(), 6u) << name;
    got.push_back(s[0]);
  }
  for (size_t k = 1; k < got.size(); ++k) expect_same_sample(got[0], got[k], forms[k].first);
}

TEST(VlData, ErrorsNameTheLineAndTheFile) {
  TempDir dir("errors");
  // A JPEG cut in half.
  {
    std::ifstream in(kImages + "/photo_97x61.jpg", std::ios::binary);
    std::string bytes{std::istreambuf_iterator<char>(in), {}};
    dir.write("cut.jpg", bytes.substr(0, bytes.size() / 2));
  }
  const std::string ok_row =
      R"({"messages": [{"role": "user", "content": [{"type": "image", "image": ")" + kImages +
      R"(/rgb_1x1.png"}, {"type": "text", "text": "hi"}]}, {"role": "assistant", "content": "x"}]})";
  struct Case {
    std::string name, row, want1, want2;
  };
  const std::vector<Case> cases = {
      {"missing",
       R"({"images": ["nothere.png"], "messages": [{"role": "user", "content": "<image>a"}, )"
       R"({"role": "assistant", "content": "b"}]})",
       "nothere.png", "missing"},
      {"truncated",
       R"({"images": ["cut.jpg"], "messages": [{"role": "user", "content": "<image>a"}, )"
       R"({"role": "assistant", "content": "b"}]})",
       "cut.jpg", "JPEG"},
      {"count",
       R"({"images": ["cut.jpg"], "messages": [{"role": "user", "content": "<image><image>a"}, )"
       R"({"role": "assistant", "content": "b"}]})",
       "lists 1 image", "2 \"<image>\" tag"},
      {"url",
       R"({"messages": [{"role": "user", "content": [{"type": "image", "url": "https://x.org/a.png"}]}, )"
       R"({"role": "assistant", "content": "b"}]})",
       "https://x.org/a.png", "URL"},
      {"system",
       R"({"images": [")" + kImages +
           R"(/rgb_1x1.png"], "messages": [{"role": "system", "content": "<image>"}, )"
           R"({"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})",
       "System message cannot contain images", "messages[0]"},
      {"typed_pad",
       R"({"images": [")" + kImages +
           R"(/rgb_1x1.png"], "messages": [{"role": "user", "content": "<image> <|image_pad|>"}, )"
           R"({"role": "assistant", "content": "b"}]})",
       "2 <|image_pad|>", "1 image"},
  };
  for (const Case& c : cases) {
    const std::string path = dir.write(c.name + ".jsonl", ok_row + "\n" + c.row + "\n");
    data::FormatOptions o = vl_options();
    if (c.name == "typed_pad") o.chat.special_tokens_in_content = true;
    const std::string e = error_of([&] { data::read_jsonl(path, tok(), o); });
    EXPECT_NE(e.find(c.name + ".jsonl:2: "), std::string::npos) << c.name << ": " << e;
    EXPECT_NE(e.find(c.want1), std::string::npos) << c.name << ": " << e;
    EXPECT_NE(e.find(c.want2), std::string::npos) << c.name << ": " << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << c.name << ": one line: " << e;
    if (c.want1 == "nothere.png" || c.want1 == "cut.jpg")  // the file, resolved
      EXPECT_NE(e.find((dir.path / c.want1).string()), std::string::npos) << e;
    // skip_bad_lines: counted, the good line kept.
    o.skip_bad_lines = true;
    data::DataStats st;
    const auto s = data::read_jsonl(path, tok(), o, &st);
    EXPECT_EQ(s.size(), 1u) << c.name;
    EXPECT_EQ(st.skipped[static_cast<int>(data::SkipReason::bad_line)], 1) << c.name;
    EXPECT_NE(st.first_bad_line.find(c.want1), std::string::npos) << st.first_bad_line;
  }
  // Vision off (a text-only checkpoint), and a chat format that has no images.
  const std::string path = dir.write("off.jsonl", ok_row + "\n");
  data::FormatOptions o = vl_options();
  o.vision.enabled = false;
  std::string e = error_of([&] { data::read_jsonl(path, tok(), o); });
  EXPECT_NE(e.find("off.jsonl:1: "), std::string::npos) << e;
  EXPECT_NE(e.find("vision_config"), std::string::npos) << e;
  o = vl_options();
  o.chat.format = data::ChatFormat::qwen3;
  e = error_of([&] { data::read_jsonl(path, tok(), o); });
  EXPECT_NE(e.find("Qwen3.5-family"), std::string::npos) << e;
}

TEST(VlData, CacheRoundTripAndChangedImages) {
  TempDir dir("cache");
  for (const char* f : {"photo_97x61.jpg", "rgb_640x480.png", "lossy_41x27.webp"})
    fs::copy_file(kImages + "/" + f, dir.path / f);
  const std::string path = dir.write(
      "train.jsonl",
      R"({"images": ["photo_97x61.jpg", "rgb_640x480.png"], "messages": [{"role": "user", "content": "<image>x<image>"}, {"role": "assistant", "content": "y"}]})"
      "\n"
      R"({"messages": [{"role": "user", "content": "text only"}, {"role": "assistant", "content": "z"}]})"
      "\n"
      R"({"images": ["lossy_41x27.webp"], "messages": [{"role": "user", "content": "w"}, {"role": "assistant", "content": "v"}]})"
      "\n");
  data::DatasetOptions o;
  o.format = vl_options();
  o.progress = false;
  o.cache_dir = (dir.path / "cache").string();
  const std::vector<data::Sample> direct = data::read_jsonl(path, tok(), o.format);
  const data::Dataset built = data::Dataset::load(path, tok(), o);
  EXPECT_FALSE(built.from_cache());
  ASSERT_EQ(built.size(), 3);
  const data::Dataset cached = data::Dataset::load(path, tok(), o);
  EXPECT_TRUE(cached.from_cache());
  EXPECT_EQ(cached.content_key(), built.content_key());
  for (int64_t i = 0; i < 3; ++i) {
    expect_same_sample(built.sample(i), direct[i], "built " + std::to_string(i));
    expect_same_sample(cached.sample(i), direct[i], "cached " + std::to_string(i));
    EXPECT_EQ(cached.length(i), static_cast<int64_t>(direct[i].input_ids.size()));
  }
  EXPECT_EQ(cached.num_images(0), 2);
  EXPECT_EQ(cached.num_images(1), 0);

  // Same bytes, new modification time: still the cache.
  const fs::path img = dir.path / "photo_97x61.jpg";
  fs::last_write_time(img, fs::last_write_time(img) + std::chrono::seconds(5));
  const data::Dataset touched = data::Dataset::load(path, tok(), o);
  EXPECT_TRUE(touched.from_cache());
  EXPECT_EQ(touched.content_key(), built.content_key());

  // Other bytes (another image under the same name): rebuilt, another key, other pixels.
  fs::copy_file(kImages + "/rgb_37x53.png", img, fs::copy_options::overwrite_existing);
  // A sample taken from the old dataset now refuses the changed file, naming line and file.
  const std::string e = error_of([&] { cached.sample(0); });
  EXPECT_NE(e.find("train.jsonl:1: "), std::string::npos) << e;
  EXPECT_NE(e.find("photo_97x61.jpg"), std::string::npos) << e;
  const data::Dataset rebuilt = data::Dataset::load(path, tok(), o);
  EXPECT_FALSE(rebuilt.from_cache());
  EXPECT_NE(rebuilt.content_key(), built.content_key());
  const data::Sample s0 = rebuilt.sample(0);
  EXPECT_NE(fnv1a64(s0.pixel_values.data(), 4 * s0.pixel_values.size()),
            fnv1a64(direct[0].pixel_values.data(), 4 * direct[0].pixel_values.size()));
  EXPECT_TRUE(data::Dataset::load(path, tok(), o).from_cache());

  // A removed image: the rebuild names the line and the file.
  fs::remove(dir.path / "lossy_41x27.webp");
  const std::string e2 = error_of([&] { data::Dataset::load(path, tok(), o); });
  EXPECT_NE(e2.find("train.jsonl:3: "), std::string::npos) << e2;
  EXPECT_NE(e2.find("lossy_41x27.webp"), std::string::npos) << e2;
}

TEST(VlData, PacksRestartPositionsPerSample) {
  data::DatasetOptions o;
  o.format = vl_options();
  o.use_cache = false;
  o.progress = false;
  const data::Dataset ds = data::Dataset::load(kDir + "/samples.jsonl", tok(), o);
  ASSERT_EQ(ds.size(), 5);
  const std::vector<int64_t> batch = {0, 1, 3, 4};  // three with images, one text
  const int64_t align = 16;
  const data::Pack p = data::make_dataset_pack(ds, batch, align);
  std::vector<float> pixels;
  std::vector<int32_t> grids;
  for (int s = 0; s < p.num_samples(); ++s) {
    const data::Sample smp = ds.sample(batch[s]);
    const int64_t b = p.cu_seqlens_padded[s], e = p.cu_seqlens_padded[s + 1];
    const int64_t len = static_cast<int64_t>(smp.input_ids.size());
    ASSERT_EQ(p.cu_seqlens[s + 1] - p.cu_seqlens[s], len);
    ASSERT_EQ((e - b) % align, 0);
    int32_t next = 0;
    for (int64_t t = 0; t < len; ++t)
      for (int r = 0; r < 3; ++r) {
        const int32_t want =
            smp.position_ids.empty() ? static_cast<int32_t>(t) : smp.position_ids[r * len + t];
        ASSERT_EQ(p.position_ids[r * p.N + b + t], want) << "sample " << s << " t " << t;
        next = std::max(next, want + 1);
      }
    EXPECT_EQ(p.position_ids[b], 0) << "sample " << s << " restarts at 0";
    for (int64_t t = len; t < e - b; ++t)  // padding continues after the largest position
      for (int r = 0; r < 3; ++r)
        ASSERT_EQ(p.position_ids[r * p.N + b + t], next + (t - len)) << "pad " << s << " " << t;
    pixels.insert(pixels.end(), smp.pixel_values.begin(), smp.pixel_values.end());
    grids.insert(grids.end(), smp.image_grid_thw.begin(), smp.image_grid_thw.end());
  }
  EXPECT_EQ(p.image_grid_thw, grids);
  EXPECT_EQ(fnv1a64(p.pixel_values.data(), 4 * p.pixel_values.size()),
            fnv1a64(pixels.data(), 4 * pixels.size()));
  // Every image's pad tokens are in the pack: sum t*h*w / 4.
  int64_t want_pads = 0;
  for (size_t k = 0; k < grids.size(); k += 3)
    want_pads += int64_t(grids[k]) * grids[k + 1] * grids[k + 2] / 4;
  const int32_t pad = data::VisionTokenIds::from(tok()).image_pad;
  EXPECT_EQ(std::count(p.input_ids.begin(), p.input_ids.end(), pad), want_pads);
}

// The spec's worked example (qwen35-vl.md 5.1): grids (1,4,6) and (1,2,2).
TEST(VlData, MropeSpecExample) {
  const int32_t P = 7;  // the image pad id here
  std::vector<int32_t> ids = {1, 1, 1, 2};
  ids.insert(ids.end(), 6, P);
  ids.insert(ids.end(), {3, 1, 1, 2, P, 3, 1, 1, 1, 1});
  const std::vector<int32_t> pos = data::mrope_positions(ids, {1, 4, 6, 1, 2, 2}, P, 2);
  const std::vector<int32_t> want = {
      0, 1, 2, 3, 4, 4, 4, 4, 4, 4, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,   // T
      0, 1, 2, 3, 4, 4, 4, 5, 5, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,   // H
      0, 1, 2, 3, 4, 5, 6, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};  // W
  EXPECT_EQ(pos, want) << first_diff(pos, want);
}

TEST(VlData, TruncationNeverSplitsAnImage) {
  data::DatasetOptions o;
  o.format = vl_options();
  o.use_cache = false;
  o.progress = false;
  const data::Dataset ds = data::Dataset::load(kDir + "/samples.jsonl", tok(), o);
  const data::Sample full = ds.sample(1);  // three images: 54, 6 and 6 pad tokens
  ASSERT_EQ(full.image_grid_thw.size(), 9u);
  const data::VisionTokenIds ids = data::VisionTokenIds::from(tok());
  const auto first_pad = std::find(full.input_ids.begin(), full.input_ids.end(), ids.image_pad) -
                         full.input_ids.begin();
  // Cut inside the first image: the sample ends before its <|vision_start|>, no images left.
  data::Sample s = ds.sample(1, first_pad + 10);
  EXPECT_EQ(static_cast<int64_t>(s.input_ids.size()), first_pad - 1);
  EXPECT_TRUE(s.image_grid_thw.empty() && s.pixel_values.empty() && s.images.empty());
  EXPECT_EQ(s.position_ids.size(), 3 * s.input_ids.size());
  // Cut right after the first image's <|vision_end|>: one image kept whole.
  const int64_t after = first_pad + 54 + 1;
  s = ds.sample(1, after);
  EXPECT_EQ(static_cast<int64_t>(s.input_ids.size()), after);
  ASSERT_EQ(s.image_grid_thw.size(), 3u);
  EXPECT_EQ(s.pixel_values.size(), size_t(1 * 12 * 18 * 1536));
  for (int r = 0; r < 3; ++r)
    for (int64_t t = 0; t < after; ++t)
      ASSERT_EQ(s.position_ids[r * after + t], full.position_ids[r * full.input_ids.size() + t]);
}

TEST(VlData, VisionOptionsFromTheCheckpoint) {
  TempDir dir("model");
  const data::VisionTokenIds ids = data::VisionTokenIds::from(tok());
  EXPECT_EQ(ids.image_pad, 248056);  // spec 1.1
  EXPECT_EQ(ids.vision_start, 248053);
  EXPECT_EQ(ids.vision_end, 248054);
  EXPECT_EQ(ids.video_pad, 248057);
  // No config.json, or one without vision_config: off.
  EXPECT_FALSE(data::vision_options_from_model(dir.path.string(), tok()).enabled);
  dir.write("config.json", R"({"model_type": "qwen3_5_text"})");
  EXPECT_FALSE(data::vision_options_from_model(dir.path.string(), tok()).enabled);
  // vision_config without a preprocessor file: Qwen3.5's defaults.
  dir.write(
      "config.json",
      R"({"vision_config": {"depth": 2}, "image_token_id": 248056, "vision_start_token_id": 248053, "vision_end_token_id": 248054, "video_token_id": 248057})");
  data::VisionDataOptions v = data::vision_options_from_model(dir.path.string(), tok());
  EXPECT_TRUE(v.enabled);
  EXPECT_EQ(v.processor.min_pixels, 65536);
  fs::copy_file(kDir + "/preprocessor_config.json", dir.path / "preprocessor_config.json");
  v = data::vision_options_from_model(dir.path.string(), tok());
  EXPECT_EQ(v.processor.min_pixels, 4096);
  EXPECT_EQ(v.processor.max_pixels, 65536);
  // An id that is not the tokenizer's.
  dir.write("config.json", R"({"vision_config": {}, "image_token_id": 151655})");
  const std::string e =
      error_of([&] { data::vision_options_from_model(dir.path.string(), tok()); });
  EXPECT_NE(e.find("image_token_id"), std::string::npos) << e;
  EXPECT_NE(e.find("248056"), std::string::npos) << e;
}

// The trainer's data wiring: the checkpoint's vision settings; images refused until the model
// consumes them.
TEST(VlData, TrainDataReadsTheCheckpointsVisionSettings) {
  TempDir dir("train");
  dir.write("config.json",
            R"({"vision_config": {}, "image_token_id": 248056, "vision_start_token_id": 248053})");
  fs::copy_file(kDir + "/preprocessor_config.json", dir.path / "preprocessor_config.json");
  train::TrainConfig cfg;
  cfg.model_path = dir.path.string();
  cfg.train_path = kDir + "/samples.jsonl";
  cfg.chat_template = "qwen3_5";
  cfg.cache_dir = (dir.path / "cache").string();
  cfg.micro_batch_tokens = 256;
  const train::TrainData d = train::load_train_data(cfg, tok(), tok().vocab_size(), true);
  EXPECT_EQ(d.image_samples, 4);
  EXPECT_EQ(d.images, 7);
  EXPECT_EQ(d.train_set->sample(0).image_grid_thw, (std::vector<int32_t>{1, 4, 6}));  // min 4096
  const std::string e =
      error_of([&] { train::load_train_data(cfg, tok(), tok().vocab_size(), false); });
  EXPECT_NE(e.find("7 images in 4 samples"), std::string::npos) << e;
  // A text-only checkpoint: the rows with images are bad lines naming the line.
  fs::remove(dir.path / "config.json");
  const std::string e2 =
      error_of([&] { train::load_train_data(cfg, tok(), tok().vocab_size(), true); });
  EXPECT_NE(e2.find("samples.jsonl:1: "), std::string::npos) << e2;
  EXPECT_NE(e2.find("vision_config"), std::string::npos) << e2;
}

}  // namespace
