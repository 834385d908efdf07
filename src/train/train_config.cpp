// TOML training configuration: parse, override, validate, resolve paths.
#include "train/train_config.h"

#include <toml++/toml.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <map>

#include "core/error.h"
#include "model/params.h"

namespace deltatron::train {

namespace {

namespace fs = std::filesystem;

// One setter per known key; each reads a toml node of the right type or fails naming the key.
using Setter = std::function<void(TrainConfig&, const toml::node&, const std::string&)>;

template <typename T>
Setter set(T TrainConfig::*field) {
  return [field](TrainConfig& c, const toml::node& n, const std::string& key) {
    if constexpr (std::is_same_v<T, std::string>) {
      auto v = n.value<std::string>();
      DT_CHECK(v.has_value(), c.source, ": ", key, " must be a string");
      c.*field = *v;
    } else if constexpr (std::is_same_v<T, std::optional<bool>>) {
      auto v = n.value<bool>();
      DT_CHECK(v.has_value(), c.source, ": ", key, " must be true or false");
      c.*field = *v;
    } else if constexpr (std::is_same_v<T, bool>) {
      auto v = n.value<bool>();
      DT_CHECK(v.has_value(), c.source, ": ", key, " must be true or false");
      c.*field = *v;
    } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
      std::vector<std::string> out;
      if (auto one = n.value<std::string>()) {
        out.push_back(*one);
      } else {
        const toml::array* a = n.as_array();
        DT_CHECK(a != nullptr, c.source, ": ", key, " must be a string or a list of strings");
        for (const toml::node& e : *a) {
          auto v = e.value<std::string>();
          DT_CHECK(v.has_value(), c.source, ": ", key, " must be a list of strings");
          out.push_back(*v);
        }
      }
      c.*field = out;
    } else if constexpr (std::is_floating_point_v<T>) {
      auto v = n.value<double>();
      DT_CHECK(v.has_value(), c.source, ": ", key, " must be a number");
      c.*field = *v;
    } else {
      auto v = n.value<int64_t>();
      DT_CHECK(v.has_value() && (!std::is_unsigned_v<T> || *v >= 0), c.source, ": ", key,
               " must be a ", std::is_unsigned_v<T> ? "non-negative " : "", "integer");
      c.*field = static_cast<T>(*v);
    }
  };
}

const std::map<std::string, Setter>& setters() {
  static const std::map<std::string, Setter> s = {
      {"model.path", set(&TrainConfig::model_path)},
      {"model.preset", set(&TrainConfig::model_preset)},
      {"model.init_seed", set(&TrainConfig::init_seed)},
      {"model.ignore_mtp", set(&TrainConfig::ignore_mtp)},
      {"model.vision", set(&TrainConfig::vision)},
      {"data.train", set(&TrainConfig::train_path)},
      {"data.eval", set(&TrainConfig::eval_path)},
      {"data.eval_fraction", set(&TrainConfig::eval_fraction)},
      {"data.format", set(&TrainConfig::format)},
      {"data.tokenizer", set(&TrainConfig::tokenizer)},
      {"data.loss_on", set(&TrainConfig::loss_on)},
      {"data.chat_template", set(&TrainConfig::chat_template)},
      {"data.enable_thinking", set(&TrainConfig::enable_thinking)},
      {"data.preserve_thinking", set(&TrainConfig::preserve_thinking)},
      {"data.reasoning_effort", set(&TrainConfig::reasoning_effort)},
      {"data.special_tokens_in_content", set(&TrainConfig::special_tokens_in_content)},
      {"data.skip_bad_lines", set(&TrainConfig::skip_bad_lines)},
      {"data.truncate", set(&TrainConfig::truncate)},
      {"data.cache_dir", set(&TrainConfig::cache_dir)},
      {"training.out_dir", set(&TrainConfig::out_dir)},
      {"training.steps", set(&TrainConfig::steps)},
      {"training.micro_batch_tokens", set(&TrainConfig::micro_batch_tokens)},
      {"training.grad_accum", set(&TrainConfig::grad_accum)},
      {"training.divisible_by", set(&TrainConfig::divisible_by)},
      {"training.shuffle_window", set(&TrainConfig::shuffle_window)},
      {"training.lr", set(&TrainConfig::lr)},
      {"training.min_lr", set(&TrainConfig::min_lr)},
      {"training.warmup_steps", set(&TrainConfig::warmup_steps)},
      {"training.schedule", set(&TrainConfig::schedule)},
      {"training.weight_decay", set(&TrainConfig::weight_decay)},
      {"training.beta1", set(&TrainConfig::beta1)},
      {"training.beta2", set(&TrainConfig::beta2)},
      {"training.eps", set(&TrainConfig::eps)},
      {"training.grad_clip", set(&TrainConfig::grad_clip)},
      {"training.seed", set(&TrainConfig::seed)},
      {"training.save_every", set(&TrainConfig::save_every)},
      {"training.keep_last", set(&TrainConfig::keep_last)},
      {"training.eval_every", set(&TrainConfig::eval_every)},
      {"training.log_every", set(&TrainConfig::log_every)},
      {"training.tensorboard", set(&TrainConfig::tensorboard)},
      {"training.max_bad_steps", set(&TrainConfig::max_bad_steps)},
      {"training.mtp_scale", set(&TrainConfig::mtp_scale)},
      {"training.router_aux_coef", set(&TrainConfig::router_aux_coef)},
      {"training.router_aux_type", set(&TrainConfig::router_aux_type)},
      {"training.z_loss_coef", set(&TrainConfig::z_loss_coef)},
      {"training.answer_accuracy", set(&TrainConfig::answer_accuracy)},
      {"training.save_dtype", set(&TrainConfig::save_dtype)},
      {"training.device", set(&TrainConfig::device)},
      {"training.precision", set(&TrainConfig::precision)},
      {"training.recompute", set(&TrainConfig::recompute)},
      {"training.recompute_selective", set(&TrainConfig::recompute_selective)},
      {"training.master", set(&TrainConfig::master)},
      {"training.moments", set(&TrainConfig::moments)},
      {"training.offload", set(&TrainConfig::offload)},
      {"parallel.dp", set(&TrainConfig::parallel_dp)},
      {"parallel.zero", set(&TrainConfig::parallel_zero)},
      {"parallel.ep", set(&TrainConfig::parallel_ep)},
      {"parallel.tp", set(&TrainConfig::parallel_tp)},
      {"parallel.sp", set(&TrainConfig::parallel_sp)},
      {"lora.enabled", set(&TrainConfig::lora)},
      {"lora.r", set(&TrainConfig::lora_r)},
      {"lora.alpha", set(&TrainConfig::lora_alpha)},
      {"lora.dropout", set(&TrainConfig::lora_dropout)},
      {"lora.targets", set(&TrainConfig::lora_targets)},
      {"lora.experts", set(&TrainConfig::lora_experts)},
      {"lora.rslora", set(&TrainConfig::lora_rslora)},
      {"lora.adapter", set(&TrainConfig::lora_adapter)},
  };
  return s;
}

void apply_table(TrainConfig& c, const toml::table& root) {
  for (const auto& [section, node] : root) {
    const std::string sec(section.str());
    const toml::table* t = node.as_table();
    DT_CHECK(t != nullptr, c.source, ": top-level key '", sec,
             "' must be a section ([model], [data], [training], [lora] or [parallel])");
    if (sec == "lora") c.lora = true;  // the section turns LoRA on (lora.enabled may say no)
    for (const auto& [k, v] : *t) {
      const std::string key = sec + "." + std::string(k.str());
      auto it = setters().find(key);
      DT_CHECK(it != setters().end(), c.source, ": unknown setting '", key, "'");
      it->second(c, v, key);
      if (sec == "lora") c.lora_keys_set.push_back(key);
    }
  }
}

void apply_override(TrainConfig& c, const std::string& ov) {
  std::string s = ov.rfind("--", 0) == 0 ? ov.substr(2) : ov;
  const auto eq = s.find('=');
  DT_CHECK(eq != std::string::npos, "override '", ov, "' must look like section.key=value");
  const std::string key = s.substr(0, eq), value = s.substr(eq + 1);
  auto it = setters().find(key);
  DT_CHECK(it != setters().end(), "override '", ov, "': unknown setting '", key, "'");
  toml::table parsed;
  try {
    parsed = toml::parse("v = " + value);
  } catch (const toml::parse_error&) {
    parsed = toml::table{{"v", value}};  // a bare string
  }
  it->second(c, *parsed.get("v"), key);
  if (key.starts_with("lora.")) {
    c.lora_keys_set.push_back(key);
    if (key != "lora.enabled") c.lora = true;  // any other lora.* override turns LoRA on
  }
}

std::string resolve(const fs::path& base, const std::string& p) {
  if (p.empty() || fs::path(p).is_absolute()) return p;
  return (base / p).lexically_normal().string();
}

}  // namespace

void check_parallel(const TrainConfig& c) {
  DT_CHECK(c.parallel_dp >= 0, c.source, ": parallel.dp must be >= 0 (0: every rank of the job)");
  DT_CHECK(c.parallel_zero >= 0 && c.parallel_zero <= 3, c.source,
           ": parallel.zero = ", c.parallel_zero,
           ": must be 0 (every data-parallel rank holds the whole optimizer state), 1 (the AdamW "
           "moments sharded over the ranks), 2 (and the gradients reduce-scattered) or 3 (and the "
           "weights: each layer gathered while it runs)");
  DT_CHECK(c.parallel_ep >= 1, c.source, ": parallel.ep must be >= 1");
  DT_CHECK(c.parallel_tp >= 1, c.source, ": parallel.tp must be >= 1");
  DT_CHECK(c.parallel_tp > 1 || !c.parallel_sp, c.source,
           ": parallel.sp = true needs parallel.tp > 1 (sequence parallelism splits the tokens "
           "over a tensor-parallel group)");
}

TrainConfig load_train_config(const std::string& path, const std::vector<std::string>& overrides) {
  TrainConfig c;
  c.source = path;
  toml::table root;
  try {
    root = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    const auto& src = e.source();
    core::fail(path, ":", src.begin.line, ": ", std::string(e.description()));
  }
  apply_table(c, root);
  for (const auto& ov : overrides) apply_override(c, ov);

  const fs::path base = fs::path(path).parent_path();
  for (std::string* p : {&c.model_path, &c.train_path, &c.eval_path, &c.tokenizer, &c.cache_dir,
                         &c.out_dir, &c.lora_adapter})
    *p = resolve(base, *p);

  DT_CHECK(c.model_path.empty() != c.model_preset.empty(), path,
           ": set exactly one of model.path and model.preset");
  DT_CHECK(!c.train_path.empty(), path, ": data.train is required");
  DT_CHECK(!c.out_dir.empty(), path, ": training.out_dir is required");
  DT_CHECK(c.device == "cpu" || c.device == "cuda", path,
           ": training.device must be cpu or cuda, got '", c.device, "'");
  DT_CHECK(c.precision == "bf16" || c.precision == "fp32", path,
           ": training.precision must be bf16 or fp32, got '", c.precision, "'");
  const model::StateOptions so = model::parse_state_options(c.master, c.moments, c.offload, path);
  DT_CHECK(
      !so.offload_master || so.master_remainder || (c.device == "cuda" && c.precision == "bf16"),
      path,
      ": training.offload = master+moments with training.master = fp32 needs bf16 compute on "
      "cuda (with f32 compute the f32 weights are the masters the model reads); use "
      "training.master = remainder");
  DT_CHECK(c.steps > 0, path, ": training.steps must be positive");
  DT_CHECK(c.micro_batch_tokens > 0, path, ": training.micro_batch_tokens must be positive");
  DT_CHECK(c.grad_accum > 0, path, ": training.grad_accum must be positive");
  check_parallel(c);
  DT_CHECK(c.divisible_by > 0, path, ": training.divisible_by must be positive");
  DT_CHECK(c.lr > 0 && c.min_lr >= 0, path, ": training.lr must be > 0 and min_lr >= 0");
  DT_CHECK(c.eval_fraction >= 0 && c.eval_fraction < 1, path,
           ": data.eval_fraction must be in [0, 1)");
  DT_CHECK(c.router_aux_type == "global" || c.router_aux_type == "seq" ||
               c.router_aux_type == "micro_batch",
           path, ": training.router_aux_type must be global, seq or micro_batch");
  DT_CHECK(c.schedule == "cosine" || c.schedule == "constant", path,
           ": training.schedule must be cosine or constant");
  // Counts and scales where 0 has a documented meaning (train_config.h) but a negative value
  // has none: named with the value instead of silently acting like 0 or worse.
  auto non_negative = [&](const char* key, double v) {
    DT_CHECK(v >= 0, path, ": ", key, " must be >= 0, got ", v);
  };
  non_negative("training.save_every", double(c.save_every));
  non_negative("training.keep_last", double(c.keep_last));
  non_negative("training.eval_every", double(c.eval_every));
  non_negative("training.log_every", double(c.log_every));
  non_negative("training.max_bad_steps", double(c.max_bad_steps));
  non_negative("training.warmup_steps", double(c.warmup_steps));
  non_negative("training.shuffle_window", double(c.shuffle_window));
  non_negative("training.weight_decay", c.weight_decay);
  non_negative("training.z_loss_coef", c.z_loss_coef);
  DT_CHECK(std::isfinite(c.grad_clip) && c.grad_clip >= 0, path,
           ": training.grad_clip must be >= 0 (0: no clipping), got ", c.grad_clip);
  DT_CHECK(std::isfinite(c.mtp_scale) && c.mtp_scale >= 0, path,
           ": training.mtp_scale must be >= 0 (0: the MTP loss does not train), got ", c.mtp_scale);
  DT_CHECK(c.beta1 >= 0 && c.beta1 < 1 && c.beta2 >= 0 && c.beta2 < 1, path,
           ": training.beta1 and training.beta2 must be in [0, 1), got ", c.beta1, " and ",
           c.beta2);
  DT_CHECK(c.eps > 0, path, ": training.eps must be positive, got ", c.eps);
  DT_CHECK(c.save_dtype.empty() || c.save_dtype == "F32" || c.save_dtype == "BF16" ||
               c.save_dtype == "F16",
           path, ": training.save_dtype must be F32, BF16 or F16");
  if (c.lora) {
    DT_CHECK(c.lora_r >= 1, path, ": lora.r must be >= 1, got ", c.lora_r);
    DT_CHECK(c.lora_alpha > 0, path, ": lora.alpha must be > 0, got ", c.lora_alpha);
    DT_CHECK(c.lora_dropout >= 0 && c.lora_dropout < 1, path,
             ": lora.dropout must be in [0, 1), got ", c.lora_dropout);
    DT_CHECK(c.master == "fp32" && c.offload == "none", path,
             ": a LoRA run trains only its adapters (fp32 on the device) and keeps no state for "
             "the frozen base: leave training.master = fp32 and training.offload = none");
  }
  return c;
}

}  // namespace deltatron::train
