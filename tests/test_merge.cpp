// `deltatron merge` (train/merge_cmd.h): W + s B A against a float64 computation with an
// independent rounding to the base dtype, single roundings on crafted ties, every other tensor
// byte-identical, text and multimodal layouts (either adapter spelling), errors naming the adapter
// file and module, and the output-directory rules of `convert`.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <set>

#include "io/checkpoint.h"
#include "io/hf_layout.h"
#include "io/output_dir.h"
#include "io/peft_adapter.h"
#include "io/safetensors.h"
#include "lora_fixture.h"
#include "model/lora.h"
#include "model_fixture.h"
#include "test_util.h"
#include "train/merge_cmd.h"

using namespace deltatron;
namespace fs = std::filesystem;
using dt_test::dir_entries;
using dt_test::expect_error;
using dt_test::read_file;
using dt_test::write_file;

namespace {

// v rounded to nearest, ties to even, with p significant bits and quantum at least min_q (the
// subnormal spacing): the two candidates bracketing v, exact in double, compared directly.
double round_ref(double v, int p, double min_q) {
  if (v == 0) return v;
  int e;
  std::frexp(v, &e);  // |v| in [2^(e-1), 2^e)
  const double q = std::max(std::ldexp(1.0, e - p), min_q);
  const double lo = std::floor(v / q) * q, hi = lo + q;
  const double dlo = v - lo, dhi = hi - v;
  if (dlo < dhi) return lo;
  if (dhi < dlo) return hi;
  return std::fmod(lo / q, 2.0) == 0 ? lo : hi;
}

double round_ref(double v, const std::string& dtype) {
  if (dtype == "BF16") return round_ref(v, 8, std::ldexp(1.0, -133));
  if (dtype == "F16") return round_ref(v, 11, std::ldexp(1.0, -24));
  return round_ref(v, 24, std::ldexp(1.0, -149));
}

// The tiny text config with its linear layers in all three dtypes.
std::string dtype_for(const std::string& name) {
  if (name.find("A_log") != std::string::npos || name.find("dt_bias") != std::string::npos ||
      name == "model.layers.0.linear_attn.out_proj.weight")
    return "F32";
  if (name.find("norm") != std::string::npos || name == "model.layers.1.self_attn.q_proj.weight")
    return "F16";
  return "BF16";
}

nlohmann::json vlm_config_json() {
  nlohmann::json t = dt_test::tiny_config_json();
  t.erase("tie_word_embeddings");
  return {{"model_type", "qwen3_5"},
          {"architectures", {"Qwen3_5ForConditionalGeneration"}},
          {"text_config", t},
          {"tie_word_embeddings", false},
          {"vision_config", {{"depth", 1}}}};
}

// A random adapter for the given modules (B nonzero, unlike a fresh PEFT adapter).
io::PeftAdapter random_adapter(const std::vector<model::LoraModule>& mods, int64_t r,
                               double alpha) {
  return dt_test::random_peft_adapter(mods, r, alpha, 0.3, 100);
}

class Merge : public ::testing::Test {
 protected:
  const dt_test::TempDir tmp_{"merge"};
  const fs::path dir_ = tmp_.path;

  // A checkpoint written in mixed dtypes, sharded, with pass-through tensors and a tokenizer.
  fs::path make_base(const std::string& name, bool multimodal, int64_t shard_bytes = 3000) {
    io::Checkpoint ck;
    const nlohmann::json j = multimodal ? vlm_config_json() : dt_test::tiny_config_json();
    ck.config = model::parse_config(j, name);
    ck.params = dt_test::random_params(ck.config, 7);
    for (const auto& [n, t] : ck.params) {
      const bool lm = n.starts_with(ck.config.prefix);  // all but lm_head
      ck.param_dtypes[n] = dtype_for(lm ? "model." + n.substr(ck.config.prefix.size()) : n);
    }
    ck.passthrough["mtp.fc.weight"] = {"BF16", {4, 6}, dt_test::random_bytes(4 * 6 * 2, 1)};
    if (multimodal)
      ck.passthrough["model.visual.patch_embed.proj.weight"] = {
          "F32", {3, 5}, dt_test::random_bytes(3 * 5 * 4, 2)};
    const fs::path p = dir_ / name;
    io::save_checkpoint(p.string(), ck, shard_bytes);
    write_file(p / "tokenizer.json", "{\"tok\": 1}");
    return p;
  }

  fs::path save_adapter(const std::string& name, const io::PeftAdapter& ad) {
    const fs::path p = dir_ / name;
    fs::create_directories(p);
    io::save_peft_adapter(p.string(), ad);
    return p;
  }

  train::MergeOptions options(const fs::path& model, const fs::path& adapter, const fs::path& out) {
    train::MergeOptions o;
    o.model_dir = model.string();
    o.adapter_dir = adapter.string();
    o.out_dir = out.string();
    o.max_shard_mb = 1;
    return o;
  }

  // out = base with W + s B A at every adapter module (named `param_of(module)` in the base),
  // compared exactly with a float64 computation rounded by round_ref; every other tensor of the
  // base has the same dtype, shape and bytes in out.
  void expect_merged(const fs::path& base, const fs::path& out, const io::PeftAdapter& ad,
                     const std::function<std::string(const std::string&)>& param_of) {
    const io::SafetensorsSet in(base.string()), got(out.string());
    ASSERT_EQ(got.names(), in.names());
    const double s = ad.options.scale();
    std::set<std::string> merged;
    for (const auto& [module, a] : ad.a) {
      const std::string name = param_of(module);
      merged.insert(name);
      const core::Tensor& b = ad.b.at(module);
      const core::Tensor w = in.to_float(name), m = got.to_float(name);
      const std::string& dtype = in.info(name).dtype;
      ASSERT_EQ(got.info(name).dtype, dtype) << name;
      ASSERT_EQ(m.shape, w.shape) << name;
      const int64_t O = w.shape[0], I = w.shape[1], R = ad.options.r;
      int64_t wrong = 0, changed = 0;
      for (int64_t o = 0; o < O; ++o)
        for (int64_t i = 0; i < I; ++i) {
          double d = 0;
          for (int64_t k = 0; k < R; ++k) d += double(b.data[o * R + k]) * a.data[k * I + i];
          const double want = round_ref(double(w.data[o * I + i]) + s * d, dtype);
          const float g = m.data[o * I + i];
          changed += g != w.data[o * I + i];
          if (double(g) != want && wrong++ == 0)
            ADD_FAILURE() << name << " [" << o << ", " << i << "] (" << dtype << "): got " << g
                          << ", expected " << want;
        }
      EXPECT_EQ(wrong, 0) << name;
      EXPECT_GT(changed, O * I / 2) << name << ": the merge barely changed the weight";
    }
    for (const std::string& n : in.names()) {
      if (merged.count(n)) continue;
      EXPECT_EQ(got.info(n).dtype, in.info(n).dtype) << n;
      EXPECT_EQ(got.info(n).shape, in.info(n).shape) << n;
      const auto x = in.bytes(n), y = got.bytes(n);
      EXPECT_TRUE(std::equal(x.begin(), x.end(), y.begin(), y.end())) << n << " changed";
    }
    EXPECT_EQ(nlohmann::json::parse(read_file(out / "config.json")),
              nlohmann::json::parse(read_file(base / "config.json")));
  }
};

}  // namespace

// A text model in BF16 / F16 / F32 linear layers, default targets: every merged weight equals the
// float64 reference rounded once; every other tensor (norms, embeddings, mtp.*) is byte-identical.
TEST_F(Merge, TextModelMatchesFloat64AndKeepsOtherTensors) {
  const fs::path base = make_base("base", false);
  const model::Config c = io::load_checkpoint(base.string()).config;
  const auto mods = model::lora_modules(c, {}, "test");
  const io::PeftAdapter ad = random_adapter(mods, 4, 16);
  const fs::path adapter = save_adapter("adapter", ad);
  const fs::path out = dir_ / "merged";
  train::run_merge(options(base, adapter, out));
  expect_merged(base, out, ad, [](const std::string& m) { return m + ".weight"; });
  EXPECT_GT(io::SafetensorsSet(base.string()).num_files(), 1u);  // a sharded base, one file out
  EXPECT_EQ(dir_entries(out), (std::vector<std::string>{".deltatron-output.json", "config.json",
                                                        "model.safetensors"}));
  EXPECT_NO_THROW(io::load_checkpoint(out.string()));
}

// The merge is correctly rounded from the exact sum: one rounding, ties to even, where a double
// -> f32 -> bf16 (or f16) path would round twice.
TEST_F(Merge, RoundsOnceToNearestEven) {
  // r = 2, scale 1: delta[i] = b0 * a[0, i] + b1 * a[1, i], exact in double.
  const auto merge = [](const std::string& dtype, float w0, float b0, float b1) {
    core::Tensor w({1, 1}), a({2, 1}), b({1, 2});
    w.data = {w0};
    a.data = {1.f, 1.f};
    b.data = {b0, b1};
    train::merge_lora_weight(w, dtype, a, b, 1.0, "test");
    return w.data[0];
  };
  const float e = std::ldexp(1.f, -40);
  // BF16 at 1: ulp 2^-7. Just above the tie: up (twice-rounded: the tie, then even = 1.0).
  EXPECT_EQ(merge("BF16", 1.f, std::ldexp(1.f, -8), e), 1.f + std::ldexp(1.f, -7));
  EXPECT_EQ(merge("BF16", 1.f, std::ldexp(1.f, -8), -e), 1.f);  // just below: down
  EXPECT_EQ(merge("BF16", 1.f, std::ldexp(1.f, -8), 0), 1.f);   // a tie: to even (down)
  const float odd = 1.f + std::ldexp(1.f, -7);
  EXPECT_EQ(merge("BF16", odd, std::ldexp(1.f, -8), 0), 1.f + std::ldexp(1.f, -6));  // up to even
  EXPECT_EQ(merge("BF16", -1.f, -std::ldexp(1.f, -8), -e), -1.f - std::ldexp(1.f, -7));
  // F16 at 1: ulp 2^-10.
  EXPECT_EQ(merge("F16", 1.f, std::ldexp(1.f, -11), e), 1.f + std::ldexp(1.f, -10));
  EXPECT_EQ(merge("F16", 1.f, std::ldexp(1.f, -11), 0), 1.f);
  // F32 at 1: ulp 2^-23.
  EXPECT_EQ(merge("F32", 1.f, std::ldexp(1.f, -24), e), 1.f + std::ldexp(1.f, -23));
  EXPECT_EQ(merge("F32", 1.f, std::ldexp(1.f, -24), 0), 1.f);
  // Overflow of the base dtype is an error naming the module.
  expect_error([&] { merge("F16", 60000.f, 60000.f, 0); }, {"test", "not finite", "[0, 0]"});
}

// A multimodal base: an adapter of Qwen3_5ForConditionalGeneration (model.language_model.*) and
// one of a text model (model.layers.*) merge into the same tensors, byte for byte; model.visual.*
// and mtp.* are untouched. rsLoRA scales by alpha / sqrt(r). And the text base takes the
// multimodal spelling.
TEST_F(Merge, MultimodalAndTextSpellingsMergeIntoTheSameTensors) {
  const fs::path base = make_base("vlm", true);
  const model::Config c = io::load_checkpoint(base.string()).config;
  ASSERT_EQ(c.prefix, "model.language_model.");
  model::LoraOptions o;
  o.targets = {"q_proj", "in_proj_qkv", "down_proj"};
  io::PeftAdapter vlm = random_adapter(model::lora_modules(c, o, "test"), 3, 5);
  vlm.options.targets = o.targets;
  vlm.options.rslora = true;
  EXPECT_DOUBLE_EQ(vlm.options.scale(), 5 / std::sqrt(3.0));
  io::PeftAdapter text = vlm;  // the same tensors under the text model's module names
  text.a.clear();
  text.b.clear();
  const std::string lm = "model.language_model.";
  for (const auto& [m, t] : vlm.a) {
    ASSERT_EQ(m.rfind(lm, 0), 0u) << m;
    text.a.emplace("model." + m.substr(lm.size()), t);
    text.b.emplace("model." + m.substr(lm.size()), vlm.b.at(m));
  }
  const fs::path out1 = dir_ / "m1", out2 = dir_ / "m2";
  train::run_merge(options(base, save_adapter("a_vlm", vlm), out1));
  train::run_merge(options(base, save_adapter("a_text", text), out2));
  expect_merged(base, out1, vlm, [](const std::string& m) { return m + ".weight"; });
  const io::SafetensorsSet s1(out1.string()), s2(out2.string());
  ASSERT_EQ(s1.names(), s2.names());
  for (const std::string& n : s1.names()) {
    const auto x = s1.bytes(n), y = s2.bytes(n);
    EXPECT_TRUE(std::equal(x.begin(), x.end(), y.begin(), y.end())) << n;
  }
  // In memory: the report counts the renamed modules; the targets check passes for both.
  io::Checkpoint ck = io::load_checkpoint(base.string());
  const train::MergeReport r = train::merge_adapter(ck, text, "a_text");
  EXPECT_EQ(r.modules, int64_t(text.a.size()));
  EXPECT_EQ(r.renamed, r.modules);
  EXPECT_TRUE(r.targets_checked);
  EXPECT_EQ(io::adapter_module_weight(c, "lm_head"), "lm_head.weight");
  EXPECT_EQ(io::adapter_module_weight(c, "model.visual.blocks.0.attn.qkv"),
            "model.visual.blocks.0.attn.qkv.weight");

  // A text base, the multimodal spelling.
  const fs::path tbase = make_base("text", false);
  const fs::path out3 = dir_ / "m3";
  train::run_merge(options(tbase, save_adapter("a_vlm2", vlm), out3));
  expect_merged(tbase, out3, vlm,
                [&](const std::string& m) { return "model." + m.substr(lm.size()) + ".weight"; });
}

// Targets that do not describe the adapter's modules exactly: merged anyway, reported unchecked.
TEST_F(Merge, TargetMismatchIsReportedNotFatal) {
  const fs::path base = make_base("base", false);
  io::Checkpoint ck = io::load_checkpoint(base.string());
  io::PeftAdapter ad = random_adapter(model::lora_modules(ck.config, {}, "t"), 2, 4);
  ad.options.targets = {"q_proj"};  // names fewer modules than the file holds
  const train::MergeReport r = train::merge_adapter(ck, ad, "adapter");
  EXPECT_FALSE(r.targets_checked);
  EXPECT_EQ(r.modules, int64_t(ad.a.size()));
}

// Modules the base does not have, shapes that do not fit, tied lm_head, the vision tower: one
// line naming the adapter file and the module, and no output.
TEST_F(Merge, ModulesTheBaseLacksAreNamed) {
  const fs::path base = make_base("base", false);
  const model::Config c = io::load_checkpoint(base.string()).config;
  model::LoraOptions o;
  o.targets = {"q_proj"};
  const auto mods = model::lora_modules(c, o, "t");
  const fs::path out = dir_ / "merged";
  const auto fails_with = [&](const io::PeftAdapter& ad, std::vector<std::string> parts) {
    const fs::path adapter = save_adapter("bad", ad);
    parts.insert(parts.begin(), (adapter / io::kAdapterWeightsName).string());
    expect_error([&] { train::run_merge(options(base, adapter, out)); }, parts);
    EXPECT_FALSE(fs::exists(out));
  };
  io::PeftAdapter ad = random_adapter(mods, 2, 4);
  ad.a.emplace("model.layers.7.self_attn.q_proj", core::Tensor({2, 24}));
  ad.b.emplace("model.layers.7.self_attn.q_proj", core::Tensor({64, 2}));
  fails_with(ad, {"module model.layers.7.self_attn.q_proj", "not in the base model",
                  "'model.layers.7.self_attn.q_proj.weight'"});

  ad = random_adapter(mods, 2, 4);
  const std::string q1 = "model.layers.1.self_attn.q_proj";
  const int64_t q_out = ad.b.at(q1).shape[0];
  ad.a.at(q1) = core::Tensor({2, 25});
  fails_with(ad, {"module " + q1, "[2, 25]", q1 + ".weight is [" + std::to_string(q_out) + ", 24]",
                  "expected lora_A [2, 24]"});

  ad = random_adapter(mods, 2, 4);
  ad.a.emplace("model.visual.blocks.0.attn.qkv", core::Tensor({2, 5}));
  ad.b.emplace("model.visual.blocks.0.attn.qkv", core::Tensor({3, 2}));
  fails_with(ad, {"module model.visual.blocks.0.attn.qkv", "vision tower", "untouched"});

  // lm_head of a tied model.
  io::Checkpoint tied;
  tied.config =
      model::parse_config(dt_test::tiny_config_json({{"tie_word_embeddings", true}}), "t");
  tied.params = dt_test::random_params(tied.config, 3);
  io::PeftAdapter head = random_adapter(mods, 2, 4);
  head.a.emplace("lm_head", core::Tensor({2, 24}));
  head.b.emplace("lm_head", core::Tensor({61, 2}));
  expect_error([&] { train::merge_adapter(tied, head, "adapter.safetensors"); },
               {"adapter.safetensors: module lm_head", "tie_word_embeddings"});
}

// The output rules of `convert`: a non-empty directory deltatron did not write is refused (and
// left as it was) unless --overwrite, which keeps its other files; --out equal to --model or
// --adapter is refused; an earlier merge output is replaced without --overwrite.
TEST_F(Merge, OutputDirectoryRules) {
  const fs::path base = make_base("base", false);
  const model::Config c = io::load_checkpoint(base.string()).config;
  const fs::path adapter =
      save_adapter("adapter", random_adapter(model::lora_modules(c, {}, "t"), 2, 4));
  const fs::path out = dir_ / "user";
  fs::create_directories(out);
  write_file(out / "notes.txt", "mine\n");
  expect_error([&] { train::run_merge(options(base, adapter, out)); },
               {out.string(), "notes.txt", "--overwrite"});
  EXPECT_EQ(dir_entries(out), std::vector<std::string>{"notes.txt"});
  expect_error([&] { train::run_merge(options(base, adapter, base)); }, {"same directory"});
  expect_error([&] { train::run_merge(options(base, adapter, adapter)); },
               {"--adapter", "same directory"});
  EXPECT_TRUE(fs::exists(adapter / io::kAdapterConfigName));

  train::MergeOptions o = options(base, adapter, out);
  o.overwrite = true;
  train::run_merge(o);
  EXPECT_EQ(read_file(out / "notes.txt"), "mine\n");
  EXPECT_NO_THROW(io::load_checkpoint(out.string()));
  o.overwrite = false;  // its own output now
  EXPECT_NO_THROW(train::run_merge(o));
  for (const auto& e : dir_entries(dir_))
    EXPECT_EQ(e.find(".tmp-"), std::string::npos) << "staging left behind: " << e;
}

// The CLI: `deltatron merge` runs, and a bad adapter is a one-line error with exit code 1.
TEST_F(Merge, Cli) {
  const fs::path base = make_base("base", false, 1'000'000);
  const model::Config c = io::load_checkpoint(base.string()).config;
  const io::PeftAdapter ad = random_adapter(model::lora_modules(c, {}, "t"), 2, 4);
  const fs::path adapter = save_adapter("adapter", ad), out = dir_ / "merged";
  const auto run = [&](const std::string& args) {
    const fs::path err = dir_ / "stderr.txt";
    const int rc =
        std::system((std::string(DT_BINARY) + " merge " + args + " 2> " + err.string()).c_str());
    return std::make_pair(WEXITSTATUS(rc), read_file(err));
  };
  auto [rc, err] =
      run("--model " + base.string() + " --adapter " + adapter.string() + " --out " + out.string());
  ASSERT_EQ(rc, 0) << err;
  EXPECT_NE(err.find("merged " + std::to_string(ad.a.size()) + " adapted modules"),
            std::string::npos)
      << err;
  expect_merged(base, out, ad, [](const std::string& m) { return m + ".weight"; });
  std::tie(rc, err) = run("--model " + base.string() + " --adapter " + (dir_ / "none").string() +
                          " --out " + (dir_ / "o2").string());
  EXPECT_EQ(rc, 1);
  EXPECT_NE(err.find("adapter_config.json: not found"), std::string::npos) << err;
}
