#!/usr/bin/env python3
# Peer benchmark: Hugging Face transformers' Qwen3.5 text model training steps (bf16, fused AdamW,
# SDPA), with flash-linear-attention's Triton kernels (FLA=1) or HF's torch fallback (FLA=0), on
# the batches of a lengths file shared with deltatron's bench. See docs/peer.md.
#
# Environment:
#   LENGTHS    JSON {"micro_batch_tokens": N, "steps": [[len, ...], ...]} (make_lengths.py);
#              unset: make_lengths.py's defaults (8 steps, log-normal median 600 sigma 0.8,
#              clipped to [64, 2048], <= 8192 tokens a step)
#   SIZE       0.8b | 2b | 4b | 9b | 27b (dense, the shapes of src/train/presets.cpp) | moe
#              (Qwen3.5-35B-A3B layer shapes, 8 layers) | 35b-a3b (the same, 40 layers) | tiny
#   LAYERS     override the number of layers (e.g. 4 to match `deltatron bench --layers 4`)
#   FLA        1 (default): import fla from PEER_DIR (default ./.peer, filled by fetch_peer.sh) | 0
#   MODES      comma list of packed | packed_cu | padded (default packed). packed: (1, sum L) with
#              position_ids (what HF's padding-free collator sends by default); packed_cu: also
#              cu_seq_lens_q/k + max_length_q/k kwargs (FLA then runs varlen, per sample);
#              padded: (B, PAD_TO) with attention_mask (PAD_TO default 2048)
#   GC=1       activation checkpointing     WARMUP untimed steps (default: one pass, >= 3)
#   REPEAT     timed passes over the step list (default 1)
#   PACKCHECK=1  also measure HF's packing exactness on a tiny fp32 model (per-sample max |diff|)
#   LORA=1     PEFT LoRA instead of full fine-tuning: the bf16 base frozen, adapters (PEFT's
#              default: f32) on LORA_TARGETS, fused AdamW over the adapters only. LORA_R (default
#              16), LORA_ALPHA (32), LORA_TARGETS (comma list; default deltatron's: every
#              attention, GDN and MLP / shared-expert projection), dropout 0
#   VISION     frozen | merger | full: the vision-language model instead (docs/vision.md,
#              "Benchmark"): HF Qwen3_5ForConditionalGeneration with SIZE's text model (or
#              SIZE=tiny-vl, deltatron's tiny-vl) and the size's published vision tower, the
#              batches of a VL file (LENGTHS from make_lengths.py --vision or deltatron bench
#              --vision --lengths-out; unset: vl_batches.py's defaults), packed as one row with
#              4-row position_ids (text positions + MRoPE), pixel_values and image_grid_thw per
#              step; the tower frozen (frozen), only model.visual.merger trained (merger) or all
#              trained (full); MODES packed | packed_cu only
#   LIGER=1    Liger kernels (liger-kernel from PEER_DIR, filled by fetch_peer.sh; 0.8.5):
#              apply_liger_kernel_to_qwen3_5 / _qwen3_5_moe with their defaults (RMSNorm, SwiGLU,
#              fused linear cross-entropy: the logits are never materialised), patched on the
#              classes before the model is built
#   DEVICE     cuda (default) | cpu: a SMOKE TEST only (tiny sizes; timings and memory meaningless)
#   OUT        folder for peer_hf_<size>_L<layers>_fla<0|1>[_gc][_lora][_vl<mode>].json (default
#              /tmp)
# Last stdout line: one JSON object (the same as the file).
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.abspath(os.environ.get("PEER_DIR", os.path.join(os.getcwd(), ".peer")))
FLA = os.environ.get("FLA", "1") == "1"
if FLA:
    # before transformers is imported: its package->distribution map and the qwen3_5 module's
    # kernel choice (made at import time) both look at sys.path then
    sys.path.insert(0, PEER)
else:
    sys.modules["fla"] = None  # torch fallback even where an fla is installed
sys.path.insert(1, HERE)
import torch  # noqa: E402
import transformers  # noqa: E402
import transformers.utils.import_utils as iu  # noqa: E402
from make_lengths import lognormal_steps  # noqa: E402
import vl_batches  # noqa: E402

fla_version, fla_patched = None, None
if FLA:
    import fla  # noqa: E402
    fla_version = fla.__version__
    if not os.path.abspath(fla.__file__).startswith(PEER + os.sep):
        print(f"# note: fla imported from {fla.__file__}, not {PEER}", flush=True)
    mark = os.path.join(PEER, "PATCHED_FLA_640")
    fla_patched = os.path.exists(mark)
    if fla_patched:
        print("# WARNING: carried FLA has its Hopper/Triton<3.7.1 guard on chunk_bwd_dqkwg "
              "disabled (FLA issue #640): gradients may be wrong; numbers are for TIMING ONLY",
              flush=True)
LIGER = os.environ.get("LIGER") == "1"
liger_version = None
if LIGER:
    # before the model classes are imported by name: the patch replaces module attributes
    sys.path.append(PEER)
    import liger_kernel  # noqa: E402
    import liger_kernel.transformers as lt  # noqa: E402
    from importlib.metadata import version as dist_version  # noqa: E402
    try:
        liger_version = dist_version("liger-kernel")
    except Exception:
        liger_version = getattr(liger_kernel, "__version__", "unknown")
    if os.environ.get("SIZE", "2b") in ("moe", "35b-a3b"):
        lt.apply_liger_kernel_to_qwen3_5_moe()
    else:
        lt.apply_liger_kernel_to_qwen3_5()
    print(f"# liger-kernel {liger_version} from {os.path.dirname(liger_kernel.__file__)}: RMSNorm, "
          "SwiGLU and fused linear cross-entropy patched", flush=True)
from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig  # noqa: E402
import transformers.models.qwen3_5.modeling_qwen3_5 as mq  # noqa: E402


def gdn_impl():
    """Name of the function HF's qwen3_5 module really calls for the chunked gated delta rule."""
    seen, todo = set(), [mq.torch_chunk_gated_delta_rule]
    while todo:
        f = todo.pop()
        if id(f) in seen or not callable(f):
            continue
        seen.add(id(f))
        mod = getattr(f, "__module__", "") or ""
        if mod.startswith("fla"):
            return f"{mod}.{getattr(f, '__name__', '?')}"
        for c in getattr(f, "__closure__", None) or ():
            try:
                todo.append(c.cell_contents)
            except ValueError:
                pass
    return "torch (transformers fallback)"


IMPL = gdn_impl()
print(f"# transformers {transformers.__version__} torch {torch.__version__} FLA={int(FLA)} "
      f"fla {fla_version} fla_avail={iu.is_flash_linear_attention_available()} "
      f"conv1d_avail={iu.is_causal_conv1d_available()} gdn={IMPL}", flush=True)
if FLA and not IMPL.startswith("fla"):
    sys.exit("FLA=1 but transformers did not pick up fla's chunk_gated_delta_rule: check PEER_DIR")

dev = os.environ.get("DEVICE", "cuda")
if dev not in ("cuda", "cpu"):
    sys.exit(f"DEVICE must be cuda or cpu, got {dev}")
CUDA = dev == "cuda"
if not CUDA:
    print("# SMOKE TEST: DEVICE=cpu, timings and memory are meaningless", flush=True)
VISION = os.environ.get("VISION") or None
if VISION not in (None, "frozen", "merger", "full"):
    sys.exit(f"VISION must be frozen, merger or full, got {VISION}")


def sync():
    if CUDA:
        torch.cuda.synchronize()


OUT = os.environ.get("OUT", "/tmp")
SIZE = os.environ.get("SIZE", "2b")
LAYERS = os.environ.get("LAYERS")
LORA = os.environ.get("LORA") == "1"
# deltatron's default LoRA targets (model::lora_default_targets): all attention projections, all
# five Gated DeltaNet projections, the dense MLP's (and the shared expert's) projections
LORA_DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "in_proj_qkv", "in_proj_z",
                        "in_proj_a", "in_proj_b", "out_proj", "gate_proj", "up_proj", "down_proj"]

# Dense shapes of deltatron's presets (src/train/presets.cpp): layers, hidden_size,
# intermediate_size, num_attention_heads, num_key_value_heads, linear_num_key_heads,
# linear_num_value_heads, tie_word_embeddings. head_dim 256, linear key/value head dims 128.
DENSE = {
    "0.8b": (24, 1024, 3584, 8, 2, 16, 16, True),
    "2b": (24, 2048, 6144, 8, 2, 16, 16, True),
    "4b": (32, 2560, 9216, 16, 4, 16, 32, True),
    "9b": (32, 4096, 12288, 16, 4, 16, 32, False),
    "27b": (64, 5120, 17408, 24, 4, 16, 48, False),
}
MOE_SIZES = {"moe": 8, "35b-a3b": 40}  # Qwen3.5-35B-A3B layer shapes, this many layers
IS_MOE = SIZE in MOE_SIZES


def cfg(size):
    if size in MOE_SIZES:
        from transformers import Qwen3_5MoeTextConfig
        # Qwen3.5-35B-A3B layer shapes (moe: 8 layers instead of 40)
        return Qwen3_5MoeTextConfig(vocab_size=248320, hidden_size=2048,
                                    num_hidden_layers=MOE_SIZES[size],
                                    num_attention_heads=16, num_key_value_heads=2, head_dim=256,
                                    linear_num_key_heads=16, linear_num_value_heads=32,
                                    linear_key_head_dim=128, linear_value_head_dim=128,
                                    num_experts=256, num_experts_per_tok=8,
                                    moe_intermediate_size=512, shared_expert_intermediate_size=512,
                                    tie_word_embeddings=False)
    if size == "tiny-vl":  # deltatron's tiny-vl text model (src/train/presets.cpp)
        return Qwen3_5TextConfig(vocab_size=248320, hidden_size=64, intermediate_size=192,
                                 num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                 head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4,
                                 linear_key_head_dim=32, linear_value_head_dim=32,
                                 rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                      partial_rotary_factor=0.25,
                                                      mrope_section=[2, 1, 1],
                                                      mrope_interleaved=True),
                                 tie_word_embeddings=True)
    if size == "tiny":
        return Qwen3_5TextConfig(vocab_size=512, hidden_size=128, intermediate_size=256,
                                 num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                 head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4,
                                 linear_key_head_dim=32, linear_value_head_dim=32,
                                 tie_word_embeddings=True)
    if size not in DENSE:
        sys.exit(f"SIZE must be one of {', '.join([*DENSE, *MOE_SIZES, 'tiny'])}, got {size}")
    layers, hidden, ffn, heads, kv_heads, lin_k, lin_v, tied = DENSE[size]
    return Qwen3_5TextConfig(vocab_size=248320, hidden_size=hidden, intermediate_size=ffn,
                             num_hidden_layers=layers, num_attention_heads=heads,
                             num_key_value_heads=kv_heads, head_dim=256,
                             linear_num_key_heads=lin_k, linear_num_value_heads=lin_v,
                             linear_key_head_dim=128, linear_value_head_dim=128,
                             tie_word_embeddings=tied)


# The published vision towers (qwen35-vl spec 1.2, deltatron's <size>-vl presets): depth, hidden,
# heads, intermediate; patch 16, temporal 2, merge 2, a 48 x 48 position grid, tanh GELU.
VISION_TOWERS = {"0.8b": (12, 768, 12, 3072), "2b": (24, 1024, 16, 4096),
                 "4b": (24, 1024, 16, 4096), "9b": (27, 1152, 16, 4304),
                 "27b": (27, 1152, 16, 4304), "tiny-vl": (2, 64, 4, 128)}


def vl_cfg(text):
    """Qwen3_5Config: SIZE's text config and its vision tower, Qwen3.5's token ids."""
    from transformers import Qwen3_5Config
    key = SIZE if SIZE == "tiny-vl" else SIZE.removesuffix("-vl")
    if key not in VISION_TOWERS:
        sys.exit(f"VISION: SIZE must be one of {', '.join(VISION_TOWERS)}, got {SIZE}")
    depth, hidden, heads, inter = VISION_TOWERS[key]
    vision = dict(depth=depth, hidden_size=hidden, num_heads=heads, intermediate_size=inter,
                  out_hidden_size=text.hidden_size, in_channels=3, patch_size=16,
                  temporal_patch_size=2, spatial_merge_size=2, hidden_act="gelu_pytorch_tanh",
                  num_position_embeddings=64 if SIZE == "tiny-vl" else 2304)
    vc = Qwen3_5Config(text_config=text.to_dict(), vision_config=vision,
                       image_token_id=vl_batches.IMAGE_PAD, video_token_id=248057,
                       vision_start_token_id=vl_batches.VISION_START,
                       vision_end_token_id=vl_batches.VISION_END,
                       tie_word_embeddings=text.tie_word_embeddings)
    for cc in (vc, vc.text_config, vc.vision_config):
        cc._attn_implementation = "sdpa"
    return vc


def cu_kwargs(lens):
    cu = torch.tensor([0] + lens, dtype=torch.int32).cumsum(0, dtype=torch.int32).to(dev)
    return dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lens), max_length_k=max(lens))


def positions(lens):
    return torch.cat([torch.arange(n, device=dev) for n in lens])[None]


res = {"peer": "hf_transformers", "size": SIZE, "fla": FLA, "fla_version": fla_version,
       "fla_guard_640_disabled": fla_patched, "gdn_impl": IMPL,
       "transformers": transformers.__version__, "torch": torch.__version__,
       "gpu": torch.cuda.get_device_name(0) if CUDA else "cpu (SMOKE TEST)",
       "gc": os.environ.get("GC") == "1", "lora": LORA, "vision": VISION,
       "liger": liger_version, "smoke_test": not CUDA}

# ---- optional: packing exactness (standalone vs packed, per-sample logits, tiny fp32 model) ----
if os.environ.get("PACKCHECK") == "1":
    torch.manual_seed(0)
    c = cfg("tiny")
    c._attn_implementation = "sdpa"
    m = Qwen3_5ForCausalLM(c).to(dev).float().eval()
    lens = [37, 70, 51]
    seqs = [torch.randint(0, 512, (n,), device=dev) for n in lens]

    def per_sample(logits):
        off, d = 0, []
        for n, a in zip(lens, alone):
            d.append((logits[off:off + n] - a).abs().max().item())
            off += n
        return d

    with torch.no_grad():
        alone = [m(input_ids=s[None]).logits[0] for s in seqs]
        ids = torch.cat(seqs)[None]
        res["pack_maxdiff_position_ids"] = per_sample(
            m(input_ids=ids, position_ids=positions(lens)).logits[0])
        try:
            res["pack_maxdiff_cu_seqlens"] = per_sample(
                m(input_ids=ids, position_ids=positions(lens), **cu_kwargs(lens)).logits[0])
        except Exception as e:  # report, do not hide
            res["pack_maxdiff_cu_seqlens"] = f"error: {type(e).__name__}: {str(e)[:200]}"
    print("# packing max|diff| per sample, position_ids:", res["pack_maxdiff_position_ids"],
          "cu_seq_lens kwargs:", res["pack_maxdiff_cu_seqlens"], flush=True)
    del m
    if CUDA:
        torch.cuda.empty_cache()

# ---- batches ----
if os.environ.get("LENGTHS"):
    with open(os.environ["LENGTHS"]) as f:
        spec = json.load(f)
    res["lengths_file"] = os.environ["LENGTHS"]
elif VISION:
    steps, spec = vl_batches.vl_steps()
    spec["steps"] = steps
    res["lengths_file"] = None
else:
    spec = {"micro_batch_tokens": 8192, "steps": lognormal_steps()}
    res["lengths_file"] = None
MBT = int(spec["micro_batch_tokens"])
if VISION:
    try:
        VL_STEPS = vl_batches.check_steps(spec)
    except (ValueError, KeyError, TypeError) as e:
        sys.exit(f"lengths: not a vision-language batches file ({e})")
    STEPS = [[vl_batches.sample_tokens(x) for x in st] for st in VL_STEPS]
    res.update(image_tokens=sum(sum(vl_batches.sample_patches(x) // 4 for x in st)
                                for st in VL_STEPS),
               image_patches=sum(sum(vl_batches.sample_patches(x) for x in st)
                                 for st in VL_STEPS))
else:
    try:
        STEPS = [[int(n) for n in s] for s in spec["steps"]]
    except TypeError:
        sys.exit("lengths: a vision-language batches file; set VISION=frozen|merger|full")
for i, s in enumerate(STEPS):
    if not s or min(s) < 1 or sum(s) > MBT:
        sys.exit(f"lengths: step {i} is empty, has a length < 1, or sums to {sum(s)} > {MBT}")
PAD_TO = int(os.environ.get("PAD_TO", "2048"))
res.update(micro_batch_tokens=MBT, steps=len(STEPS), samples=sum(len(s) for s in STEPS),
           real_tokens=sum(sum(s) for s in STEPS))

# ---- model ----
c = cfg(SIZE.removesuffix("-vl") if SIZE != "tiny-vl" else SIZE)
if LAYERS:
    n = int(LAYERS)
    if n < 1:
        sys.exit(f"LAYERS must be >= 1, got {LAYERS}")
    # the same 3 GDN : 1 attention pattern as the presets, cut to n layers
    every = getattr(c, "full_attention_interval", None) or 4
    c.layer_types = ["full_attention" if (i + 1) % every == 0 else "linear_attention"
                     for i in range(n)]
    c.num_hidden_layers = n
res["layers"] = c.num_hidden_layers
c._attn_implementation = "sdpa"
text_layers = c.num_hidden_layers
torch.manual_seed(0)
if VISION:
    if IS_MOE or LORA:
        sys.exit("VISION: dense sizes only, without LORA")
    from transformers import Qwen3_5ForConditionalGeneration as LM
    c = vl_cfg(c)
    res["vision_config"] = {k: getattr(c.vision_config, k) for k in (
        "depth", "hidden_size", "num_heads", "intermediate_size", "out_hidden_size")}
elif IS_MOE:
    from transformers import Qwen3_5MoeForCausalLM as LM
    try:
        c._experts_implementation = "grouped_mm"
    except Exception as e:
        print("# experts impl grouped_mm not settable:", e, flush=True)
    res["experts_impl"] = getattr(c, "_experts_implementation", None)
else:
    LM = Qwen3_5ForCausalLM
# built on the GPU in bf16 (the shared script built in fp32 on the CPU, then cast: same shapes and
# init distributions, minutes faster for the 7.75B moe)
torch.set_default_dtype(torch.bfloat16)
with torch.device(dev):
    m = LM(c)
torch.set_default_dtype(torch.float32)
m = m.to(torch.bfloat16).train()
if res["gc"]:
    # LoRA: non-reentrant, which needs no input that requires grad (the frozen base gives none)
    m.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={"use_reentrant": False} if LORA else None)
res["params"] = sum(p.numel() for p in m.parameters())
if VISION:
    res["vision_params"] = sum(p.numel() for n, p in m.named_parameters() if ".visual." in n
                               or n.startswith("visual."))
    res["attn_impl"] = {"text": m.config.text_config._attn_implementation,
                        "vision": m.model.visual.config._attn_implementation}


def vision_trains(name):
    """deltatron's model::vision_trains: which parameters train under VISION."""
    if ".visual." not in "." + name:
        return True
    return VISION == "full" or (VISION == "merger" and ".visual.merger." in "." + name)


def wrap_lora(model):
    """PEFT LoRA on the targets: returns the PeftModel and its trainable (adapter) parameters."""
    import peft  # only here: the full mode runs where PEFT is not installed
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    r = int(os.environ.get("LORA_R", "16"))
    alpha = float(os.environ.get("LORA_ALPHA", "32"))
    env_targets = os.environ.get("LORA_TARGETS")
    targets = [t for t in env_targets.split(",") if t] if env_targets else LORA_DEFAULT_TARGETS
    lc = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets,
                    bias="none", task_type="CAUSAL_LM")
    # get_peft_model freezes every base parameter and adds lora_A / lora_B (cast to f32 over a
    # bf16 base: autocast_adapter_dtype, PEFT's default) to each module a target matches
    pm = get_peft_model(model, lc)
    trainable = [(n, p) for n, p in pm.named_parameters() if p.requires_grad]
    stray = [n for n, _ in trainable if ".lora_A." not in n and ".lora_B." not in n]
    if stray:
        sys.exit(f"LORA=1: trainable parameters that are not adapters: {stray[:5]}")
    modules = [n for n, mod in pm.named_modules() if isinstance(mod, LoraLayer)]
    by_kind = {}
    for n in modules:
        k = n.rsplit(".", 1)[-1]
        by_kind[k] = by_kind.get(k, 0) + 1
    res["lora"] = dict(peft=peft.__version__, r=r, alpha=alpha, dropout=0.0, targets=targets,
                       modules=len(modules), modules_by_kind=by_kind,
                       trainable_params=sum(p.numel() for _, p in trainable),
                       adapter_dtypes=sorted({str(p.dtype) for _, p in trainable}),
                       base_dtypes=sorted({str(p.dtype) for p in pm.parameters()
                                           if not p.requires_grad}))
    return pm, [p for _, p in trainable]


if LORA:
    m, train_params = wrap_lora(m)
    m.train()
    lo = res["lora"]
    print(f"# LoRA (peft {lo['peft']}): r={lo['r']} alpha={lo['alpha']:g} modules={lo['modules']} "
          f"{lo['modules_by_kind']} trainable={lo['trainable_params'] / 1e6:.2f}M "
          f"adapters {','.join(lo['adapter_dtypes'])} base {','.join(lo['base_dtypes'])}",
          flush=True)
elif VISION:
    train_params = []
    for n, p in m.named_parameters():
        p.requires_grad_(vision_trains(n))
        if p.requires_grad:
            train_params.append(p)
    res["frozen_params"] = sum(p.numel() for p in m.parameters() if not p.requires_grad)
else:
    train_params = list(m.parameters())
res["trainable_params"] = sum(p.numel() for p in train_params)
opt = torch.optim.AdamW(train_params, lr=1e-5, fused=True)
if VISION:
    # Host batches, made once per step of the file (random ids below the special tokens, random
    # pixels); each step copies its batch to the device inside the timed region, as deltatron
    # uploads its pack inside the step.
    VL_HOST = [vl_batches.host_batch(st, min(c.text_config.vocab_size, 248000), seed=1000 + i)
               for i, st in enumerate(VL_STEPS)]
    for hb in VL_HOST:
        hb["pixel_values"] = hb["pixel_values"].to(torch.bfloat16)
        if CUDA:
            hb.update({k: v.pin_memory() for k, v in hb.items() if torch.is_tensor(v)})
gen = torch.Generator(device=dev).manual_seed(1)
print(f"# {SIZE}: params={res['params'] / 1e9:.3f}B trainable={res['trainable_params'] / 1e9:.4f}B "
      f"steps={len(STEPS)} samples={res['samples']} real_tokens={res['real_tokens']} "
      f"micro_batch_tokens={MBT}", flush=True)


def step_vl(mode, i):
    hb = VL_HOST[i]
    kw = {k: hb[k].to(dev, non_blocking=True) for k in ("input_ids", "labels", "position_ids",
                                                       "pixel_values", "image_grid_thw")}
    if mode == "packed_cu":
        kw.update(cu_kwargs(hb["lens"]))
    out = m(**kw)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return out.loss.detach()


def step(mode, lens, i=0):
    real = sum(lens)
    if VISION:
        return step_vl(mode, i)
    if mode == "padded":
        if max(lens) > PAD_TO:
            raise ValueError(f"sample of {max(lens)} tokens > PAD_TO={PAD_TO}")
        ids = torch.randint(0, c.vocab_size, (len(lens), PAD_TO), device=dev, generator=gen)
        am = (torch.arange(PAD_TO, device=dev)[None] <
              torch.tensor(lens, device=dev)[:, None]).long()
        out = m(input_ids=ids, attention_mask=am, labels=ids.masked_fill(am == 0, -100))
    else:
        ids = torch.randint(0, c.vocab_size, (1, real), device=dev, generator=gen)
        kw = cu_kwargs(lens) if mode == "packed_cu" else {}
        out = m(input_ids=ids, position_ids=positions(lens), labels=ids.clone(), **kw)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


# Default warm-up: one untimed pass over every step. Triton compiles and autotunes FLA's kernels on
# first use and specialises some on integer arguments (sequence count, lengths % 16), so a step
# whose shapes were not seen yet can pay a compile: in a first try with 3 warm-up steps, the mode
# timed first in a process was 15-20% slower than the same batches timed in a second mode.
WARMUP = int(os.environ.get("WARMUP", "0")) or max(3, len(STEPS))
REPEAT = int(os.environ.get("REPEAT", "1"))
modes = [x for x in os.environ.get("MODES", "packed").split(",") if x]
res["results"] = {}
for mode in modes:
    if mode not in ("packed", "packed_cu", "padded") or (VISION and mode == "padded"):
        sys.exit(f"unknown mode {mode}" + (" with VISION (packed or packed_cu)" if VISION else ""))
    try:
        if CUDA:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        for i in range(WARMUP):
            step(mode, STEPS[i % len(STEPS)], i % len(STEPS))
        sync()
        warm_s = time.time() - t0
        ts, toks, patches = [], 0, 0
        for _ in range(REPEAT):
            for i, lens in enumerate(STEPS):
                t = time.perf_counter()
                loss = step(mode, lens, i)
                sync()
                ts.append(time.perf_counter() - t)
                toks += sum(lens)
                patches += VL_HOST[i]["patches"] if VISION else 0
        med = sorted(ts)[len(ts) // 2]
        r = dict(tok_per_s=toks / sum(ts), step_s_median=med, step_s_min=min(ts),
                 step_s_max=max(ts), timed_steps=len(ts), warmup_s=warm_s,
                 step_s=[round(t, 5) for t in ts],
                 peak_gib=torch.cuda.max_memory_allocated() / 2**30 if CUDA else None)
        if VISION:
            r["image_patches_per_s"] = patches / sum(ts)
            r["last_loss"] = float(loss)  # random weights and tokens: about ln(vocab)
        peak = f"{r['peak_gib']:.1f} GiB" if CUDA else "n/a (cpu)"
        print(f"# {mode}: {r['tok_per_s']:.0f} real tok/s"
              f"{' (text + image tokens), %.0f image patches/s' % r['image_patches_per_s'] if VISION else ''}"
              f", median step {med * 1e3:.1f} ms "
              f"(min {min(ts) * 1e3:.1f}, max {max(ts) * 1e3:.1f}), peak {peak}, "
              f"warmup {warm_s:.1f} s", flush=True)
    except torch.OutOfMemoryError:
        r = "OOM"
        print(f"# {mode}: OOM", flush=True)
        opt.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
    res["results"][mode] = r

first = res["results"].get(modes[0]) if modes else None
if isinstance(first, dict):
    res.update(mode=modes[0], tok_per_s=first["tok_per_s"], step_s_median=first["step_s_median"],
               peak_gib=first["peak_gib"])
    if VISION:
        res["image_patches_per_s"] = first["image_patches_per_s"]
os.makedirs(OUT, exist_ok=True)
name = (f"peer_hf_{SIZE}_L{text_layers}_fla{int(FLA)}{'_gc' if res['gc'] else ''}"
        f"{'_lora' if LORA else ''}{'_liger' if LIGER else ''}{'_vl' + VISION if VISION else ''}.json")
with open(os.path.join(OUT, name), "w") as f:
    json.dump(res, f, indent=1)
print(json.dumps(res), flush=True)
