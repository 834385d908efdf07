// deltatron command-line entry point: subcommand parsing and one-line error reporting.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "core/error.h"
#include "train/convert.h"
#include "train/score.h"

using namespace deltatron;

int main(int argc, char** argv) {
  CLI::App app{"deltatron: train and fine-tune Qwen3.5 models"};
  app.require_subcommand(1);

  train::ScoreOptions score;
  std::string device = "cpu";
  CLI::App* sc = app.add_subcommand(
      "score", "Score a tokenised dataset: per-sample summed cross-entropy, optional gradients");
  sc->add_option("--model", score.model_dir, "Hugging Face checkpoint directory")->required();
  sc->add_option("--data", score.data_path, "JSONL with input_ids and optional labels")
      ->required();
  sc->add_option("--output", score.output_path, "output JSONL (index, loss_sum, n_tokens)")
      ->required();
  sc->add_option("--grad-out", score.grad_out,
                 "write d(sum of loss_sum)/d(parameter) as F32 safetensors (HF names)");
  sc->add_option("--pack-tokens", score.pack_tokens, "token budget per pack (default 8192)")
      ->check(CLI::PositiveNumber);
  sc->add_option("--pad-multiple", score.pad_multiple,
                 "pad every sample in a pack to a multiple of this many tokens (default 1)")
      ->check(CLI::PositiveNumber);
  sc->add_option("--device", device, "cpu (cuda arrives with the CUDA backend)")
      ->check(CLI::IsMember({"cpu"}));
  sc->add_option("--mtp-scale", score.mtp_scale,
                 "weight of the MTP loss in the gradient objective (default 0.1)");
  sc->add_flag("--ignore-mtp", score.ignore_mtp,
               "score without the MTP head even if the config declares one");
  sc->add_option("--router-aux-coef", score.router.aux_coef,
                 "load-balancing loss coefficient per MoE layer (default 0: off)");
  std::string aux_type = "global";
  sc->add_option("--router-aux-type", aux_type,
                 "global (counts over the whole dataset), seq (per sample) or micro_batch "
                 "(per pack)")
      ->check(CLI::IsMember({"global", "seq", "micro_batch"}));
  sc->add_option("--z-loss-coef", score.router.z_coef,
                 "router z-loss coefficient (sum of lse^2 over real tokens; default 0)");
  sc->add_flag("--quiet", score.quiet, "no progress lines");

  train::ConvertOptions conv;
  CLI::App* cv = app.add_subcommand(
      "convert", "Load a Hugging Face checkpoint and write it back (round trip / re-layout)");
  cv->add_option("--model", conv.model_dir, "input checkpoint directory")->required();
  cv->add_option("--out", conv.out_dir, "output checkpoint directory")->required();
  cv->add_option("--experts", conv.experts, "MoE expert layout: keep, fused or per-expert")
      ->check(CLI::IsMember({"keep", "fused", "per-expert"}));
  cv->add_option("--max-shard-mb", conv.max_shard_mb, "largest shard in MB (default 5000)")
      ->check(CLI::PositiveNumber);
  cv->add_flag("--ignore-mtp", conv.ignore_mtp, "keep mtp.* as opaque bytes");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (sc->parsed()) {
      score.router.aux_type = aux_type == "seq"          ? model::AuxLossType::seq
                              : aux_type == "micro_batch" ? model::AuxLossType::micro_batch
                                                          : model::AuxLossType::global;
      train::run_score(score);
    }
    if (cv->parsed()) train::run_convert(conv);
  } catch (const core::Error& e) {
    std::fprintf(stderr, "deltatron: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "deltatron: internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}
