// Run identity for --resume (run_identity.h).
#include "train/run_identity.h"

#include <cstdio>

#include "core/error.h"

namespace deltatron::train {

using nlohmann::json;

json run_identity(const TrainConfig& cfg, const TrainData& d, int ranks) {
  json j = json::object();
  if (!cfg.model_preset.empty())
    j["model.preset"] = cfg.model_preset;
  else
    j["model.path"] = cfg.model_path;
  j["data.train"] = cfg.train_path;
  j["data.train content"] = d.train_set->content_key();
  if (d.eval_set) {
    j["data.eval"] = cfg.eval_path;
    j["data.eval content"] = d.eval_set->content_key();
  }
  j["data.format"] = cfg.format;
  j["data.loss_on"] = cfg.loss_on;
  j["data.truncate"] = cfg.truncate;
  j["data.eval_fraction"] = cfg.eval_fraction;
  j["model.ignore_mtp"] = cfg.ignore_mtp;
  if (cfg.vision != "off") j["model.vision"] = cfg.vision;  // older runs: absent = off
  j["training.micro_batch_tokens"] = cfg.micro_batch_tokens;
  j["training.grad_accum"] = cfg.grad_accum * ranks;  // micro-batches per step, all ranks
  j["training.divisible_by"] = cfg.divisible_by;
  j["training.shuffle_window"] = cfg.shuffle_window;
  j["training.seed"] = cfg.seed;
  return j;
}

void check_run_identity(const json& saved, const json& now, const std::string& state_file) {
  if (saved.is_null()) {
    std::fprintf(stderr,
                 "warning: %s records no run identity (saved by an older deltatron); the model, "
                 "data and batch settings of this resume are not checked against it\n",
                 state_file.c_str());
    return;
  }
  DT_CHECK(saved.is_object(), state_file, ": extra.run must be an object");
  auto shown = [](const json& j, const char* key) {
    return j.contains(key) ? j.at(key).dump() : std::string("(not set)");
  };
  // The model: a preset or a path, whichever each run used.
  for (const char* key : {"model.preset", "model.path"})
    if (shown(saved, key) != shown(now, key))
      core::fail(state_file, ": --resume with a different model: the checkpoint's run has ",
                 saved.contains("model.preset") ? "model.preset = " + shown(saved, "model.preset")
                                                : "model.path = " + shown(saved, "model.path"),
                 ", this configuration has ",
                 now.contains("model.preset") ? "model.preset = " + shown(now, "model.preset")
                                              : "model.path = " + shown(now, "model.path"),
                 "; resume with the same model or start a fresh run in another training.out_dir");
  // Data: the content decides; the path is shown.
  for (const char* set : {"data.train", "data.eval"}) {
    const std::string content = std::string(set) + " content";
    if (shown(saved, content.c_str()) != shown(now, content.c_str()))
      core::fail(state_file, ": --resume with different ", set, " data: the checkpoint's run read ",
                 shown(saved, set), " (content ", shown(saved, content.c_str()),
                 "), this configuration reads ", shown(now, set), " (content ",
                 shown(now, content.c_str()),
                 "); resume with the same data and tokenizer, or start a fresh run in another "
                 "training.out_dir");
  }
  // The vision mode, absent = off in both (a mode switched off is a key only the saved run has).
  const auto vision = [](const json& j) {
    return j.contains("model.vision") ? j.at("model.vision").get<std::string>() : "off";
  };
  if (vision(saved) != vision(now))
    core::fail(state_file, ": --resume with a different model.vision: the checkpoint's run has \"",
               vision(saved), "\", this configuration has \"", vision(now),
               "\" (the trained tensors and their optimizer state differ); set it back to resume, "
               "or start a fresh run in another training.out_dir");
  for (const auto& [key, value] : now.items()) {
    if (key == "model.vision") continue;
    if (key.rfind("model.p", 0) == 0 || key.rfind("data.train", 0) == 0 ||
        (key.rfind("data.eval", 0) == 0 && key != "data.eval_fraction"))
      continue;
    if (shown(saved, key.c_str()) != value.dump())
      core::fail(state_file, ": --resume with a different ", key, ": the checkpoint's run has ",
                 shown(saved, key.c_str()), ", this configuration has ", value.dump(),
                 key == "training.grad_accum"
                     ? " (micro-batches per step: grad_accum x data-parallel ranks)"
                     : "",
                 "; set it back to resume, or start a fresh run in another training.out_dir");
  }
}

}  // namespace deltatron::train
