// Save and exact restore of the trainer state and AdamW moments (train_state.h).
#include "train/train_state.h"

#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include "core/bf16.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "io/file_util.h"
#include "io/safetensors.h"

namespace deltatron::train {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kOptimizerFormat = "deltatron-adamw";
constexpr const char* kStateFormat = "deltatron-trainer-state";
constexpr int kStateVersion = 1;
const std::string kExpAvg = "exp_avg/";
const std::string kExpAvgSq = "exp_avg_sq/";

std::string exact_text(double x) {
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.17g", x);
  return buf;
}

std::string existing_file(const std::string& dir, const char* name) {
  const std::string path = (fs::path(dir) / name).string();
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    core::fail(path, ": missing (not a deltatron training checkpoint, or an incomplete one)");
  return path;
}

// The moments of one kind ("exp_avg/" or "exp_avg_sq/") for exactly the optimizer's parameters.
TensorMap read_moments(const io::SafetensorsFile& f, const std::string& prefix,
                       const std::map<std::string, core::Shape>& like, const LocalSlice& local) {
  TensorMap out;
  for (const auto& [name, shape] : like) {
    const std::string key = prefix + name;
    DT_CHECK(f.contains(key), f.path(), ": no '", key, "' for parameter '", name,
             "' (the checkpoint was saved for a different parameter set)");
    const io::TensorInfo& ti = f.info(key);
    DT_CHECK(ti.dtype == "F32" || ti.dtype == "BF16", f.path(), ": '", key, "' has dtype ",
             ti.dtype, ", expected F32 or BF16");
    const std::optional<io::ParamSlice> sl = local ? local(name, ti.shape) : std::nullopt;
    DT_CHECK((sl ? sl->shape : ti.shape) == shape, f.path(), ": '", key, "' has shape ",
             core::shape_str(ti.shape),
             sl ? " (this rank's slice " + core::shape_str(sl->shape) + ")" : "",
             " but parameter '", name, "' has shape ", core::shape_str(shape));
    out.emplace(name, io::read_float_slice(f, key, sl));
  }
  return out;
}

const json& field(const json& j, const std::string& path, const char* key) {
  DT_CHECK(j.contains(key), path, ": field '", key, "' is missing");
  return j.at(key);
}

int64_t int_field(const json& j, const std::string& path, const char* key) {
  const json& x = field(j, path, key);
  DT_CHECK(x.is_number_integer() && (x.is_number_unsigned() || x.get<int64_t>() >= 0), path,
           ": field '", key, "' must be an integer >= 0, got ", x.dump());
  DT_CHECK(!x.is_number_unsigned() || x.get<uint64_t>() <= uint64_t(INT64_MAX), path, ": field '",
           key, "' is out of range: ", x.dump());
  return x.get<int64_t>();
}

}  // namespace

void save_train_state(const std::string& dir, const TrainState& state, const AdamW& optimizer) {
  save_train_state(dir, state, optimizer, optimizer.shapes(),
                   [&](const std::string& name, bool second, float* out) {
                     const core::Tensor& t =
                         (second ? optimizer.exp_avg_sq() : optimizer.exp_avg()).at(name);
                     std::memcpy(out, t.ptr(), size_t(t.numel()) * 4);
                   });
}

void save_train_state(const std::string& dir, const TrainState& state, const AdamW& optimizer,
                      const std::map<std::string, core::Shape>& shapes,
                      const MomentSource& moment) {
  const AdamWOptions& o = optimizer.options();
  std::map<std::string, io::TensorRecord> views;
  const auto add = [&](const std::string& key, const std::string& name, const core::Shape& shape,
                       bool second) {
    io::TensorRecord r;
    r.dtype = o.bf16_moments ? "BF16" : "F32";
    r.shape = shape;
    r.fill = [&moment, &o, key, name, second, n = core::numel(shape)](uint8_t* dst) {
      if (!o.bf16_moments) return moment(name, second, reinterpret_cast<float*>(dst));
      std::vector<float> x(static_cast<size_t>(n));
      moment(name, second, x.data());
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = core::bf16_round_nearest_even(x[size_t(i)]);
        DT_CHECK(core::bf16_to_f32(h) == x[size_t(i)] || x[size_t(i)] != x[size_t(i)],
                 "AdamW state '", key, "' holds a value that is not a bf16 value (", x[size_t(i)],
                 ") with training.moments = bf16");
        std::memcpy(dst + 2 * i, &h, 2);
      }
    };
    views.emplace(key, std::move(r));
  };
  for (const auto& [name, shape] : shapes) add(kExpAvg + name, name, shape, false);
  for (const auto& [name, shape] : shapes) add(kExpAvgSq + name, name, shape, true);
  const std::map<std::string, std::string> meta = {{"format", kOptimizerFormat},
                                                   {"step", std::to_string(optimizer.step_count())},
                                                   {"beta1", exact_text(o.beta1)},
                                                   {"beta2", exact_text(o.beta2)},
                                                   {"eps", exact_text(o.eps)},
                                                   {"weight_decay", exact_text(o.weight_decay)},
                                                   {"moments", o.bf16_moments ? "bf16" : "fp32"}};
  io::write_safetensors((fs::path(dir) / kOptimizerFileName).string(), views, meta);

  std::ostringstream rng;
  rng << state.rng;
  const json j = {
      {"format", kStateFormat},           {"version", kStateVersion}, {"step", state.step},
      {"rng_seed", state.rng_seed},       {"rng_state", rng.str()},   {"epoch", state.epoch},
      {"data_cursor", state.data_cursor}, {"extra", state.extra}};
  io::write_file_atomic((fs::path(dir) / kTrainerStateFileName).string(), j.dump(2) + "\n");
}

std::map<std::string, core::Shape> shapes_of(const model::TensorMap& t) {
  std::map<std::string, core::Shape> out;
  for (const auto& [name, x] : t) out.emplace(name, x.shape);
  return out;
}

void load_train_state(const std::string& dir, TrainState& state, AdamW& optimizer,
                      const LocalSlice& local) {
  // Trainer state first (small), into a copy: nothing is modified until everything is read.
  const std::string state_path = existing_file(dir, kTrainerStateFileName);
  json j;
  {
    std::ifstream in(state_path);
    DT_CHECK(in, state_path, ": cannot open for reading");
    try {
      j = json::parse(in);
    } catch (const json::exception& e) {
      core::fail(state_path, ": invalid JSON: ", e.what());
    }
  }
  DT_CHECK(j.is_object(), state_path, ": expected a JSON object");
  DT_CHECK(j.contains("format") && j.at("format") == kStateFormat, state_path,
           ": field 'format' is not '", kStateFormat, "'");
  const int64_t version = int_field(j, state_path, "version");
  DT_CHECK(version == kStateVersion, state_path, ": unsupported version ", version, " (expected ",
           kStateVersion, ")");
  TrainState s;
  s.step = int_field(j, state_path, "step");
  {
    const json& seed = field(j, state_path, "rng_seed");
    DT_CHECK(seed.is_number_unsigned(), state_path,
             ": field 'rng_seed' must be an unsigned 64-bit integer, got ", seed.dump());
    s.rng_seed = seed.get<uint64_t>();
  }
  s.epoch = int_field(j, state_path, "epoch");
  s.data_cursor = int_field(j, state_path, "data_cursor");
  s.extra = j.contains("extra") ? j.at("extra") : json::object();
  {
    const json& text = field(j, state_path, "rng_state");
    DT_CHECK(text.is_string(), state_path, ": field 'rng_state' must be a string");
    std::istringstream rng(text.get<std::string>());
    rng >> s.rng;
    DT_CHECK(!rng.fail(), state_path, ": field 'rng_state' is not a std::mt19937_64 state");
    rng >> std::ws;
    DT_CHECK(rng.eof(), state_path, ": field 'rng_state' has trailing data");
  }

  // Moments: exactly the optimizer's parameters, both kinds, nothing else.
  const std::string opt_path = existing_file(dir, kOptimizerFileName);
  const io::SafetensorsFile f(opt_path);
  const auto& meta = f.metadata();
  auto fmt = meta.find("format");
  DT_CHECK(fmt != meta.end() && fmt->second == kOptimizerFormat, opt_path,
           ": __metadata__.format is not '", kOptimizerFormat, "'");
  auto st = meta.find("step");
  DT_CHECK(st != meta.end(), opt_path, ": __metadata__.step is missing");
  int64_t opt_step = -1;
  {
    const std::string& text = st->second;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), opt_step);
    DT_CHECK(ec == std::errc() && end == text.data() + text.size() && opt_step >= 0, opt_path,
             ": __metadata__.step '", text, "' is not an integer >= 0");
  }
  for (const std::string& key : f.names()) {
    std::string param;
    if (key.rfind(kExpAvg, 0) == 0)
      param = key.substr(kExpAvg.size());
    else if (key.rfind(kExpAvgSq, 0) == 0)
      param = key.substr(kExpAvgSq.size());
    else
      core::fail(opt_path, ": unexpected tensor '", key, "' (expected exp_avg/ or exp_avg_sq/)");
    DT_CHECK(optimizer.shapes().count(param) != 0, opt_path, ": has moments for parameter '", param,
             "', which the model does not have");
  }
  // Read against the shapes (not exp_avg(), which would allocate zero moments first).
  TensorMap m = read_moments(f, kExpAvg, optimizer.shapes(), local);
  TensorMap v = read_moments(f, kExpAvgSq, optimizer.shapes(), local);

  optimizer.set_state(opt_step, std::move(m), std::move(v));
  state = std::move(s);
}

}  // namespace deltatron::train
