// HF layouts of MoE/MTP checkpoints: fused and per-expert experts, consumption, round trip,
// errors; adapter module names in the text and multimodal layouts.

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.h"
#include "io/checkpoint.h"
#include "io/hf_layout.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace deltatron;
using nlohmann::json;

namespace {

using dt_test::expect_error;
using dt_test::TempDir;

// Small MoE model: D=8, layers [GDN, attention], E=4, k=2, F=6, shared Fs, one MTP layer.
json moe_config(bool multimodal, bool tied, int64_t Fs, int64_t mtp_layers = 1) {
  json t = json::parse(R"({
    "model_type": "qwen3_5_moe_text",
    "vocab_size": 11, "hidden_size": 8, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
    "layer_types": ["linear_attention", "full_attention"],
    "linear_conv_kernel_dim": 3, "linear_key_head_dim": 3, "linear_value_head_dim": 4,
    "linear_num_key_heads": 1, "linear_num_value_heads": 2,
    "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 6,
    "router_aux_loss_coef": 0.001,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0,
                        "partial_rotary_factor": 0.5}
  })");
  t["shared_expert_intermediate_size"] = Fs;
  t["mtp_num_hidden_layers"] = mtp_layers;
  if (!multimodal) {
    t["tie_word_embeddings"] = tied;
    return t;
  }
  return json{{"model_type", "qwen3_5_moe"},
              {"text_config", t},
              {"tie_word_embeddings", tied},
              {"vision_config", {{"depth", 1}}}};
}

constexpr int64_t kE = 4, kF = 6, kD = 8;

// The config with its MTP module enabled (as the loader sets it when mtp.* are present).
model::Config with_mtp(const json& j) {
  model::Config c = model::parse_config(j, "test");
  c.mtp_enabled = c.mtp_num_hidden_layers > 0;
  return c;
}

// One tensor as an HF file stores it (values as float32; written in dtype).
struct FileTensor {
  std::string dtype;
  core::Shape shape;
  std::vector<float> v;
};
using Files = std::map<std::string, FileTensor>;

bool ends_with(const std::string& s, const std::string& x) {
  return s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
}

// The tensors of an HF checkpoint of c, written by hand (independently of io/hf_layout): the
// experts of the main layers per-expert iff main_per_expert, of the MTP layers iff
// mtp_per_expert. next() gives the values, dtype_of(name) the dtype.
template <typename Next, typename Dtype>
Files hf_files(const model::Config& c, bool main_per_expert, bool mtp_per_expert, Next&& next,
               Dtype&& dtype_of) {
  Files out;
  auto add = [&](const std::string& name, core::Shape shape) {
    FileTensor t{dtype_of(name), shape, std::vector<float>(core::numel(shape))};
    for (float& x : t.v) x = next();
    out.emplace(name, std::move(t));
  };
  for (const auto& s : model::param_specs(c)) {
    const bool per = s.name.rfind("mtp.", 0) == 0 ? mtp_per_expert : main_per_expert;
    if (per && ends_with(s.name, "experts.gate_up_proj")) {
      const std::string m = s.name.substr(0, s.name.size() - std::string("gate_up_proj").size());
      for (int64_t e = 0; e < kE; ++e) {
        add(m + std::to_string(e) + ".gate_proj.weight", {kF, kD});
        add(m + std::to_string(e) + ".up_proj.weight", {kF, kD});
      }
    } else if (per && ends_with(s.name, "experts.down_proj")) {
      const std::string m = s.name.substr(0, s.name.size() - std::string("down_proj").size());
      for (int64_t e = 0; e < kE; ++e) add(m + std::to_string(e) + ".down_proj.weight", {kD, kF});
    } else {
      add(s.name, s.shape);
    }
  }
  return out;
}

// Unique integer values 1, 2, 3, ... (exact in F32) in F32.
Files counted_files(const model::Config& c, bool main_per, bool mtp_per, float& counter) {
  return hf_files(
      c, main_per, mtp_per, [&] { return counter += 1.f; },
      [](const std::string&) { return std::string("F32"); });
}

// Random values; BF16 mostly, A_log/dt_bias F32, expert 1's MTP up_proj F16, norms F16.
Files random_files(const model::Config& c, bool main_per, bool mtp_per, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  return hf_files(
      c, main_per, mtp_per, [&] { return nd(rng); },
      [](const std::string& n) {
        if (ends_with(n, "A_log") || ends_with(n, "dt_bias")) return std::string("F32");
        if (n == "mtp.layers.0.mlp.experts.1.up_proj.weight") return std::string("F16");
        if (ends_with(n, "norm.weight")) return std::string("F16");
        return std::string("BF16");
      });
}

// Writes config.json and the tensors (plus raw pass-through tensors) into a fresh dir.
void write_hf(const std::string& dir, const json& cfg, const Files& files,
              const std::map<std::string, io::RawTensor>& raw = {},
              int64_t max_shard_bytes = int64_t(1) << 40) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir + "/config.json") << cfg.dump(2);
  std::map<std::string, io::TensorRecord> views;
  for (const auto& [n, t] : files) views[n] = {t.dtype, t.shape, t.v.data(), {}};
  for (const auto& [n, r] : raw) views[n] = {r.dtype, r.shape, nullptr, {r.bytes}};
  io::write_safetensors_sharded(dir, views, {{"format", "pt"}}, max_shard_bytes);
}

std::map<std::string, io::RawTensor> visual_tensors() {
  std::map<std::string, io::RawTensor> raw;
  std::vector<uint8_t> b(2 * 3 * 4);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(i * 37 + 1);
  raw["model.visual.patch_embed.proj.weight"] = {"F32", {2, 3}, b};
  raw["model.visual.blocks.0.norm1.weight"] = {"I8", {5}, {1, 2, 3, 4, 5}};
  return raw;
}

// Each checkpoint variant the tests run through.
struct Variant {
  bool mm, tied;
  int64_t Fs;
  bool main_per, mtp_per;
  std::string str() const {
    return std::string(mm ? "multimodal" : "text") + (tied ? " tied" : " untied") +
           " Fs=" + std::to_string(Fs) + (main_per ? " main per-expert" : " main fused") +
           (mtp_per ? " mtp per-expert" : " mtp fused");
  }
};

std::vector<Variant> all_variants() {
  std::vector<Variant> out;
  for (bool mm : {false, true})
    for (bool tied : {false, true})
      for (int64_t Fs : {5, 0})
        for (bool main_per : {false, true})
          for (bool mtp_per : {false, true}) out.push_back({mm, tied, Fs, main_per, mtp_per});
  return out;
}

// Every tensor of a safetensors directory: dtype, shape and bytes.
std::map<std::string, io::RawTensor> read_dir(const std::string& dir) {
  io::SafetensorsSet w(dir);
  std::map<std::string, io::RawTensor> out;
  for (const auto& n : w.names()) {
    const auto b = w.bytes(n);
    out[n] = {w.info(n).dtype, w.info(n).shape, {b.begin(), b.end()}};
  }
  return out;
}

json read_json(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

}  // namespace

TEST(HfLayout, PlanConsumesEveryTensorOnceAndProducesEveryParamOnce) {
  for (const Variant& v : all_variants()) {
    SCOPED_TRACE(v.str());
    const model::Config c = with_mtp(moe_config(v.mm, v.tied, v.Fs));
    float counter = 0;
    const Files files = counted_files(c, v.main_per, v.mtp_per, counter);
    std::vector<std::string> names;
    for (const auto& kv : files) names.push_back(kv.first);
    const io::ExpertsFormats fmts = io::detect_expert_formats(c, names, "test");
    ASSERT_EQ(fmts.size(), 3u);  // 2 main layers + 1 MTP layer
    for (const auto& [m, f] : fmts) {
      const bool per = m.rfind("mtp.", 0) == 0 ? v.mtp_per : v.main_per;
      EXPECT_EQ(f.layout, per ? io::ExpertLayout::per_expert : io::ExpertLayout::fused) << m;
    }
    const auto plan = io::layout_plan(c, fmts);
    const auto specs = model::param_specs(c);
    ASSERT_EQ(plan.size(), specs.size());
    std::map<std::string, int> produced, consumed;
    for (size_t i = 0; i < plan.size(); ++i) {
      EXPECT_EQ(plan[i].param.name, specs[i].name);
      EXPECT_EQ(plan[i].param.shape, specs[i].shape);
      ++produced[plan[i].param.name];
      int64_t n = 0;
      for (const auto& f : plan[i].files) {
        ++consumed[f.name];
        ASSERT_EQ(files.count(f.name), 1u) << f.name << " is not in the file";
        EXPECT_EQ(files.at(f.name).shape, f.shape) << f.name;
        n += core::numel(f.shape);
      }
      EXPECT_EQ(n, core::numel(plan[i].param.shape)) << plan[i].param.name;
    }
    for (const auto& [n, k] : produced) EXPECT_EQ(k, 1) << n << " produced " << k << " times";
    for (const auto& [n, k] : consumed) EXPECT_EQ(k, 1) << n << " consumed " << k << " times";
    EXPECT_EQ(consumed.size(), files.size());  // every file tensor consumed
  }
}

TEST(HfLayout, LoadMovesEveryValueExactlyOnce) {
  TempDir d;
  for (const Variant& v : all_variants()) {
    SCOPED_TRACE(v.str());
    const json cfg = moe_config(v.mm, v.tied, v.Fs);
    const model::Config c = with_mtp(cfg);
    float counter = 0;
    const Files files = counted_files(c, v.main_per, v.mtp_per, counter);
    write_hf(d / "ck", cfg, files,
             v.mm ? visual_tensors() : std::map<std::string, io::RawTensor>{});
    const io::Checkpoint ck = io::load_checkpoint(d / "ck");
    EXPECT_TRUE(ck.config.mtp_enabled);
    EXPECT_EQ(ck.passthrough.size(), v.mm ? 2u : 0u);

    // The multiset of parameter values is exactly {1, ..., counter}.
    std::vector<float> all;
    for (const auto& [n, t] : ck.params) all.insert(all.end(), t.data.begin(), t.data.end());
    std::sort(all.begin(), all.end());
    ASSERT_EQ(all.size(), static_cast<size_t>(counter));
    for (size_t i = 0; i < all.size(); ++i) ASSERT_EQ(all[i], float(i + 1)) << "value " << i;

    // Element placement: gate_up[e] = gate_e || up_e (rows), down[e] = down_e.
    for (const std::string& m : model::expert_module_prefixes(ck.config)) {
      const bool per = m.rfind("mtp.", 0) == 0 ? v.mtp_per : v.main_per;
      EXPECT_EQ(ck.expert_formats.at(m).layout,
                per ? io::ExpertLayout::per_expert : io::ExpertLayout::fused);
      const core::Tensor& gu = ck.params.at(m + "gate_up_proj");
      const core::Tensor& dn = ck.params.at(m + "down_proj");
      ASSERT_EQ(gu.shape, (core::Shape{kE, 2 * kF, kD}));
      ASSERT_EQ(dn.shape, (core::Shape{kE, kD, kF}));
      if (!per) {
        EXPECT_EQ(gu.data, files.at(m + "gate_up_proj").v);
        EXPECT_EQ(dn.data, files.at(m + "down_proj").v);
        EXPECT_TRUE(ck.expert_formats.at(m).dtypes.empty());
        continue;
      }
      for (int64_t e = 0; e < kE; ++e) {
        const std::string x = m + std::to_string(e);
        const auto& g = files.at(x + ".gate_proj.weight").v;
        const auto& u = files.at(x + ".up_proj.weight").v;
        const auto& w = files.at(x + ".down_proj.weight").v;
        for (int64_t r = 0; r < 2 * kF; ++r)
          for (int64_t k = 0; k < kD; ++k)
            ASSERT_EQ(gu.data[(e * 2 * kF + r) * kD + k],
                      r < kF ? g[r * kD + k] : u[(r - kF) * kD + k])
                << x << " row " << r << " col " << k;
        for (int64_t r = 0; r < kD * kF; ++r) ASSERT_EQ(dn.data[e * kD * kF + r], w[r]) << x;
        EXPECT_EQ(ck.expert_formats.at(m).dtypes.at(x + ".up_proj.weight"), "F32");
      }
      EXPECT_EQ(ck.expert_formats.at(m).dtypes.size(), size_t(3 * kE));
    }
  }
}

TEST(HfLayout, RoundTripIsByteIdentical) {
  TempDir d;
  // The release layout (multimodal, fused decoder, per-expert MTP) and its mirror image.
  for (const Variant& v :
       {Variant{true, false, 5, false, true}, Variant{false, true, 0, true, false},
        Variant{true, true, 5, true, true}}) {
    SCOPED_TRACE(v.str());
    const json cfg = moe_config(v.mm, v.tied, v.Fs);
    const model::Config c = with_mtp(cfg);
    const Files files = random_files(c, v.main_per, v.mtp_per, 42);
    std::map<std::string, io::RawTensor> raw;
    if (v.mm) raw = visual_tensors();
    write_hf(d / "src", cfg, files, raw, 2000);  // sharded
    const io::Checkpoint ck = io::load_checkpoint(d / "src");
    EXPECT_TRUE(ck.config.mtp_enabled);
    if (v.mtp_per) {  // mixed dtypes in one module: remembered per tensor
      const auto& dt = ck.expert_formats.at("mtp.layers.0.mlp.experts.").dtypes;
      EXPECT_EQ(dt.at("mtp.layers.0.mlp.experts.1.up_proj.weight"), "F16");
      EXPECT_EQ(dt.at("mtp.layers.0.mlp.experts.0.up_proj.weight"), "BF16");
      EXPECT_EQ(ck.param_dtypes.at("mtp.layers.0.mlp.experts.gate_up_proj"), "F32");  // mixed
      EXPECT_EQ(ck.param_dtypes.at("mtp.layers.0.mlp.experts.down_proj"), "BF16");
    }

    for (int64_t shard : {int64_t(5'000'000'000), int64_t(3000)}) {
      io::save_checkpoint(d / "out", ck, shard);
      const auto a = read_dir(d / "src"), b = read_dir(d / "out");
      ASSERT_EQ(a.size(), b.size());
      for (const auto& [n, t] : a) {
        ASSERT_EQ(b.count(n), 1u) << n << " not written back";
        EXPECT_EQ(b.at(n).dtype, t.dtype) << n;
        EXPECT_EQ(b.at(n).shape, t.shape) << n;
        EXPECT_TRUE(b.at(n).bytes == t.bytes) << n << ": bytes differ";
      }
      EXPECT_EQ(read_json(d / "out/config.json"), read_json(d / "src/config.json"));
    }
    // Loading what was saved gives the same parameters and formats.
    const io::Checkpoint back = io::load_checkpoint(d / "out");
    EXPECT_EQ(back.params.size(), ck.params.size());
    for (const auto& [n, t] : ck.params) EXPECT_EQ(back.params.at(n).data, t.data) << n;
    EXPECT_EQ(back.param_dtypes, ck.param_dtypes);
    for (const auto& [m, f] : ck.expert_formats) {
      EXPECT_EQ(back.expert_formats.at(m).layout, f.layout) << m;
      EXPECT_EQ(back.expert_formats.at(m).dtypes, f.dtypes) << m;
    }
  }
}

TEST(HfLayout, IgnoreMtpKeepsPerExpertMtpBytes) {
  TempDir d;
  const json cfg = moe_config(true, false, 5);
  const model::Config c = with_mtp(cfg);
  const Files files = random_files(c, false, true, 3);
  write_hf(d / "src", cfg, files, visual_tensors());
  ::testing::internal::CaptureStderr();
  const io::Checkpoint ck = io::load_checkpoint(d / "src", {.ignore_mtp = true});
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
  EXPECT_FALSE(ck.config.mtp_enabled);
  EXPECT_EQ(ck.expert_formats.size(), 2u);  // the main layers only
  size_t n_mtp = 0;
  for (const auto& [n, t] : files)
    if (n.rfind("mtp.", 0) == 0) {
      ++n_mtp;
      ASSERT_EQ(ck.passthrough.count(n), 1u) << n;
      EXPECT_EQ(ck.params.count(n), 0u) << n;
    }
  EXPECT_EQ(ck.passthrough.size(), n_mtp + 2);
  io::save_checkpoint(d / "out", ck);
  const auto a = read_dir(d / "src"), b = read_dir(d / "out");
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [n, t] : a) EXPECT_TRUE(b.at(n).bytes == t.bytes) << n;
}

TEST(HfLayout, ToCheckpointNamesSplitsPerExpertModules) {
  TempDir d;
  const json cfg = moe_config(true, false, 5);
  const model::Config c = with_mtp(cfg);
  const Files files = random_files(c, false, true, 9);
  write_hf(d / "src", cfg, files, visual_tensors());
  const io::Checkpoint ck = io::load_checkpoint(d / "src");

  std::map<std::string, core::Tensor> grads;
  uint64_t seed = 100;
  for (const auto& [n, t] : ck.params) {
    core::Tensor g(t.shape);
    g.data = dt_test::randn<float>(g.data.size(), seed++);
    grads.emplace(n, std::move(g));
  }
  const auto out = io::to_checkpoint_names(ck, grads);
  // Exactly the file's parameter tensors, by name and shape.
  ASSERT_EQ(out.size(), files.size());
  for (const auto& [n, t] : files) {
    ASSERT_EQ(out.count(n), 1u) << n;
    EXPECT_EQ(out.at(n).shape, t.shape) << n;
  }
  const std::string m = "mtp.layers.0.mlp.experts.";
  const core::Tensor& gu = grads.at(m + "gate_up_proj");
  const core::Tensor& up3 = out.at(m + "3.up_proj.weight");
  for (int64_t r = 0; r < kF; ++r)
    for (int64_t k = 0; k < kD; ++k)
      ASSERT_EQ(up3.data[r * kD + k], gu.data[(3 * 2 * kF + kF + r) * kD + k]);
  EXPECT_EQ(out.at(m + "2.down_proj.weight").data,
            std::vector<float>(grads.at(m + "down_proj").data.begin() + 2 * kD * kF,
                               grads.at(m + "down_proj").data.begin() + 3 * kD * kF));
  const std::string fused = "model.language_model.layers.0.mlp.experts.gate_up_proj";
  EXPECT_EQ(out.at(fused).data, grads.at(fused).data);

  // A subset converts on its own; unknown names and wrong shapes are errors naming the tensor.
  const auto one = io::to_checkpoint_names(ck, {{m + "down_proj", grads.at(m + "down_proj")}});
  EXPECT_EQ(one.size(), size_t(kE));
  expect_error(
      [&] {
        io::to_checkpoint_names(ck, {{"model.visual.x", core::Tensor({1})}});
      },
      {"'model.visual.x'", "not a parameter"});
  expect_error(
      [&] {
        io::to_checkpoint_names(ck, {{m + "down_proj", core::Tensor({4, 6, 8})}});
      },
      {m + "down_proj", "[4, 6, 8]", "[4, 8, 6]"});

  // The F32 gradient file carries the checkpoint's names.
  io::save_tensors_f32(d / "grads.safetensors", out);
  io::SafetensorsFile g(d / "grads.safetensors");
  EXPECT_EQ(g.tensors().size(), files.size());
  EXPECT_TRUE(g.contains(m + "0.gate_proj.weight"));
  EXPECT_FALSE(g.contains(m + "gate_up_proj"));
}

TEST(HfLayout, AssembleAndSplitAreInverse) {
  const model::Config c = with_mtp(moe_config(false, false, 5));
  io::ExpertsFormats fmts;
  fmts["model.layers.1.mlp.experts."].layout = io::ExpertLayout::per_expert;
  for (const auto& src : io::layout_plan(c, fmts)) {
    core::Tensor p(src.param.shape);
    p.data = dt_test::randn<float>(p.data.size(), 1);
    const auto parts = io::split_param(src, p);
    ASSERT_EQ(parts.size(), src.files.size()) << src.param.name;
    EXPECT_EQ(io::assemble_param(src, parts).data, p.data) << src.param.name;
    const bool per = src.param.name.rfind("model.layers.1.mlp.experts.", 0) == 0;
    EXPECT_EQ(src.how != io::Assembly::copy, per) << src.param.name;
    EXPECT_EQ(src.module, per ? "model.layers.1.mlp.experts." : "") << src.param.name;
  }
  expect_error(
      [&] {
        io::ExpertsFormats bad;
        bad["model.layers.9.mlp.experts."] = {};
        io::layout_plan(c, bad);
      },
      {"model.layers.9.mlp.experts."});
}

TEST(HfLayout, SaveFromScratchIsFusedUnlessAskedOtherwise) {
  TempDir d;
  io::Checkpoint ck;
  ck.config = with_mtp(moe_config(false, false, 5));
  for (const auto& s : model::param_specs(ck.config)) {
    core::Tensor t(s.shape);
    t.data = dt_test::randn<float>(t.data.size(), 11);
    ck.params.emplace(s.name, std::move(t));
  }
  io::save_checkpoint(d / "fused", ck);
  auto names = io::SafetensorsFile(d / "fused/model.safetensors").tensors();
  EXPECT_EQ(names.count("mtp.layers.0.mlp.experts.gate_up_proj"), 1u);
  EXPECT_EQ(names.at("model.layers.0.mlp.experts.down_proj").dtype, "F32");

  ck.expert_formats["mtp.layers.0.mlp.experts."].layout = io::ExpertLayout::per_expert;
  ck.param_dtypes["mtp.layers.0.mlp.experts.down_proj"] = "BF16";
  io::save_checkpoint(d / "per", ck);
  names = io::SafetensorsFile(d / "per/model.safetensors").tensors();
  EXPECT_EQ(names.count("mtp.layers.0.mlp.experts.gate_up_proj"), 0u);
  EXPECT_EQ(names.at("mtp.layers.0.mlp.experts.3.up_proj.weight").dtype, "F32");
  EXPECT_EQ(names.at("mtp.layers.0.mlp.experts.3.down_proj.weight").dtype, "BF16");
  const io::Checkpoint back = io::load_checkpoint(d / "per");
  EXPECT_EQ(back.params.at("mtp.layers.0.mlp.experts.gate_up_proj").data,
            ck.params.at("mtp.layers.0.mlp.experts.gate_up_proj").data);

  ck.expert_formats["model.layers.7.mlp.experts."] = {};
  expect_error([&] { io::save_checkpoint(d / "bad", ck); },
               {d / "bad", "model.layers.7.mlp.experts."});
  EXPECT_FALSE(fs::exists(d / "bad"));
}

TEST(HfLayout, LoadErrorsNameTheTensor) {
  TempDir d;
  const std::string dir = d / "bad";
  const json cfg = moe_config(true, false, 5);
  const model::Config c = with_mtp(cfg);
  float counter = 0;
  // Release layout: fused decoder, per-expert MTP.
  const Files base = counted_files(c, false, true, counter);
  const std::string P = "model.language_model.layers.";
  auto with = [&](auto&& edit, const json& config) {
    Files f = base;
    edit(f);
    write_hf(dir, config, f);
  };
  auto load = [&] { io::load_checkpoint(dir); };
  auto shape = [](const core::Shape& s) {
    return FileTensor{"F32", s, std::vector<float>(core::numel(s))};
  };

  // A missing per-expert tensor (main layers per-expert here).
  {
    Files f = counted_files(c, true, true, counter);
    f.erase(P + "0.mlp.experts.3.up_proj.weight");
    write_hf(dir, cfg, f);
    expect_error(
        load,
        {dir, "model.language_model.layers.0.mlp.experts.3.up_proj.weight is missing", "[6, 8]"});
  }
  with([](Files& f) { f.erase("mtp.layers.0.mlp.experts.3.up_proj.weight"); }, cfg);
  expect_error(load, {dir, "mtp.layers.0.mlp.experts.3.up_proj.weight is missing"});
  with([](Files& f) { f.erase("mtp.layers.0.mlp.experts.0.down_proj.weight"); }, cfg);
  expect_error(load, {dir, "mtp.layers.0.mlp.experts.0.down_proj.weight is missing", "[8, 6]"});
  // Missing fused tensors, router and shared expert.
  with([&](Files& f) { f.erase(P + "1.mlp.experts.down_proj"); }, cfg);
  expect_error(load, {dir, "missing tensor '" + P + "1.mlp.experts.down_proj'", "[4, 8, 6]"});
  with([&](Files& f) { f.erase(P + "1.mlp.experts.gate_up_proj"); }, cfg);
  expect_error(load, {dir, "missing tensor '" + P + "1.mlp.experts.gate_up_proj'", "[4, 12, 8]"});
  with([&](Files& f) { f.erase(P + "0.mlp.gate.weight"); }, cfg);
  expect_error(load, {dir, "missing tensor '" + P + "0.mlp.gate.weight'", "[4, 8]"});
  with([&](Files& f) { f.erase("mtp.layers.0.mlp.shared_expert_gate.weight"); }, cfg);
  expect_error(load,
               {dir, "missing tensor 'mtp.layers.0.mlp.shared_expert_gate.weight'", "[1, 8]"});

  // Mixed fused / per-expert in one module.
  with([&](Files& f) { f[P + "1.mlp.experts.0.gate_proj.weight"] = shape({6, 8}); }, cfg);
  expect_error(load, {dir, P + "1.mlp.experts", "mixes fused and per-expert",
                      P + "1.mlp.experts.0.gate_proj.weight", P + "1.mlp.experts.down_proj"});
  with([&](Files& f) { f["mtp.layers.0.mlp.experts.gate_up_proj"] = shape({4, 12, 8}); }, cfg);
  expect_error(load, {dir, "mtp.layers.0.mlp.experts", "mixes fused and per-expert",
                      "mtp.layers.0.mlp.experts.gate_up_proj"});

  // Wrong shapes (both named).
  with([&](Files& f) { f.at("mtp.layers.0.mlp.experts.2.gate_proj.weight") = shape({8, 6}); }, cfg);
  expect_error(load, {dir, "'mtp.layers.0.mlp.experts.2.gate_proj.weight'", "[8, 6]", "[6, 8]"});
  with([&](Files& f) { f.at(P + "0.mlp.experts.gate_up_proj") = shape({4, 6, 8}); }, cfg);
  expect_error(load, {dir, "'" + P + "0.mlp.experts.gate_up_proj'", "[4, 6, 8]", "[4, 12, 8]"});
  with([&](Files& f) { f.at(P + "0.mlp.shared_expert.down_proj.weight") = shape({5, 8}); }, cfg);
  expect_error(load, {dir, P + "0.mlp.shared_expert.down_proj.weight", "[5, 8]", "[8, 5]"});

  // Per-expert index >= num_experts, and other unknown expert tensors.
  with([&](Files& f) { f["mtp.layers.0.mlp.experts.4.up_proj.weight"] = shape({6, 8}); }, cfg);
  expect_error(load, {dir, "unexpected tensor 'mtp.layers.0.mlp.experts.4.up_proj.weight'",
                      "expert index 4 >= num_experts = 4"});
  with([&](Files& f) { f["mtp.layers.0.mlp.experts.1.gate.weight"] = shape({6, 8}); }, cfg);
  expect_error(load, {dir, "unexpected tensor 'mtp.layers.0.mlp.experts.1.gate.weight'"});
  with([&](Files& f) { f["mtp.layers.0.mlp.gate_proj.weight"] = shape({6, 8}); }, cfg);
  expect_error(load, {dir, "unexpected tensor 'mtp.layers.0.mlp.gate_proj.weight'"});
  // A shared expert in a config without one.
  {
    const json no_shared = moe_config(true, false, 0);
    with([](Files&) {}, no_shared);
    expect_error(
        load, {dir, "unexpected tensor", "shared_expert", "shared_expert_intermediate_size = 0"});
  }
  // A dense-FFN tensor in a MoE layer.
  with([&](Files& f) { f[P + "0.mlp.up_proj.weight"] = shape({6, 8}); }, cfg);
  expect_error(load, {dir, "unexpected tensor '" + P + "0.mlp.up_proj.weight'"});

  // MTP configured but absent.
  with(
      [](Files& f) {
        std::erase_if(f, [](const auto& kv) { return kv.first.rfind("mtp.", 0) == 0; });
      },
      cfg);
  expect_error(load, {"config declares mtp_num_hidden_layers=1 but " + dir +
                      " has no mtp.* tensors (pass --ignore-mtp to train without MTP)"});
  // The base itself loads.
  with([](Files&) {}, cfg);
  EXPECT_NO_THROW(load());
}

// Adapter module names: either layout's spelling of a language-model module names this
// checkpoint's tensor; the vision tower, MTP and lm_head keep their names.
TEST(HfLayout, AdapterModuleWeightTakesEitherLayout) {
  const model::Config text = model::parse_config(moe_config(false, false, 6), "text");
  const model::Config vlm = model::parse_config(moe_config(true, false, 6), "vlm");
  ASSERT_EQ(vlm.prefix, "model.language_model.");
  for (const std::string m :
       {"model.layers.1.self_attn.q_proj", "model.language_model.layers.1.self_attn.q_proj"}) {
    EXPECT_EQ(io::adapter_module_weight(text, m), "model.layers.1.self_attn.q_proj.weight") << m;
    EXPECT_EQ(io::adapter_module_weight(vlm, m),
              "model.language_model.layers.1.self_attn.q_proj.weight")
        << m;
  }
  for (const model::Config* c : {&text, &vlm})
    for (const std::string m : {"lm_head", "model.visual.blocks.0.attn.qkv", "mtp.fc"})
      EXPECT_EQ(io::adapter_module_weight(*c, m), m + ".weight") << m;
}
