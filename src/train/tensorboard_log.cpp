// The trainer's TensorBoard log (see tensorboard_log.h).
#include "train/tensorboard_log.h"

#include <cstdio>
#include <filesystem>
#include <system_error>
#include <vector>

#include "core/error.h"

namespace deltatron::train {

TensorBoardLog::TensorBoardLog(const std::string& out_dir, bool enabled, int64_t first_step) {
  if (!enabled) return;
  const std::filesystem::path dir = std::filesystem::path(out_dir) / kTensorBoardDir;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  DT_CHECK(!ec, dir.string(), ": cannot create the TensorBoard folder: ", ec.message(),
           " (training.tensorboard = false turns TensorBoard logging off)");
  writer_ = std::make_unique<io::EventFileWriter>(io::new_event_file_path(dir.string()));
  writer_->write_session_start(first_step);
}

void TensorBoardLog::log(const nlohmann::json& record) {
  if (!writer_) return;
  std::vector<io::ScalarValue> values;
  for (const auto& [key, v] : record.items()) {
    if (key == "step" || !v.is_number()) continue;
    const std::string tag = key.rfind("eval_", 0) == 0 ? "eval/" + key.substr(5) : "train/" + key;
    values.push_back({tag, v.get<float>()});
  }
  try {
    writer_->write_scalars(record.at("step").get<int64_t>(), values);
  } catch (const core::Error& e) {
    std::fprintf(stderr,
                 "\ntrain: warning: %s; no more TensorBoard events for this run "
                 "(metrics.jsonl holds every record)\n",
                 e.what());
    writer_.reset();
  }
}

}  // namespace deltatron::train
