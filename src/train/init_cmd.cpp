// `deltatron init`: preset config -> HF init -> staged, then installed checkpoint directory.
#include "train/init_cmd.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "io/checkpoint.h"
#include "io/file_util.h"
#include "io/output_dir.h"
#include "model/init.h"
#include "train/presets.h"

namespace deltatron::train {

void run_init(const InitOptions& opt) {
  DT_CHECK(opt.dtype == "F32" || opt.dtype == "BF16" || opt.dtype == "F16",
           "--dtype must be F32, BF16 or F16, got '", opt.dtype, "'");
  const nlohmann::json cfg = preset_config(opt.preset);
  io::Checkpoint ck;
  ck.config = model::parse_config(cfg, "preset " + opt.preset);
  ck.config.raw = cfg;
  ck.config.mtp_enabled = ck.config.mtp_num_hidden_layers > 0;
  if (ck.config.has_vision) {  // a vision-language preset: the tower's weights and preprocessor
    ck.config.vision_mode = model::VisionMode::full;
    ck.preprocessor = preset_preprocessor_config(opt.preset);
  }
  if (!opt.tokenizer.empty())
    DT_CHECK(std::filesystem::is_regular_file(opt.tokenizer), opt.tokenizer,
             ": tokenizer file not found");
  io::check_output_dir(opt.out_dir, opt.overwrite);
  io::remove_stale_staging(opt.out_dir);
  if (opt.config_only) {
    io::StagedOutput out(opt.out_dir);
    io::write_file_atomic(out.path() + "/config.json", cfg.dump(2) + "\n");
    if (ck.preprocessor.is_object())
      io::write_file_atomic(out.path() + "/preprocessor_config.json",
                            ck.preprocessor.dump(2) + "\n");
    out.install("init");
    std::fprintf(stderr, "init: wrote %s/config.json (preset %s)\n", opt.out_dir.c_str(),
                 opt.preset.c_str());
    return;
  }
  int64_t n = 0;
  for (const auto& spec : model::param_specs(ck.config)) n += core::numel(spec.shape);
  const double need = 4.0 * double(n);
  const double ram = double(::sysconf(_SC_PHYS_PAGES)) * double(::sysconf(_SC_PAGE_SIZE));
  DT_CHECK(need < 0.6 * ram, "preset ", opt.preset, " has ", n,
           " parameters; initialising it needs about ", need / 1e9,
           " GB of RAM but this machine has ", ram / 1e9,
           " GB (use --config-only to write its config.json alone)");
  ck.params = model::init_params(ck.config, opt.seed);
  for (const auto& [name, t] : ck.params) ck.param_dtypes[name] = opt.dtype;
  io::StagedOutput out(opt.out_dir);
  io::write_checkpoint_files(out.path(), ck);
  if (!opt.tokenizer.empty())
    std::filesystem::copy_file(opt.tokenizer, out.path() + "/tokenizer.json");
  out.install("init");
  std::fprintf(stderr, "init: preset %s, %lld parameters, %s, written to %s\n", opt.preset.c_str(),
               static_cast<long long>(n), opt.dtype.c_str(), opt.out_dir.c_str());
}

}  // namespace deltatron::train
