// Checkpoint directories: save/load round trip, pass-through bytes, dtypes, layout and errors.

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace deltatron;
using nlohmann::json;

namespace {

using dt_test::dir_entries;
using dt_test::expect_error;
using dt_test::read_file;
using dt_test::TempDir;

json text_config() {
  return json::parse(R"({
    "vocab_size": 11, "hidden_size": 8, "num_hidden_layers": 2, "intermediate_size": 6,
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
    "layer_types": ["linear_attention", "full_attention"],
    "linear_conv_kernel_dim": 3, "linear_key_head_dim": 3, "linear_value_head_dim": 4,
    "linear_num_key_heads": 1, "linear_num_value_heads": 2,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0,
                        "partial_rotary_factor": 0.5}
  })");
}

json config_json(bool multimodal, bool tied) {
  json t = text_config();
  if (!multimodal) {
    t["model_type"] = "qwen3_5_text";
    t["tie_word_embeddings"] = tied;
    return t;
  }
  t["model_type"] = "qwen3_5_text";
  return json{{"model_type", "qwen3_5"},
              {"text_config", t},
              {"tie_word_embeddings", tied},
              {"vision_config", {{"depth", 1}}}};
}

// A checkpoint with random parameters in mixed dtypes and a few pass-through tensors (mtp.* are
// pass-through: the config declares no MTP layers).
io::Checkpoint make_checkpoint(bool multimodal, bool tied) {
  io::Checkpoint ck;
  ck.config = model::parse_config(config_json(multimodal, tied), "test");
  EXPECT_EQ(ck.config.mtp_num_hidden_layers, 0);
  uint64_t seed = 1;
  for (const auto& s : model::param_specs(ck.config)) {
    core::Tensor t(s.shape);
    t.data = dt_test::randn<float>(static_cast<size_t>(t.numel()), seed++);
    const bool f32 =
        s.name.find("A_log") != std::string::npos || s.name.find("dt_bias") != std::string::npos;
    const bool f16 = s.name.find("norm") != std::string::npos;
    ck.param_dtypes[s.name] = f32 ? "F32" : f16 ? "F16" : "BF16";
    ck.params.emplace(s.name, std::move(t));
  }
  ck.passthrough["mtp.fc.weight"] = {"BF16", {8, 16}, dt_test::random_bytes(8 * 16 * 2, 100)};
  ck.passthrough["mtp.layers.0.mlp.experts.3.up_proj.weight"] = {
      "F8_E4M3", {3, 5}, dt_test::random_bytes(15, 101)};
  if (multimodal)
    ck.passthrough["model.visual.patch_embed.proj.weight"] = {
        "F32", {2, 3}, dt_test::random_bytes(24, 102)};
  return ck;
}

float stored(float x, const std::string& dtype) {
  if (dtype == "BF16") return io::bf16_to_float(io::float_to_bf16(x));
  if (dtype == "F16") return io::f16_to_float(io::float_to_f16(x));
  return x;
}

// Loaded params equal the saved ones rounded through their dtypes; everything else identical.
void expect_same(const io::Checkpoint& got, const io::Checkpoint& want) {
  EXPECT_EQ(got.config.raw, want.config.raw);
  EXPECT_EQ(got.config.prefix, want.config.prefix);
  ASSERT_EQ(got.params.size(), want.params.size());
  EXPECT_EQ(got.param_dtypes, want.param_dtypes);
  for (const auto& [name, w] : want.params) {
    const core::Tensor& g = got.params.at(name);
    ASSERT_EQ(g.shape, w.shape) << name;
    const std::string& dt = want.param_dtypes.at(name);
    for (size_t i = 0; i < w.data.size(); ++i)
      ASSERT_EQ(g.data[i], stored(w.data[i], dt)) << name << "[" << i << "] (" << dt << ")";
  }
  ASSERT_EQ(got.passthrough.size(), want.passthrough.size());
  for (const auto& [name, w] : want.passthrough) {
    const io::RawTensor& g = got.passthrough.at(name);
    EXPECT_EQ(g.dtype, w.dtype) << name;
    EXPECT_EQ(g.shape, w.shape) << name;
    EXPECT_EQ(g.bytes, w.bytes) << name;
  }
}

// Writes config.json and a single model.safetensors of the given tensors (F32) into dir.
void write_raw_checkpoint(const std::string& dir, const json& cfg,
                          const std::map<std::string, core::Tensor>& tensors) {
  fs::create_directories(dir);
  std::ofstream(dir + "/config.json") << cfg.dump(2);
  io::save_tensors_f32(dir + "/model.safetensors", tensors);
}

}  // namespace

TEST(Checkpoint, RoundTripTextOnly) {
  TempDir d;
  const io::Checkpoint ck = make_checkpoint(false, false);
  const std::string dir = d / "out";
  io::save_checkpoint(dir, ck);
  EXPECT_EQ(dir_entries(dir), (std::vector<std::string>{"config.json", "model.safetensors"}));
  EXPECT_EQ(dir_entries(d.path), std::vector<std::string>{"out"});  // no temporaries left
  const io::Checkpoint back = io::load_checkpoint(dir);
  expect_same(back, ck);
  EXPECT_EQ(back.config.hidden_size, 8);
  EXPECT_EQ(back.params.count("lm_head.weight"), 1u);
  EXPECT_EQ(back.params.count("model.layers.0.linear_attn.A_log"), 1u);

  // Re-saving what was loaded reproduces the files byte for byte.
  io::save_checkpoint(d / "again", back);
  EXPECT_EQ(read_file(d / "again/model.safetensors"), read_file(dir + "/model.safetensors"));
  EXPECT_EQ(read_file(d / "again/config.json"), read_file(dir + "/config.json"));
}

TEST(Checkpoint, RoundTripMultimodalShardedTied) {
  TempDir d;
  const io::Checkpoint ck = make_checkpoint(true, true);
  for (const auto& kv : ck.params)
    EXPECT_TRUE(kv.first.rfind("model.language_model.", 0) == 0) << kv.first;
  EXPECT_EQ(ck.params.count("lm_head.weight"), 0u);
  const std::string dir = d / "out";
  io::save_checkpoint(dir, ck, 300);
  const auto entries = dir_entries(dir);
  ASSERT_GT(entries.size(), 3u);
  EXPECT_EQ(entries[0], "config.json");
  EXPECT_EQ(entries.back(), "model.safetensors.index.json");
  EXPECT_EQ(entries[1].rfind("model-00001-of-", 0), 0u) << entries[1];
  const io::Checkpoint back = io::load_checkpoint(dir);
  expect_same(back, ck);
  EXPECT_EQ(back.config.layout, model::CheckpointLayout::multimodal);
  EXPECT_TRUE(back.config.tie_word_embeddings);
}

TEST(Checkpoint, SaveReplacesExistingDirectoryOnlyOnSuccess) {
  TempDir d;
  const std::string dir = d / "ck";
  io::Checkpoint ck = make_checkpoint(false, false);
  io::save_checkpoint(dir, ck, 300);  // sharded first
  std::ofstream(dir + "/stale.txt") << "old";
  const std::string old_index = read_file(dir + "/model.safetensors.index.json");

  // A failing save (a parameter missing) leaves the existing directory as it was.
  io::Checkpoint broken = ck;
  broken.params.erase("model.norm.weight");
  expect_error([&] { io::save_checkpoint(dir, broken); }, {"model.norm.weight", "missing"});
  EXPECT_EQ(read_file(dir + "/model.safetensors.index.json"), old_index);
  EXPECT_EQ(dir_entries(d.path), std::vector<std::string>{"ck"});
  broken = ck;
  broken.params.at("model.norm.weight") = core::Tensor({9});
  expect_error([&] { io::save_checkpoint(dir, broken); }, {"model.norm.weight", "[9]", "[8]"});
  broken = ck;
  broken.params["model.extra.weight"] = core::Tensor({2});
  expect_error([&] { io::save_checkpoint(dir, broken); }, {"model.extra.weight"});
  broken = ck;
  broken.passthrough["junk.weight"] = {"U8", {1}, {7}};
  expect_error([&] { io::save_checkpoint(dir, broken); }, {"junk.weight"});
  EXPECT_EQ(dir_entries(d.path), std::vector<std::string>{"ck"});

  // A successful save replaces the checkpoint's files (one weight file now; the index and the
  // shards are gone) and keeps every other file (stale.txt is not the checkpoint's to delete).
  ck.params.at("model.norm.weight").data.assign(8, 0.5f);
  io::save_checkpoint(dir, ck);
  EXPECT_EQ(dir_entries(dir),
            (std::vector<std::string>{"config.json", "model.safetensors", "stale.txt"}));
  EXPECT_EQ(read_file(dir + "/stale.txt"), "old");
  EXPECT_EQ(dir_entries(d.path), std::vector<std::string>{"ck"});
  EXPECT_EQ(io::load_checkpoint(dir).params.at("model.norm.weight").data,
            std::vector<float>(8, 0.5f));
  // A trailing slash names the same directory.
  io::save_checkpoint(dir + "/", ck);
  EXPECT_EQ(dir_entries(d.path), std::vector<std::string>{"ck"});
}

TEST(Checkpoint, LoadErrorsNameTheTensor) {
  TempDir d;
  const json cfg = config_json(false, false);
  const io::Checkpoint ck = make_checkpoint(false, false);
  const std::string dir = d / "bad";

  auto with = [&](auto&& edit) {
    std::map<std::string, core::Tensor> t = ck.params;
    edit(t);
    fs::remove_all(dir);
    write_raw_checkpoint(dir, cfg, t);
  };
  auto load = [&] { io::load_checkpoint(dir); };

  with([](auto& t) { t.erase("model.layers.1.self_attn.k_norm.weight"); });
  expect_error(load, {dir, "missing tensor 'model.layers.1.self_attn.k_norm.weight'", "[4]"});
  with([](auto& t) { t.at("model.layers.0.linear_attn.conv1d.weight") = core::Tensor({14, 3}); });
  expect_error(load, {dir, "'model.layers.0.linear_attn.conv1d.weight'", "[14, 3]", "[14, 1, 3]"});
  with([](auto& t) { t["model.layers.0.mlp.gate.weight"] = core::Tensor({2, 8}); });
  expect_error(load, {dir, "unexpected tensor 'model.layers.0.mlp.gate.weight'"});
  with([](auto& t) {
    core::Tensor x = t.at("model.norm.weight");
    t.erase("model.norm.weight");
    t["model.language_model.norm.weight"] = x;  // multimodal name in a text-only config
  });
  expect_error(load, {dir, "'model.norm.weight'"});
  with([](auto& t) { t["mtp.norm.weight"] = core::Tensor({8}); });  // pass-through is fine
  EXPECT_EQ(io::load_checkpoint(dir).passthrough.count("mtp.norm.weight"), 1u);

  // A tied model has no lm_head.weight.
  {
    json tied = config_json(false, true);
    fs::remove_all(dir);
    write_raw_checkpoint(dir, tied, ck.params);  // ck is untied: includes lm_head.weight
    expect_error(load, {dir, "'lm_head.weight'", "ties"});
  }
  // A parameter stored as an integer dtype cannot become float32.
  {
    fs::remove_all(dir);
    write_raw_checkpoint(dir, cfg, {});
    std::map<std::string, io::TensorRecord> v;
    for (const auto& [name, t] : ck.params) v[name] = {"F32", t.shape, t.ptr(), {}};
    std::vector<uint8_t> ints(8 * 4);
    v["model.norm.weight"] = {"I32", {8}, nullptr, ints};
    io::write_safetensors(dir + "/model.safetensors", v);
    expect_error(load, {dir, "'model.norm.weight'", "I32"});
  }
  // No weights, no config.
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir + "/config.json") << cfg.dump();
  expect_error(load, {dir, "model.safetensors"});
  expect_error([&] { io::load_checkpoint(d / "nothing"); }, {"config.json"});
}

TEST(Checkpoint, MultimodalPrefixRequired) {
  TempDir d;
  // Text-only names under a multimodal config: the first parameter is reported missing.
  const io::Checkpoint text = make_checkpoint(false, false);
  const std::string dir = d / "mm";
  write_raw_checkpoint(dir, config_json(true, false), text.params);
  expect_error([&] { io::load_checkpoint(dir); },
               {dir, "missing tensor 'model.language_model.embed_tokens.weight'", "[11, 8]"});
}

TEST(Checkpoint, SaveTensorsF32) {
  TempDir d;
  std::map<std::string, core::Tensor> g;
  g["b"] = core::Tensor({3, 2});
  g["b"].data = dt_test::randn<float>(6, 5);
  g["a"] = core::Tensor({4});
  g["a"].data = dt_test::randn<float>(4, 6);
  const std::string path = d / "grads.safetensors";
  io::save_tensors_f32(path, g);
  io::SafetensorsFile f(path);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"a", "b"}));
  for (const auto& [name, t] : g) {
    EXPECT_EQ(f.info(name).dtype, "F32");
    EXPECT_EQ(f.to_float(name).shape, t.shape);
    EXPECT_EQ(f.to_float(name).data, t.data);
  }
  EXPECT_EQ(dir_entries(d.path), std::vector<std::string>{"grads.safetensors"});
}

// A dense checkpoint whose config declares one MTP layer and whose files hold it.
io::Checkpoint make_mtp_checkpoint(bool multimodal) {
  json cfg = config_json(multimodal, false);
  (multimodal ? cfg["text_config"] : cfg)["mtp_num_hidden_layers"] = 1;
  io::Checkpoint ck;
  ck.config = model::parse_config(cfg, "test");
  ck.config.mtp_enabled = true;
  uint64_t seed = 7;
  for (const auto& s : model::param_specs(ck.config)) {
    core::Tensor t(s.shape);
    t.data = dt_test::randn<float>(static_cast<size_t>(t.numel()), seed++);
    ck.param_dtypes[s.name] = "BF16";
    ck.params.emplace(s.name, std::move(t));
  }
  if (multimodal)
    ck.passthrough["model.visual.blocks.0.attn.qkv.weight"] = {
        "BF16", {3, 2}, dt_test::random_bytes(12, 5)};
  return ck;
}

TEST(Checkpoint, MtpTensorsBecomeParameters) {
  TempDir d;
  for (bool mm : {false, true}) {
    const io::Checkpoint ck = make_mtp_checkpoint(mm);
    ASSERT_EQ(ck.params.count("mtp.layers.0.self_attn.q_proj.weight"), 1u);
    ASSERT_EQ(ck.params.count("mtp.layers.0.mlp.gate_proj.weight"), 1u);
    const std::string dir = d / (mm ? "mm" : "text");
    io::save_checkpoint(dir, ck);
    const io::Checkpoint back = io::load_checkpoint(dir);
    EXPECT_TRUE(back.config.mtp_enabled);
    expect_same(back, ck);
    for (const auto& kv : back.passthrough) EXPECT_NE(kv.first.rfind("mtp.", 0), 0u) << kv.first;
    EXPECT_EQ(back.params.at("mtp.fc.weight").shape, (core::Shape{8, 16}));
    io::save_checkpoint(d / "again", back);
    EXPECT_EQ(read_file(d / "again/model.safetensors"), read_file(dir + "/model.safetensors"));
  }
}

TEST(Checkpoint, MtpErrorsAndIgnoreMtp) {
  TempDir d;
  const io::Checkpoint ck = make_mtp_checkpoint(true);
  const std::string dir = d / "ck";
  io::save_checkpoint(dir, ck);
  const json cfg = ck.config.raw;

  // --ignore-mtp: one warning line, mtp.* kept as bytes, not parameters.
  ::testing::internal::CaptureStderr();
  const io::Checkpoint ign = io::load_checkpoint(dir, io::LoadOptions{.ignore_mtp = true});
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_FALSE(ign.config.mtp_enabled);
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
  EXPECT_NE(err.find("mtp_num_hidden_layers=1"), std::string::npos) << err;
  EXPECT_NE(err.find(dir), std::string::npos) << err;
  size_t n_mtp = 0;
  for (const auto& kv : ck.params) {
    if (kv.first.rfind("mtp.", 0) != 0) continue;
    ++n_mtp;
    EXPECT_EQ(ign.params.count(kv.first), 0u) << kv.first;
    ASSERT_EQ(ign.passthrough.count(kv.first), 1u) << kv.first;
    EXPECT_EQ(ign.passthrough.at(kv.first).dtype, "BF16");
  }
  EXPECT_EQ(ign.passthrough.size(), n_mtp + 1);  // + the visual tensor
  // Saving it writes the same bytes back.
  io::save_checkpoint(d / "ign", ign);
  EXPECT_EQ(read_file(d / "ign/model.safetensors"), read_file(dir + "/model.safetensors"));
  // Without MTP in the config, ignore_mtp changes nothing and prints nothing.
  json no_mtp = cfg;
  no_mtp["text_config"]["mtp_num_hidden_layers"] = 0;
  std::ofstream(d / "ign/config.json") << no_mtp.dump();
  ::testing::internal::CaptureStderr();
  const io::Checkpoint plain = io::load_checkpoint(d / "ign", io::LoadOptions{.ignore_mtp = true});
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  EXPECT_EQ(plain.passthrough.size(), ign.passthrough.size());

  // A missing MTP tensor is named.
  const std::string bad = d / "bad";
  auto with = [&](auto&& edit) {
    std::map<std::string, core::Tensor> t = ck.params;
    edit(t);
    fs::remove_all(bad);
    write_raw_checkpoint(bad, cfg, t);
  };
  with([](auto& t) { t.erase("mtp.layers.0.self_attn.k_norm.weight"); });
  expect_error([&] { io::load_checkpoint(bad); },
               {bad, "missing tensor 'mtp.layers.0.self_attn.k_norm.weight'", "[4]"});
  with([](auto& t) { t.at("mtp.fc.weight") = core::Tensor({8, 8}); });
  expect_error([&] { io::load_checkpoint(bad); }, {bad, "'mtp.fc.weight'", "[8, 8]", "[8, 16]"});
  with([](auto& t) { t["mtp.layers.1.input_layernorm.weight"] = core::Tensor({8}); });
  expect_error([&] { io::load_checkpoint(bad); },
               {bad, "unexpected tensor 'mtp.layers.1.input_layernorm.weight'"});
  // No mtp.* at all: the error suggests --ignore-mtp, which then loads it.
  with([](auto& t) {
    std::erase_if(t, [](const auto& kv) { return kv.first.rfind("mtp.", 0) == 0; });
  });
  expect_error([&] { io::load_checkpoint(bad); },
               {"config declares mtp_num_hidden_layers=1 but " + bad +
                " has no mtp.* tensors (pass --ignore-mtp to train without MTP)"});
  ::testing::internal::CaptureStderr();
  EXPECT_FALSE(io::load_checkpoint(bad, {.ignore_mtp = true}).config.mtp_enabled);
  ::testing::internal::GetCapturedStderr();

  // A saved checkpoint cannot hold mtp.* both as parameters and as pass-through.
  io::Checkpoint both = ck;
  both.passthrough["mtp.extra.weight"] = {"BF16", {1}, {0, 0}};
  expect_error([&] { io::save_checkpoint(d / "both", both); }, {"mtp.extra.weight", "MTP"});
}
