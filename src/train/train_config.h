// `deltatron train` configuration: a TOML file plus `--section.key=value` overrides.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace deltatron::train {

// Every key, its section and its default. Unknown sections or keys are errors (typos must not
// pass silently), and so are negative counts, scales and thresholds. Paths in the file are
// relative to the file's directory.
struct TrainConfig {
  // [model]
  std::string model_path;    // HF checkpoint directory, or
  std::string model_preset;  // a preset (random init, see `deltatron init`)
  uint64_t init_seed = 0;
  bool ignore_mtp = false;
  // The vision tower of a multimodal checkpoint (docs/vision.md): off (model.visual.* carried
  // through, no images), frozen (images embedded by the tower, which is not trained), merger
  // (only model.visual.merger.* trained) or full.
  std::string vision = "off";
  // [data]
  std::string train_path;
  std::string eval_path;              // optional held-out file
  double eval_fraction = 0.0;         // held-out split of train_path when eval_path is empty
  std::string format = "auto";        // auto | chat | prompt_completion | text | tokens
  std::string tokenizer;              // default: <model_path>/tokenizer.json
  std::string loss_on = "assistant";  // assistant | all | last_assistant (chat)
  // Chat rendering (data/chat_template.h): "auto" = the checkpoint's own template (its
  // chat_template.jinja or tokenizer_config.json), or chatml | qwen3 | qwen3_5 | qwen3_6 |
  // qwen3_8 (+ "_training" for TRL's training variants). The template variables below are unset
  // (the template's default) unless given; a row's "chat_template_kwargs" overrides them.
  std::string chat_template = "auto";
  std::optional<bool> enable_thinking;
  std::optional<bool> preserve_thinking;
  std::string reasoning_effort;            // "" = unset (qwen3_8: xhigh)
  bool special_tokens_in_content = false;  // true: "<|im_start|>" typed in data is the token (HF)
  bool skip_bad_lines = false;
  bool truncate = false;
  std::string cache_dir;  // default: next to the data file
  // [training]
  std::string out_dir;
  int64_t steps = 100;
  int64_t micro_batch_tokens = 8192;
  int64_t grad_accum = 1;
  int64_t divisible_by = 1;
  int64_t shuffle_window = 4096;
  double lr = 1e-4, min_lr = 0.0;
  int64_t warmup_steps = 0;
  std::string schedule = "cosine";  // cosine | constant
  double weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double grad_clip = 1.0;  // global-norm clipping threshold; 0: no clipping
  uint64_t seed = 1234;
  int64_t save_every = 0;  // 0: only at the end
  int64_t keep_last = 2;   // checkpoints kept in out_dir; 0: all
  int64_t eval_every = 0;  // 0: only at the end
  int64_t log_every = 10;
  bool tensorboard = true;        // also write every metrics.jsonl record to out_dir/tensorboard/
  int64_t max_bad_steps = 10;     // skipped non-finite steps tolerated; 0: stop at the first
  double mtp_scale = 0.1;         // weight of the MTP loss; 0: reported, not trained
  double router_aux_coef = -1.0;  // < 0: the model config's router_aux_loss_coef
  std::string router_aux_type = "global";  // global | seq | micro_batch
  double z_loss_coef = 0.0;
  bool answer_accuracy = true;     // report exact-match accuracy of held-out label spans
  std::string save_dtype = "";     // "" = the dtypes of the loaded checkpoint (F32 for presets)
  std::string device = "cpu";      // cpu | cuda
  std::string precision = "bf16";  // cuda only: bf16 (activations, compute copies) | fp32 (debug)
  bool recompute = false;          // cuda only: recompute each layer's activations in the backward
  // Selective recomputation (docs/perf.md, "Activation memory"): the cheap intermediates (norm
  // outputs, SwiGLU products, GDN conv outputs and gates, attention's normed q/k and gated
  // output) are recomputed in the backward instead of kept; bitwise the same gradients.
  bool recompute_selective = true;
  // The training state's storage (model::StateOptions, ops/adamw.h): fp32 masters, or "remainder"
  // (the bf16 weight + a 16-bit remainder hold each master exactly: training is bitwise the same,
  // 2 bytes per parameter less with bf16 compute); fp32 AdamW moments, or "bf16" (stochastically
  // rounded: 4 bytes per parameter less, saved as BF16 in the checkpoint).
  std::string master = "fp32";   // fp32 | remainder
  std::string moments = "fp32";  // fp32 | bf16
  // Which state lives in (pinned) host memory, streamed through the GPU by each step: none,
  // moments, or master+moments (the fp32 masters or, with master = remainder, the remainders).
  std::string offload = "none";  // none | moments | master+moments

  // [lora] (issue 13, docs/lora.md): a LoRA run when the section is present (or lora.enabled):
  // the base is frozen in its compute dtype, the adapters train (fp32, AdamW), checkpoints hold
  // PEFT adapter files. lora.adapter: start from an existing PEFT adapter directory (its
  // adapter_config.json gives r, alpha, rslora and the targets; lora.r etc. must not say
  // otherwise).
  bool lora = false;
  int64_t lora_r = 16;
  double lora_alpha = 32, lora_dropout = 0;
  std::vector<std::string> lora_targets;  // empty: the defaults (model/lora.h)
  bool lora_experts = false, lora_rslora = false;
  std::string lora_adapter;
  // [parallel] (docs/parallel.md): the layout of a job started by a launcher. dp: data-parallel
  // ranks (0: all of the job's ranks); zero: 0 (every rank holds the whole optimizer state),
  // 1 (AdamW moments sharded over the ranks), 2 (and gradients reduce-scattered), 3 (and the
  // weights: each layer gathered while it runs; train/zero3.h); ep: ranks
  // sharing the routed experts of every MoE layer (model/expert_parallel.h; a divisor of the
  // data-parallel ranks (the ranks / tp: with tp the groups are among the ranks of one tp slice)
  // and of num_experts; with zero, the experts' state is sharded over the ranks holding the same
  // experts); tp: ranks sharing every layer's heads and FFN columns (train/tensor_parallel.h; a
  // divisor of the ranks; with zero, each tp slice's state is sharded over the data-parallel
  // ranks holding it; not with LoRA and zero together); sp: sequence parallelism inside each
  // tensor-parallel group (needs tp > 1).
  int64_t parallel_dp = 0, parallel_zero = 0, parallel_ep = 1, parallel_tp = 1;
  bool parallel_sp = false;
  std::vector<std::string> lora_keys_set;  // the lora.* keys the file or overrides gave

  std::string source;  // the config file, for messages
};

// Parses the TOML file, applies overrides ("section.key=value", value parsed as a TOML value,
// falling back to a string), validates, and resolves relative paths against the file's dir.
TrainConfig load_train_config(const std::string& path, const std::vector<std::string>& overrides);

// The [parallel] keys against each other and the options they do not support yet (zero with
// offload; tp with LoRA and zero together, or with LoRA dropout; sp without tp): a core::Error
// naming c.source and the keys. load_train_config calls it; `deltatron bench` (whose --zero,
// --ep, --tp, --sp are these keys) too.
void check_parallel(const TrainConfig& c);

}  // namespace deltatron::train
