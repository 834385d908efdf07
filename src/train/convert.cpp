// `deltatron convert`: checkpoint round trip with an optional expert-layout change.
#include "train/convert.h"

#include <cstdio>

#include "core/error.h"
#include "io/checkpoint.h"
#include "io/output_dir.h"

namespace deltatron::train {

void run_convert(const ConvertOptions& opt) {
  DT_CHECK(opt.experts == "keep" || opt.experts == "fused" || opt.experts == "per-expert",
           "--experts must be keep, fused or per-expert, got '", opt.experts, "'");
  DT_CHECK(opt.max_shard_mb > 0, "--max-shard-mb must be positive");
  io::check_not_same_dir(opt.model_dir, opt.out_dir, "--model", "--out");
  io::check_output_dir(opt.out_dir, opt.overwrite);
  io::remove_stale_staging(opt.out_dir);
  io::LoadOptions load;
  load.ignore_mtp = opt.ignore_mtp;
  io::Checkpoint ck = io::load_checkpoint(opt.model_dir, load);
  if (opt.experts != "keep") {
    const io::ExpertLayout layout =
        opt.experts == "fused" ? io::ExpertLayout::fused : io::ExpertLayout::per_expert;
    for (const std::string& module : model::expert_module_prefixes(ck.config))
      ck.expert_formats[module].layout = layout;
  }
  io::StagedOutput out(opt.out_dir);
  io::write_checkpoint_files(out.path(), ck, opt.max_shard_mb * 1'000'000);
  out.install("convert");
  std::fprintf(stderr, "convert: wrote %zu parameters and %zu pass-through tensors to %s\n",
               ck.params.size(), ck.passthrough.size(), opt.out_dir.c_str());
}

}  // namespace deltatron::train
