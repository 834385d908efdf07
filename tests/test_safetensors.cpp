// safetensors reader/writer: dtype conversions, round trips, sharding, malformed files, atomicity.
#include <signal.h>
#include <sys/resource.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace deltatron;
using io::TensorRecord;
using nlohmann::json;

namespace {

using dt_test::dir_entries;
using dt_test::expect_error;
using dt_test::read_file;
using dt_test::TempDir;
using dt_test::write_file;

// A file with the given header text (length prefix is correct) and n_data zero data bytes.
std::string make_file(const std::string& header, size_t n_data) {
  uint64_t n = header.size();
  std::string s(reinterpret_cast<const char*>(&n), 8);
  return s + header + std::string(n_data, '\0');
}

}  // namespace

// ------------------------------------------------------------------------------- conversions

TEST(Safetensors, Bf16ConversionRoundsToNearestEven) {
  for (uint32_t h = 0; h < 65536; ++h) {  // every bf16 value survives bf16 -> f32 -> bf16
    const float f = io::bf16_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(io::bf16_to_float(io::float_to_bf16(f)))) << h;
    } else {
      ASSERT_EQ(io::float_to_bf16(f), h) << "bf16 bits " << h;
    }
  }
  auto rt = [](float x) { return io::bf16_to_float(io::float_to_bf16(x)); };
  EXPECT_EQ(rt(1.0f + 0x1p-8f), 1.0f);                       // tie -> even (down)
  EXPECT_EQ(rt(1.0f + 0x1p-7f + 0x1p-8f), 1.0f + 0x1p-6f);   // tie -> even (up)
  EXPECT_EQ(rt(1.0f + 0x1p-8f + 0x1p-20f), 1.0f + 0x1p-7f);  // above half -> up
  EXPECT_EQ(rt(-(1.0f + 0x1p-8f + 0x1p-20f)), -(1.0f + 0x1p-7f));
  EXPECT_EQ(rt(std::numeric_limits<float>::max()), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(rt(std::numeric_limits<float>::quiet_NaN())));
  // A NaN whose payload lives only in the low 16 bits must not become inf.
  EXPECT_TRUE(std::isnan(rt(std::bit_cast<float>(0x7F800001u))));
}

TEST(Safetensors, F16ConversionRoundsToNearestEven) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = io::f16_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(io::f16_to_float(io::float_to_f16(f)))) << h;
    } else {
      ASSERT_EQ(io::float_to_f16(f), h) << "f16 bits " << h;
    }
  }
  auto rt = [](float x) { return io::f16_to_float(io::float_to_f16(x)); };
  EXPECT_EQ(io::f16_to_float(0x3C00), 1.0f);
  EXPECT_EQ(io::f16_to_float(0x0001), 0x1p-24f);
  EXPECT_EQ(rt(65504.f), 65504.f);
  EXPECT_EQ(rt(65519.f), 65504.f);
  EXPECT_EQ(rt(65520.f), std::numeric_limits<float>::infinity());
  EXPECT_EQ(rt(0x1p-25f), 0.0f);              // tie between 0 and 2^-24 -> 0
  EXPECT_EQ(rt(0x1.8p-25f), 0x1p-24f);        // above half
  EXPECT_EQ(rt(3 * 0x1p-25f), 2 * 0x1p-24f);  // tie between 1 and 2 units -> 2
  EXPECT_EQ(rt(1.0f + 0x1p-11f), 1.0f);       // tie -> even
  EXPECT_EQ(rt(1.0f + 3 * 0x1p-11f), 1.0f + 0x1p-9f);
  EXPECT_EQ(rt(0x1.ffcp-15f), 0x1p-14f);  // subnormal rounding carries into the smallest normal
#ifdef __FLT16_MAX__
  // Against the compiler's own conversion on many random and edge-case floats.
  auto v = dt_test::randn<float>(200000, 7, 1.0);
  auto big = dt_test::randn<float>(50000, 8, 3e4);
  auto tiny = dt_test::randn<float>(50000, 9, 1e-6);
  v.insert(v.end(), big.begin(), big.end());
  v.insert(v.end(), tiny.begin(), tiny.end());
  size_t bad = 0;
  for (float x : v) {
    const uint16_t want = std::bit_cast<uint16_t>(static_cast<_Float16>(x));
    if (io::float_to_f16(x) != want && ++bad < 5)
      ADD_FAILURE() << "float_to_f16(" << x << ") = " << io::float_to_f16(x) << ", want " << want;
  }
  EXPECT_EQ(bad, 0u);
#endif
}

// ------------------------------------------------------------------------------ round trips

TEST(Safetensors, RoundTripF32Bf16F16AndRaw) {
  TempDir d;
  const auto a = dt_test::randn<float>(7 * 13, 1), b = dt_test::randn<float>(5 * 3, 2, 10.0),
             c = dt_test::randn<float>(11, 3);
  std::vector<int32_t> ints = {1, -2, 3, 1 << 30, -7};
  std::span<const uint8_t> ib(reinterpret_cast<const uint8_t*>(ints.data()), ints.size() * 4);
  std::map<std::string, TensorRecord> t = {
      {"w.f32", {"F32", {7, 13}, a.data(), {}}}, {"w.bf16", {"BF16", {5, 3}, b.data(), {}}},
      {"a.f16", {"F16", {11}, c.data(), {}}},    {"ids", {"I32", {5}, nullptr, ib}},
      {"empty", {"BF16", {0, 4}, nullptr, {}}},
  };
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "x y"}};
  const std::string path = d / "t.safetensors";
  io::write_safetensors(path, t, meta);
  EXPECT_EQ(dir_entries(d.path), std::vector<std::string>{"t.safetensors"});  // no tmp left

  io::SafetensorsFile f(path);
  EXPECT_EQ(f.metadata(), meta);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"a.f16", "empty", "ids", "w.bf16", "w.f32"}));
  const core::Tensor ta = f.to_float("w.f32");
  EXPECT_EQ(ta.shape, (core::Shape{7, 13}));
  EXPECT_EQ(ta.data, a);
  const core::Tensor tb = f.to_float("w.bf16");
  for (size_t i = 0; i < b.size(); ++i)
    ASSERT_EQ(tb.data[i], io::bf16_to_float(io::float_to_bf16(b[i]))) << i;
  const core::Tensor tc = f.to_float("a.f16");
  for (size_t i = 0; i < c.size(); ++i)
    ASSERT_EQ(tc.data[i], io::f16_to_float(io::float_to_f16(c[i]))) << i;
  auto rb = f.bytes("ids");
  EXPECT_EQ(std::vector<uint8_t>(rb.begin(), rb.end()), std::vector<uint8_t>(ib.begin(), ib.end()));
  EXPECT_EQ(f.info("empty").shape, (core::Shape{0, 4}));
  EXPECT_EQ(f.to_float("empty").numel(), 0);
  expect_error([&] { f.to_float("ids"); }, {path, "ids", "I32"});
  expect_error([&] { f.info("nope"); }, {path, "nope"});

  // Layout: 8-byte aligned header, data in name order, deterministic bytes.
  const std::string bytes = read_file(path);
  uint64_t hlen;
  std::memcpy(&hlen, bytes.data(), 8);
  EXPECT_EQ(hlen % 8, 0u);
  uint64_t prev_end = 0;
  for (const auto& name : f.names()) {
    EXPECT_EQ(f.info(name).begin, prev_end) << name;
    prev_end = f.info(name).end;
  }
  EXPECT_EQ(bytes.size(), 8 + hlen + prev_end);
  io::write_safetensors(d / "again.safetensors", t, meta);
  EXPECT_EQ(read_file(d / "again.safetensors"), bytes);
}

TEST(Safetensors, ShardedRoundTrip) {
  TempDir d;
  std::map<std::string, std::vector<float>> data;
  std::map<std::string, TensorRecord> t;
  for (int i = 0; i < 9; ++i) {
    const std::string name = "layer." + std::to_string(i) + ".w";
    data[name] = dt_test::randn<float>(10 * (i + 1), 100 + i);
    t[name] = {i % 2 ? "BF16" : "F32", {10, i + 1}, data[name].data(), {}};
  }
  int64_t total = 0;
  for (const auto& kv : t) total += io::stored_bytes(kv.second);
  const auto files = io::write_safetensors_sharded(d.path.string(), t, {{"format", "pt"}}, 200);
  ASSERT_GT(files.size(), 2u);
  const size_t n = files.size() - 1;  // the index is last
  EXPECT_EQ(files.back(), io::kWeightsIndexName);
  char first[64];
  std::snprintf(first, sizeof first, "model-00001-of-%05zu.safetensors", n);
  EXPECT_EQ(files[0], first);

  const json index = json::parse(read_file(d / io::kWeightsIndexName));
  EXPECT_EQ(index["metadata"]["total_size"].get<int64_t>(), total);
  EXPECT_EQ(index["weight_map"].size(), t.size());

  io::SafetensorsSet s(d.path.string());
  EXPECT_EQ(s.num_files(), n);
  ASSERT_EQ(s.names().size(), t.size());
  for (const auto& [name, v] : t) {
    EXPECT_EQ(index["weight_map"][name].get<std::string>(),
              fs::path(s.file_of(name).path()).filename().string());
    const core::Tensor x = s.to_float(name);
    for (size_t i = 0; i < data[name].size(); ++i) {
      const float want =
          v.dtype == "F32" ? data[name][i] : io::bf16_to_float(io::float_to_bf16(data[name][i]));
      ASSERT_EQ(x.data[i], want) << name << "[" << i << "]";
    }
  }
  // No shard exceeds the limit unless it holds a single tensor.
  for (size_t i = 0; i < n; ++i) {
    io::SafetensorsFile f(d / files[i]);
    int64_t bytes = 0;
    for (const auto& kv : f.tensors()) bytes += int64_t(kv.second.end - kv.second.begin);
    EXPECT_TRUE(bytes <= 200 || f.tensors().size() == 1) << files[i] << " holds " << bytes;
  }
}

TEST(Safetensors, SingleShardIsModelSafetensors) {
  TempDir d;
  const auto a = dt_test::randn<float>(6, 1);
  const auto files = io::write_safetensors_sharded(
      d.path.string(), {{"x", {"F32", {2, 3}, a.data(), {}}}}, {}, 1000);
  EXPECT_EQ(files, std::vector<std::string>{io::kSingleWeightsName});
  EXPECT_EQ(dir_entries(d.path), std::vector<std::string>{io::kSingleWeightsName});
  io::SafetensorsSet s(d.path.string());
  EXPECT_EQ(s.to_float("x").data, a);
}

// -------------------------------------------------------------------------- malformed files

TEST(Safetensors, MalformedFilesNameFileAndTensor) {
  TempDir d;
  const std::string p = d / "bad.safetensors";
  auto open = [&] { io::SafetensorsFile f(p); };
  auto with_header = [&](const std::string& h, size_t n_data) {
    write_file(p, make_file(h, n_data));
  };

  write_file(p, "abcde");
  expect_error(open, {p, "5 bytes", "shorter"});
  write_file(p, "");
  expect_error(open, {p, "shorter"});

  {  // header length past the end
    uint64_t n = 1000;
    write_file(p, std::string(reinterpret_cast<const char*>(&n), 8) + "{}");
    expect_error(open, {p, "header length 1000", "past the end"});
  }
  with_header("{\"a\": [1, 2", 0);
  expect_error(open, {p, "bad JSON"});
  with_header("[1, 2]", 0);
  expect_error(open, {p, "not a JSON object"});
  with_header(R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", 8);
  expect_error(open, {p, "'w'", "missing dtype"});
  with_header(R"({"w": {"dtype": "F32", "data_offsets": [0, 8]}})", 8);
  expect_error(open, {p, "'w'", "missing shape"});
  with_header(R"({"w": {"dtype": "F32", "shape": [2]}})", 8);
  expect_error(open, {p, "'w'", "missing data_offsets"});
  with_header(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 4);
  expect_error(open, {p, "'w'", "out of range"});
  with_header(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 4]}})", 16);
  expect_error(open, {p, "'w'", "out of range"});
  with_header(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 16);
  expect_error(open, {p, "'w'", "needs 12"});
  with_header(R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", 16);
  expect_error(open, {p, "'w'", "shape"});
  with_header(R"({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}})", 16);
  expect_error(open, {p, "'w'", "Q4"});
  with_header(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})", 16);
  expect_error(open, {p, "'w'", "data_offsets"});
  with_header(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
              R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
              16);
  expect_error(open, {p, "'b'", "overlaps", "'a'"});
  with_header(R"({"__metadata__": {"k": 3}})", 0);
  expect_error(open, {p, "__metadata__"});
  // A valid hand-made file opens (header with trailing spaces, as the format allows).
  with_header(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}   )", 8);
  io::SafetensorsFile ok(p);
  EXPECT_EQ(ok.to_float("w").data, (std::vector<float>{0.f, 0.f}));
  expect_error([&] { io::SafetensorsFile f(d / "absent.safetensors"); }, {"absent.safetensors"});
}

TEST(Safetensors, ShardedIndexErrors) {
  TempDir d;
  const auto a = dt_test::randn<float>(4, 1);
  const std::string dir = d.path.string();
  expect_error([&] { io::SafetensorsSet s(dir); }, {dir, "model.safetensors"});

  io::write_safetensors(d / "s1.safetensors",
                        {{"x", {"F32", {4}, a.data(), {}}}, {"y", {"F32", {4}, a.data(), {}}}});
  const std::string ipath = d / io::kWeightsIndexName;
  auto index = [&](const json& wm) {
    write_file(ipath, json{{"metadata", {{"total_size", 32}}}, {"weight_map", wm}}.dump());
  };
  auto open = [&] { io::SafetensorsSet s(dir); };
  index({{"x", "s1.safetensors"}, {"y", "s1.safetensors"}});
  EXPECT_EQ(io::SafetensorsSet(dir).names(), (std::vector<std::string>{"x", "y"}));
  index({{"x", "s1.safetensors"}, {"y", "s2.safetensors"}});
  expect_error(open, {ipath, "s2.safetensors", "missing"});
  index({{"x", "s1.safetensors"}, {"y", "s1.safetensors"}, {"z", "s1.safetensors"}});
  expect_error(open, {ipath, "'z'", "not in its shard", "s1.safetensors"});
  index({{"x", "s1.safetensors"}});
  expect_error(open, {ipath, "'y'", "not mapped"});
  write_file(ipath, "{\"weight_map\": 3}");
  expect_error(open, {ipath, "weight_map"});
  write_file(ipath, "{nope");
  expect_error(open, {ipath, "bad JSON"});
}

// ------------------------------------------------------------------------------- atomicity

TEST(Safetensors, WriterIsAtomic) {
  TempDir d;
  const auto a = dt_test::randn<float>(1 << 18, 1);  // 1 MiB of F32
  const std::map<std::string, TensorRecord> t = {{"x", {"F32", {1 << 18}, a.data(), {}}}};

  // Directory that does not exist: error, nothing created.
  const std::string nodir = d / "no/such/dir/t.safetensors";
  expect_error([&] { io::write_safetensors(nodir, t); }, {"no/such/dir"});
  EXPECT_FALSE(fs::exists(d.path / "no"));

  // Invalid request: error before anything is written.
  const std::string p = d / "t.safetensors";
  expect_error(
      [&] {
        io::write_safetensors(p, {{"x", {"I32", {4}, a.data(), {}}}});
      },
      {p, "'x'", "I32"});
  expect_error(
      [&] {
        io::write_safetensors(p, {{"x", {"F32", {4}, nullptr, {}}}});
      },
      {p, "'x'", "needs 16"});
  EXPECT_TRUE(dir_entries(d.path).empty());

  // A failure in the middle of writing (file size limit -> EFBIG) leaves an existing file
  // untouched and removes the temporary.
  const std::vector<float> small = {1, 2, 3};
  io::write_safetensors(p, {{"x", {"F32", {3}, small.data(), {}}}});
  const std::string before = read_file(p);
  struct rlimit old {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
  struct rlimit lim = old;
  lim.rlim_cur = 64 * 1024;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &lim), 0);
  bool threw = false;
  try {
    io::write_safetensors(p, t);
  } catch (const core::Error& e) {
    threw = true;
    EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &old);
  ::signal(SIGXFSZ, old_handler);
  EXPECT_TRUE(threw);
  EXPECT_EQ(read_file(p), before);
  EXPECT_EQ(dir_entries(d.path), std::vector<std::string>{"t.safetensors"});
}
