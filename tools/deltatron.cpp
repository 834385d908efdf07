// deltatron command-line entry point: subcommand parsing and one-line error reporting.
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/synthetic.h"
#include "data/tokenizer.h"
#include "dist/launch.h"
#include "io/file_util.h"
#include "train/bench.h"
#include "train/commbench.h"
#include "train/convert.h"
#include "train/init_cmd.h"
#include "train/merge_cmd.h"
#include "train/presets.h"
#include "train/render_cmd.h"
#include "train/score.h"
#include "train/train_config.h"
#include "train/trainer.h"

using namespace deltatron;

int main(int argc, char** argv) {
  CLI::App app{"deltatron: train and fine-tune Qwen3.5 models"};
  app.require_subcommand(1);

  train::ScoreOptions score;
  CLI::App* sc = app.add_subcommand(
      "score", "Score a tokenised dataset: per-sample summed cross-entropy, optional gradients");
  sc->add_option("--model", score.model_dir, "Hugging Face checkpoint directory")->required();
  sc->add_option("--data", score.data_path, "JSONL with input_ids and optional labels")->required();
  sc->add_option("--output", score.output_path, "output JSONL (index, loss_sum, n_tokens)")
      ->required();
  sc->add_option("--grad-out", score.grad_out,
                 "write d(sum of loss_sum)/d(parameter) as F32 safetensors (HF names)");
  sc->add_option("--adapter", score.adapter_dir,
                 "a PEFT LoRA adapter directory to apply (--grad-out: the adapter's gradients)");
  sc->add_option("--pack-tokens", score.pack_tokens, "token budget per pack (default 8192)")
      ->check(CLI::PositiveNumber);
  sc->add_option("--pad-multiple", score.pad_multiple,
                 "pad every sample in a pack to a multiple of this many tokens (default 1)")
      ->check(CLI::PositiveNumber);
  sc->add_option("--device", score.device, "cpu (default) or cuda (one Hopper GPU)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  sc->add_option("--precision", score.precision,
                 "cuda: bf16 (default; fp32 master weights and accumulation) or fp32 (debug)")
      ->check(CLI::IsMember({"bf16", "fp32"}));
  sc->add_option("--mtp-scale", score.mtp_scale,
                 "weight of the MTP loss in the gradient objective (default 0.1)");
  sc->add_flag("--ignore-mtp", score.ignore_mtp,
               "score without the MTP head even if the config declares one");
  sc->add_option("--vision", score.vision,
                 "vision tower: auto (default: frozen when the data has images), off, frozen, "
                 "merger or full (--grad-out: model.visual.* gradients of the trained part)")
      ->check(CLI::IsMember({"auto", "off", "frozen", "merger", "full"}));
  sc->add_option("--router-aux-coef", score.router.aux_coef,
                 "load-balancing loss coefficient per MoE layer (default 0: off)");
  std::string aux_type = "global";
  sc->add_option("--router-aux-type", aux_type,
                 "global (counts over the whole dataset), seq (per sample) or micro_batch "
                 "(per pack)")
      ->check(CLI::IsMember({"global", "seq", "micro_batch"}));
  sc->add_option("--z-loss-coef", score.router.z_coef,
                 "router z-loss coefficient (sum of lse^2 over real tokens; default 0)");
  sc->add_option("--ep", score.ep,
                 "expert parallelism: groups of this many data-parallel ranks of a launched job "
                 "share the routed experts (with --tp: ranks of one tp slice; default 1)")
      ->check(CLI::PositiveNumber);
  sc->add_option("--tp", score.tp,
                 "tensor parallelism: groups of this many consecutive ranks of a launched job "
                 "share every layer's heads and FFN columns (default 1)")
      ->check(CLI::PositiveNumber);
  sc->add_flag("--sp", score.sp,
               "sequence parallelism inside each tensor-parallel group (needs --tp > 1)");
  sc->add_option("--zero", score.zero,
                 "3: ZeRO 3 over the ranks of a launched job (each rank holds a shard of the "
                 "weights and gradients, each layer gathered while it runs; with --ep the "
                 "routed experts' over the ranks holding the same experts); default 0")
      ->check(CLI::IsMember({0, 3}));
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
  cv->add_flag("--overwrite", conv.overwrite,
               "write into a non-empty directory not written by deltatron (its checkpoint files "
               "are replaced, other files kept)");

  train::MergeOptions merge;
  CLI::App* mg = app.add_subcommand(
      "merge", "Merge a PEFT LoRA adapter into its base checkpoint (W + s B A) and write it");
  mg->add_option("--model", merge.model_dir, "base checkpoint directory")->required();
  mg->add_option("--adapter", merge.adapter_dir,
                 "PEFT adapter directory (adapter_config.json, adapter_model.safetensors)")
      ->required();
  mg->add_option("--out", merge.out_dir, "output checkpoint directory")->required();
  mg->add_option("--max-shard-mb", merge.max_shard_mb, "largest shard in MB (default 5000)")
      ->check(CLI::PositiveNumber);
  mg->add_flag("--ignore-mtp", merge.ignore_mtp, "keep mtp.* as opaque bytes");
  mg->add_flag("--overwrite", merge.overwrite,
               "write into a non-empty directory not written by deltatron (its checkpoint files "
               "are replaced, other files kept)");

  train::InitOptions init;
  CLI::App* in = app.add_subcommand("init", "Write a random-initialised checkpoint for a preset");
  in->add_option("--preset", init.preset,
                 "0.8b, 2b, 4b, 9b, 27b, 35b-a3b, 122b-a10b, 397b-a17b, tiny, tiny-moe")
      ->required();
  in->add_option("--out", init.out_dir, "output checkpoint directory")->required();
  in->add_option("--seed", init.seed, "random seed (default 0)");
  in->add_option("--dtype", init.dtype, "F32, BF16 (default) or F16")
      ->check(CLI::IsMember({"F32", "BF16", "F16"}));
  in->add_option("--tokenizer", init.tokenizer, "tokenizer.json to copy into the checkpoint");
  in->add_flag("--config-only", init.config_only, "write config.json only");
  in->add_flag("--overwrite", init.overwrite,
               "write into a non-empty directory not written by deltatron (its checkpoint files "
               "are replaced, other files kept)");

  std::string train_config;
  bool resume = false;
  CLI::App* tr = app.add_subcommand(
      "train", "Train: deltatron train CONFIG.toml [--resume] [--section.key=value ...]");
  tr->add_option("config", train_config, "TOML training configuration")->required();
  tr->add_flag("--resume", resume, "continue from the newest complete checkpoint in out_dir");
  bool train_overwrite = false;
  tr->add_flag("--overwrite", train_overwrite,
               "start fresh in an out_dir holding an earlier run's checkpoints (removed once this "
               "run has saved its first checkpoint)");
  bool skip_bad = false, truncate = false;
  tr->add_flag("--skip-bad-lines", skip_bad, "count and skip malformed data lines");
  tr->add_flag("--truncate", truncate, "truncate samples longer than a micro-batch");
  std::string train_adapter;
  tr->add_option("--adapter", train_adapter,
                 "LoRA: start from this PEFT adapter directory (sets lora.adapter; docs/lora.md)");
  tr->allow_extras();

  std::string gen_out;
  int64_t gen_n = 1000;
  int gen_digits = 3;
  uint64_t gen_seed = 0;
  CLI::App* gd = app.add_subcommand("gen-data", "Generate the bundled synthetic addition task");
  gd->add_option("--out", gen_out, "output JSONL")->required();
  gd->add_option("--n", gen_n, "number of samples")->check(CLI::PositiveNumber);
  gd->add_option("--digits", gen_digits, "max digits per operand (1-9)")->check(CLI::Range(1, 9));
  gd->add_option("--seed", gen_seed, "random seed");
  bool gen_fixed = false;
  gd->add_flag("--fixed-width", gen_fixed, "zero-pad operands and sums to a fixed width");

  train::BenchOptions bench;
  CLI::App* bn = app.add_subcommand(
      "bench",
      "Training-step throughput of a preset on one GPU, or on the ranks of a launched job under "
      "a parallel layout (packed SFT-like batches)");
  bn->add_option("--device", bench.device, "cuda (default) or cpu (a smoke run)")
      ->check(CLI::IsMember({"cuda", "cpu"}));
  bn->add_option("--preset", bench.preset, "model preset (default 2b)");
  bn->add_option("--layers", bench.layers, "override the number of layers (e.g. 8 for 35b-a3b)")
      ->check(CLI::PositiveNumber);
  bn->add_option("--tokens", bench.micro_batch_tokens, "tokens per micro-batch (default 8192)")
      ->check(CLI::PositiveNumber);
  bn->add_option("--warmup", bench.warmup, "untimed steps (default 3)")
      ->check(CLI::NonNegativeNumber);
  bn->add_option("--steps", bench.steps,
                 "timed steps (default 10; with --lengths, enough to run the file's micro-batches "
                 "once)")
      ->check(CLI::PositiveNumber);
  bn->add_option("--precision", bench.precision, "bf16 (default) or fp32")
      ->check(CLI::IsMember({"bf16", "fp32"}));
  bn->add_flag("--mtp", bench.mtp, "keep the preset's MTP head");
  bn->add_flag("--recompute", bench.recompute, "activation recomputation per layer");
  bn->add_flag("--recompute-selective,!--no-recompute-selective", bench.recompute_selective,
               "recompute the cheap intermediates in the backward (default on; bitwise the same "
               "gradients, training.recompute_selective)");
  bn->add_option("--master", bench.master,
                 "fp32 (default) or remainder: the master as bf16 weight + 16-bit remainder")
      ->check(CLI::IsMember({"fp32", "remainder"}));
  bn->add_option("--moments", bench.moments, "AdamW moments: fp32 (default) or bf16")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  bn->add_flag("--lora", bench.lora,
               "LoRA: the base frozen, adapters (--lora-r, --lora-alpha, --lora-targets) trained");
  bn->add_option("--lora-r", bench.lora_r, "LoRA rank (default 16)")->check(CLI::PositiveNumber);
  bn->add_option("--lora-alpha", bench.lora_alpha, "LoRA alpha (default 32)");
  bn->add_flag("--lora-experts", bench.lora_experts,
               "LoRA on the routed experts too (per-expert adapters, PEFT target_parameters)");
  bn->add_option("--lora-targets", bench.lora_targets,
                 "comma list of module names, or all-linear (default: docs/lora.md)");
  bn->add_option("--offload", bench.offload,
                 "none (default), moments or master+moments: that state in pinned host memory")
      ->check(CLI::IsMember({"none", "moments", "master+moments"}));
  bn->add_option("--seed", bench.seed, "seed of lengths, tokens and weights (default 1)");
  bn->add_option("--lengths", bench.lengths_in,
                 "time these batches: JSON {\"steps\": [[len, ...], ...]} (e.g. "
                 "tools/bench/lengths_ln600_s0.8_8x8192.json): its steps are micro-batches, "
                 "taken in order, cyclically, by the run's steps");
  bn->add_option("--lengths-out", bench.lengths_out,
                 "write the sample lengths of every step (JSON, for tools/bench/peer_hf.py)");
  bn->add_option("--json", bench.json_out, "write the results as JSON");
  bn->add_option("--vision", bench.vision,
                 "off (default), frozen, merger or full: image-text batches (a preset with a "
                 "vision tower, e.g. 2b-vl) and what the tower trains")
      ->check(CLI::IsMember({"off", "frozen", "merger", "full"}));
  bn->add_option("--text-median", bench.vl.median_text,
                 "--vision: median text tokens of a sample (default 256, log-normal sigma 0.8)");
  bn->add_option("--max-pixels", bench.vl.max_pixels,
                 "--vision: smart_resize's max_pixels (default 2097152: <= 2048 image tokens)")
      ->check(CLI::PositiveNumber);
  bn->add_option("--min-pixels", bench.vl.min_pixels,
                 "--vision: smart_resize's min_pixels (default 65536)")
      ->check(CLI::PositiveNumber);
  bn->add_option("--zero", bench.zero,
                 "ZeRO stage over the ranks of a launched job (parallel.zero: 0 default, 1, 2, 3)")
      ->check(CLI::IsMember({0, 1, 2, 3}));
  bn->add_option("--ep", bench.ep,
                 "expert parallelism: groups of this many data-parallel ranks share the routed "
                 "experts (with --tp: ranks of one tp slice; parallel.ep, default 1)")
      ->check(CLI::PositiveNumber);
  bn->add_option("--tp", bench.tp,
                 "tensor parallelism: groups of this many consecutive ranks (parallel.tp, default "
                 "1); the data-parallel ranks are the job's / tp")
      ->check(CLI::PositiveNumber);
  bn->add_flag("--sp", bench.sp, "sequence parallelism inside each tensor-parallel group");
  bn->add_option("--accum", bench.accum,
                 "micro-batches per data-parallel rank per step (training.grad_accum, default 1)")
      ->check(CLI::PositiveNumber);

  train::CommBenchOptions commbench;
  CLI::App* cb = app.add_subcommand(
      "commbench",
      "Bus bandwidth of the job's collectives over message sizes, as nccl-tests reports it (run "
      "under deltatron launch: NCCL between GPUs, Gloo between CPU ranks)");
  cb->add_option("--device", commbench.device, "cuda (default: NCCL) or cpu (Gloo)")
      ->check(CLI::IsMember({"cuda", "cpu"}));
  cb->add_option("--dtype", commbench.dtype, "f32 (default) or bf16")
      ->check(CLI::IsMember({"f32", "bf16"}));
  cb->add_option("--min-bytes", commbench.min_bytes, "smallest message (default 1048576: 1 MiB)")
      ->check(CLI::PositiveNumber);
  cb->add_option("--max-bytes", commbench.max_bytes, "largest message (default 1073741824: 1 GiB)")
      ->check(CLI::PositiveNumber);
  cb->add_option("--factor", commbench.factor, "size step (default 2)")->check(CLI::Range(2, 1024));
  cb->add_option("--warmup", commbench.warmup, "untimed calls per size (default 5)")
      ->check(CLI::NonNegativeNumber);
  cb->add_option("--iters", commbench.iters, "timed calls per size (default 20)")
      ->check(CLI::PositiveNumber);
  cb->add_option("--ops", commbench.ops,
                 "comma list of all_reduce (default), reduce_scatter, all_gather")
      ->delimiter(',')
      ->check(CLI::IsMember({"all_reduce", "reduce_scatter", "all_gather"}));
  cb->add_option("--json", commbench.json_out, "write the results as JSON");

  std::string tk_tokenizer, tk_in, tk_out;
  CLI::App* tk = app.add_subcommand(
      "tokenize", "Encode JSON strings (one per line) to space-separated ids, one line each");
  tk->add_option("--tokenizer", tk_tokenizer, "tokenizer.json")->required();
  tk->add_option("--in", tk_in, "JSONL of strings")->required();
  tk->add_option("--out", tk_out, "output: ids per line")->required();

  train::RenderOptions render;
  CLI::App* rd = app.add_subcommand(
      "render",
      "Show samples as the model will see them: text with the trained spans marked, "
      "or ids and assistant mask as JSONL");
  rd->add_option("--model", render.model_dir,
                 "checkpoint directory (its tokenizer.json and chat template)");
  rd->add_option("--tokenizer", render.tokenizer,
                 "tokenizer.json (default: <model>/tokenizer.json)");
  rd->add_option("--data", render.data_path, "JSONL (chat, prompt/completion, text or tokens)")
      ->required();
  rd->add_option("--chat-template", render.chat.chat_template,
                 "auto (the checkpoint's), chatml, qwen3, qwen3_5, qwen3_6, qwen3_8 (+ _training)");
  rd->add_option("--loss-on", render.loss_on, "assistant (default), last_assistant or all");
  rd->add_option("--enable-thinking", render.chat.enable_thinking,
                 "template variable (true/false)");
  rd->add_option("--preserve-thinking", render.chat.preserve_thinking,
                 "template variable (true/false)");
  rd->add_option("--reasoning-effort", render.chat.reasoning_effort, "template variable (qwen3_8)");
  rd->add_flag("--special-tokens-in-content", render.chat.special_tokens_in_content,
               "special-token text in the data becomes the token (HF's ids) instead of text");
  rd->add_flag("--jsonl", render.jsonl, "print {line, text, input_ids, assistant_mask} per sample");
  rd->add_option("--color", render.color, "auto (default), always or never");
  rd->add_option("--limit", render.limit, "only the first N samples");

  dist::LaunchOptions launch;
  CLI::App* la = app.add_subcommand(
      "launch",
      "Start N ranks of a command on this host with torchrun's variables (RANK, WORLD_SIZE, "
      "LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT); stop them all if one fails");
  la->add_option("--nproc", launch.nproc, "number of ranks")
      ->required()
      ->check(CLI::PositiveNumber);
  la->add_option("--master-addr", launch.master_addr, "MASTER_ADDR (default 127.0.0.1)");
  la->add_option("--master-port", launch.master_port, "MASTER_PORT (default: a free port)")
      ->check(CLI::Range(1, 65535));
  la->add_option("--grace", launch.grace_s,
                 "seconds from SIGTERM to SIGKILL when stopping the ranks (default 5)")
      ->check(CLI::NonNegativeNumber);
  la->add_option("command", launch.command, "the command and its arguments, after --")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (la->parsed()) return dist::run_launch(launch);
    if (sc->parsed()) {
      score.router.aux_type = aux_type == "seq"           ? model::AuxLossType::seq
                              : aux_type == "micro_batch" ? model::AuxLossType::micro_batch
                                                          : model::AuxLossType::global;
      train::run_score(score);
    }
    if (cv->parsed()) train::run_convert(conv);
    if (mg->parsed()) train::run_merge(merge);
    if (bn->parsed()) {
      train::run_bench(bench);
    }
    if (cb->parsed()) train::run_commbench(commbench);
    if (in->parsed()) train::run_init(init);
    if (rd->parsed()) train::run_render(render);
    if (tk->parsed()) {
      const data::Tokenizer tok = data::Tokenizer::load(tk_tokenizer);
      std::ifstream in(tk_in);
      DT_CHECK(in.good(), tk_in, ": cannot open");
      std::vector<std::string> texts;
      int64_t line_no = 0;
      for (std::string line; std::getline(in, line);) {
        ++line_no;
        try {
          texts.push_back(nlohmann::json::parse(line).get<std::string>());
        } catch (const nlohmann::json::exception& e) {
          core::fail(tk_in, ":", line_no, ": expected a JSON string (", e.what(), ")");
        }
      }
      std::string out;
      for (const auto& ids : tok.encode_batch(texts)) {
        for (size_t i = 0; i < ids.size(); ++i) out += (i ? " " : "") + std::to_string(ids[i]);
        out += "\n";
      }
      io::write_file_atomic(tk_out, out);
    }
    if (gd->parsed())
      io::write_file_atomic(gen_out, data::addition_jsonl(gen_n, gen_digits, gen_seed, gen_fixed));
    if (tr->parsed()) {
      std::vector<std::string> overrides = tr->remaining();
      if (skip_bad) overrides.push_back("data.skip_bad_lines=true");
      if (truncate) overrides.push_back("data.truncate=true");
      if (!train_adapter.empty())  // relative to the working directory, unlike the file's paths
        overrides.push_back(
            "lora.adapter=" +
            nlohmann::json(std::filesystem::absolute(train_adapter).lexically_normal().string())
                .dump());
      const train::TrainConfig cfg = train::load_train_config(train_config, overrides);
      const train::TrainResult r = train::run_train(cfg, resume, train_overwrite);
      if (!r.root) return r.interrupted ? 130 : 0;  // rank 0 reports
      if (r.nothing_to_do) {
        if (std::isfinite(r.final_loss))
          std::fprintf(stderr, "train: already finished: %lld steps, last loss %.4f\n",
                       static_cast<long long>(r.steps_done), r.final_loss);
        return 0;
      }
      std::fprintf(stderr, "train: done: %lld steps, final loss %.4f",
                   static_cast<long long>(r.steps_done), r.final_loss);
      if (r.final_eval_loss >= 0)
        std::fprintf(stderr, ", held-out loss %.4f, held-out answer accuracy %.1f%%",
                     r.final_eval_loss, 100 * r.final_eval_accuracy);
      std::fprintf(stderr, "\n");
      if (r.interrupted) return 130;
    }
  } catch (const core::Error& e) {
    std::fprintf(stderr, "deltatron: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "deltatron: internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}
