#!/usr/bin/env python3
"""Generates the HF-transformers parity fixtures for deltatron's MoE and MTP golden tests (see README_moe.md).

Three tiny random Qwen3.5 models built with transformers' own classes: a Mixture-of-Experts text model
(fused expert tensors, tied embeddings), a multimodal-layout MoE model with one Multi-Token-Prediction
(MTP) layer whose experts are stored per expert (as the Qwen3.5 releases do), and a dense text model
with a dense MTP layer. For every sample alone the script computes, in float64, the summed
next-token cross entropy, the summed MTP cross entropy and (summed over all samples) the gradient of
`sum loss_sum + mtp_scale * sum mtp_loss_sum` w.r.t. every text-model and every `mtp.*` parameter,
and writes them next to an HF checkpoint of the same weights.

transformers has no MTP module; the MTP reference is assembled from HF's own classes (the text
decoder layer configured as a full-attention layer, the zero-centred RMSNorm, an nn.Linear fc).
Precision technique as in make_golden.py, whose helpers are imported from the same directory: HF's
float32 islands are turned into float64 by a torch function mode, inv_freq is recomputed in
float64, a dispatch mode asserts that every ATen op of the forward and backward produced float64,
and the unmodified HF path must agree to float32 accuracy.
"""

import argparse
import copy
import dataclasses
import json
import math
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
import transformers.integrations.moe as moe_integration
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    Qwen3_5ForCausalLM,
    Qwen3_5MoeConfig,
    Qwen3_5MoeForCausalLM,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3_5MoeTextConfig,
    Qwen3_5TextConfig,
)
from transformers.masking_utils import create_causal_mask, create_recurrent_attention_mask
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5DecoderLayer, Qwen3_5RMSNorm
from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import (
    Qwen3_5MoeDecoderLayer,
    Qwen3_5MoeRMSNorm,
    Qwen3_5MoeTopKRouter,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_golden  # noqa: E402  (same directory)
from make_golden import (  # noqa: E402
    HIDDEN,
    IGNORE_INDEX,
    VOCAB,
    Float64Everywhere,
    OnlyFloat64,
    _log_uniform,
    _normal,
    check_environment,
    hf_vlm_name,
    labels_of,
    redraw,
    rel_err,
    use_float64_rope,  # the MTP layer uses the same rotary module
)

NUM_EXPERTS = 4
TOP_K = 2
MOE_INTERMEDIATE = 12
SHARED_INTERMEDIATE = 10
MTP_SCALE = 0.3  # grads = d/dθ [sum_i loss_sum_i + MTP_SCALE * sum_i mtp_loss_sum_i]
MIN_TOPK_GAP = 1e-6  # required gap between the k-th and (k+1)-th router probability, every token

L, FA = "linear_attention", "full_attention"

# ----------------------------------------------------------------------------------------------
# cases


@dataclasses.dataclass
class Case:
    name: str
    moe: bool
    layout: str  # "text": *ForCausalLM file; "vlm": *ForConditionalGeneration file
    storage: torch.dtype
    seed: int
    layer_types: list
    rope_theta: float
    tied: bool
    mtp: bool
    mtp_per_expert: bool = False  # MTP experts stored as mtp.layers.0.mlp.experts.{e}.*_proj.weight
    intermediate: int = 48  # dense MLP (and dense MTP MLP) width


# The MoE seeds were picked from 240 candidates each for the largest minimum top-k probability gap
# (typical seeds give 1e-5..5e-5 over ~3000 routed token-layer pairs; see README_moe.md).
CASES = [
    Case(
        name="moe_text_fused_tied",
        moe=True,
        layout="text",
        storage=torch.float32,
        seed=4215,
        layer_types=[L, FA, L, L],
        rope_theta=1e4,
        tied=True,
        mtp=False,
    ),
    Case(
        name="moe_vlm_mtp",
        moe=True,
        layout="vlm",
        storage=torch.bfloat16,
        seed=8220,
        layer_types=[L, L, L, FA],
        rope_theta=1e7,
        tied=False,
        mtp=True,
        mtp_per_expert=True,
    ),
    Case(
        name="dense_text_mtp",
        moe=False,
        layout="text",
        storage=torch.float32,
        seed=2109,
        layer_types=[FA, L, L, L],
        rope_theta=1e6,
        tied=False,
        mtp=True,
        intermediate=24,
    ),
]


def text_config(case, layer_types=None, with_mtp_key=True):
    layer_types = case.layer_types if layer_types is None else layer_types
    rope = {
        "rope_type": "default",
        "rope_theta": case.rope_theta,
        "partial_rotary_factor": 0.25,  # 8 of 32 head dims rotate: 4 frequencies
        "mrope_section": [2, 1, 1],
        "mrope_interleaved": True,
    }
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=len(layer_types),
        layer_types=list(layer_types),
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=16,
        linear_value_head_dim=8,
        linear_conv_kernel_dim=4,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        tie_word_embeddings=case.tied,
        rope_parameters=rope,
    )
    if case.mtp and with_mtp_key:
        kw["mtp_num_hidden_layers"] = 1  # not read by HF; saved as an extra key
    if case.moe:
        kw.update(
            num_experts=NUM_EXPERTS,
            num_experts_per_tok=TOP_K,
            moe_intermediate_size=MOE_INTERMEDIATE,
            shared_expert_intermediate_size=SHARED_INTERMEDIATE,
            router_aux_loss_coef=0.0,  # the fixture objective has no aux / z loss
            output_router_logits=False,
        )
        return Qwen3_5MoeTextConfig(**kw)
    kw["intermediate_size"] = case.intermediate
    return Qwen3_5TextConfig(**kw)


# First tensor of the second shard of the VLM checkpoint (layer 2 straddles the two files).
SPLIT_AT = "model.language_model.layers.2.mlp.gate.weight"


class Mtp(nn.Module):
    """One MTP depth from HF's own modules; parameter names are the checkpoint's minus `mtp.`."""

    def __init__(self, case, cfg):
        super().__init__()
        norm_cls = Qwen3_5MoeRMSNorm if case.moe else Qwen3_5RMSNorm
        layer_cls = Qwen3_5MoeDecoderLayer if case.moe else Qwen3_5DecoderLayer
        h, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.cfg = cfg
        self.fc = nn.Linear(2 * h, h, bias=False)
        self.pre_fc_norm_embedding = norm_cls(h, eps=eps)
        self.pre_fc_norm_hidden = norm_cls(h, eps=eps)
        self.layers = nn.ModuleList([layer_cls(cfg, 0)])
        self.norm = norm_cls(h, eps=eps)
        assert self.layers[0].block_type == FA


def mtp_config(case):
    cfg = text_config(case, layer_types=[FA], with_mtp_key=False)
    cfg._attn_implementation = "eager"
    if case.moe:
        cfg._experts_implementation = "eager"
    return cfg


# ----------------------------------------------------------------------------------------------
# parameters: every one is redrawn (seeded) well away from HF's init


# (pattern on the parameter name, sampler); the first match wins. Names of MTP parameters carry
# the `mtp.` prefix here. Router weights are larger than other matrices so that router logits
# (std ~2) separate the top-k experts clearly.
PARAM_RULES = [
    (r"(embed_tokens|lm_head)\.weight$", lambda g, s: _normal(g, s, 0.0, 0.35)),
    (r"linear_attn\.A_log$", lambda g, s: _log_uniform(g, s, 0.02, 2.0)),
    (r"linear_attn\.dt_bias$", lambda g, s: _normal(g, s, -0.5, 0.5)),
    (r"linear_attn\.norm\.weight$", lambda g, s: _normal(g, s, 1.0, 0.25)),  # gated: init 1
    (r"linear_attn\.conv1d\.weight$", lambda g, s: _normal(g, s, 0.0, 0.35)),
    (r"linear_attn\.in_proj_a\.weight$", lambda g, s: _normal(g, s, 0.0, 0.1)),
    (r"mlp\.gate\.weight$", lambda g, s: _normal(g, s, 0.0, 0.4)),  # router
    (r"mlp\.experts\.(gate_up_proj|down_proj)$", lambda g, s: _normal(g, s, 0.0, 0.2)),
    (r"(layernorm|q_norm|k_norm|model\.norm|language_model\.norm|pre_fc_norm_embedding"
     r"|pre_fc_norm_hidden|^mtp\.norm)\.weight$",
     lambda g, s: _normal(g, s, 0.0, 0.25)),  # zero-centred: init 0
    (r"\.weight$", lambda g, s: _normal(g, s, 0.0, 0.2)),  # every other Linear (incl. mtp.fc)
]

# ----------------------------------------------------------------------------------------------
# samples (make_golden.py's, plus one sample whose last two labels are -100)

SAMPLE_SPECS = make_golden.SAMPLE_SPECS + [(33, ("mask", [(10, 12), (31, 33)]))]


def make_samples(seed):
    return make_golden.make_samples(seed, VOCAB, SAMPLE_SPECS, make_golden.DEFAULT_SAMPLE_EDITS)


# ----------------------------------------------------------------------------------------------
# forward: main model + MTP for one sample


def positions(n):
    """What HF's text model builds when position_ids is None: [4, 1, n], row 0 = text positions."""
    pos = torch.arange(n).view(1, 1, -1).expand(4, 1, -1)
    return pos[0], pos[1:]


def manual_trunk(model, ids):
    """The text model re-run layer by layer with the same harness (mask, RoPE, call signature) that
    the MTP layer uses; must equal model.model() bitwise (checks the harness)."""
    tm = model.model
    x = tm.embed_tokens(ids)
    text_pos, pos = positions(ids.shape[1])
    masks = {
        FA: create_causal_mask(config=tm.config, inputs_embeds=x, attention_mask=None,
                               past_key_values=None, position_ids=text_pos),
        L: create_recurrent_attention_mask(config=tm.config, inputs_embeds=x, attention_mask=None,
                                           past_key_values=None, position_ids=text_pos),
    }
    pe = tm.rotary_emb(x, pos)
    for i, layer in enumerate(tm.layers):
        x = layer(x, position_embeddings=pe, attention_mask=masks[tm.config.layer_types[i]],
                  position_ids=text_pos, past_key_values=None)
    return tm.norm(x)


def mtp_forward(model, mtp, ids, h):
    """ids [1, n], h [1, n, H] main post-final-norm hidden states -> MTP logits [n, V]."""
    n = ids.shape[1]
    shifted = torch.cat([ids[:, 1:], torch.zeros_like(ids[:, :1])], dim=1)  # token 0 rolled in
    e = model.model.embed_tokens(shifted)
    u = mtp.fc(torch.cat([mtp.pre_fc_norm_embedding(e), mtp.pre_fc_norm_hidden(h)], dim=-1))
    text_pos, pos = positions(n)
    mask = create_causal_mask(config=mtp.cfg, inputs_embeds=u, attention_mask=None,
                              past_key_values=None, position_ids=text_pos)
    assert n == 1 or mask is not None, "eager attention needs an explicit causal mask"
    pe = model.model.rotary_emb(u, pos)
    r = mtp.layers[0](u, position_embeddings=pe, attention_mask=mask, position_ids=text_pos,
                      past_key_values=None)
    return model.lm_head(mtp.norm(r))[0]


def sample_forward(model, mtp, sample):
    ids = torch.tensor([sample["input_ids"]])
    labels = torch.tensor(labels_of(sample))
    h = model.model(input_ids=ids, use_cache=False).last_hidden_state
    logits = model.lm_head(h)[0]
    targets = labels[1:]
    out = {
        "loss_sum": F.cross_entropy(logits[:-1], targets, ignore_index=IGNORE_INDEX, reduction="sum"),
        "n_tokens": int((targets != IGNORE_INDEX).sum()),
        "logits": logits,
        "h": h,
    }
    if mtp is not None:
        mtp_logits = mtp_forward(model, mtp, ids, h)
        mtp_targets = labels[2:]  # position j predicts labels[j + 2]
        out["mtp_loss_sum"] = F.cross_entropy(
            mtp_logits[: len(mtp_targets)], mtp_targets, ignore_index=IGNORE_INDEX, reduction="sum"
        )
        out["mtp_n_tokens"] = int((mtp_targets != IGNORE_INDEX).sum())
        out["mtp_logits"] = mtp_logits
    return out


class RouterRecorder:
    """Forward hooks on every HF router (main layers and the MTP layer): logits and top-k ids."""

    def __init__(self, modules):
        self.records = []
        self.enabled = True
        self.handles = [
            m.register_forward_hook(self._hook) for m in modules if isinstance(m, Qwen3_5MoeTopKRouter)
        ]

    def _hook(self, module, args, output):
        logits, _, indices = output
        if self.enabled:
            self.records.append((logits.detach().clone(), indices.detach().clone()))

    def remove(self):
        for h in self.handles:
            h.remove()


def all_params(model, mtp):
    params = list(model.named_parameters())
    if mtp is not None:
        params += [("mtp." + n, p) for n, p in mtp.named_parameters()]
    return params


def run_pass(model, mtp, samples, reference):
    """One pass over the samples: per-sample losses, gradient of the fixture objective, router
    records. reference=True: float64 everywhere, checked op by op."""
    for _, p in all_params(model, mtp):
        p.grad = None
    modules = list(model.modules()) + (list(mtp.modules()) if mtp is not None else [])
    rec = RouterRecorder(modules)
    f64, check = Float64Everywhere(), OnlyFloat64()
    results = []
    try:
        if reference:
            f64.__enter__()
            check.__enter__()
        for sample in samples:
            out = sample_forward(model, mtp, sample)
            objective = out["loss_sum"]
            if mtp is not None:
                objective = objective + MTP_SCALE * out["mtp_loss_sum"]
            if out["n_tokens"] > 0:
                objective.backward()
            if reference:
                assert out["logits"].dtype == torch.float64 and objective.dtype == torch.float64
                if out["n_tokens"] > 0:
                    # HF's own loss (mean over targets) must agree with our sum; its logits too.
                    rec.enabled = False
                    hf = model(
                        input_ids=torch.tensor([sample["input_ids"]]),
                        labels=torch.tensor([labels_of(sample)]),
                        use_cache=False,
                    )
                    assert hf.loss.dtype == torch.float64
                    assert math.isclose(hf.loss.item() * out["n_tokens"], out["loss_sum"].item(),
                                        rel_tol=1e-13)
                    assert torch.equal(hf.logits[0], out["logits"].detach())
                    rec.enabled = True
            r = {"loss_sum": out["loss_sum"].item(), "n_tokens": out["n_tokens"]}
            if mtp is not None:
                r["mtp_loss_sum"] = out["mtp_loss_sum"].item()
                r["mtp_n_tokens"] = out["mtp_n_tokens"]
            results.append(r)
    finally:
        if reference:
            check.__exit__(None, None, None)
            f64.__exit__(None, None, None)
        rec.remove()
    grads = {}
    for name, p in all_params(model, mtp):
        assert p.grad is not None, f"{name}: no gradient"
        grads[name] = p.grad.detach().clone()
        p.grad = None
    if reference:
        assert check.ops > 0 and sum(f64.rewrites.values()) > 0
    return results, grads, rec.records, f64.rewrites


def topk_gap(records):
    """Min over all routed tokens of p_(k) - p_(k+1) (sorted softmax probabilities, float64)."""
    gaps = []
    for logits, _ in records:
        p = torch.softmax(logits.to(torch.float64), dim=-1).sort(dim=-1, descending=True).values
        gaps.append(p[:, TOP_K - 1] - p[:, TOP_K])
    g = torch.cat(gaps)
    return g.min().item(), int(g.numel())


def check_harness(model, mtp, samples):
    """(1) the layer-by-layer harness reproduces HF's text model bitwise; (2) the MTP output at
    position j depends only on tokens 0..j+1 (causal mask, unrolled RoPE): a prefix of length m gives
    the same MTP logits on positions 0..m-2 as the full sample (position m-1 of the prefix sees the
    rolled-in token 0 instead of x_m)."""
    with torch.no_grad():
        for sample in (samples[-3], samples[-1]):
            ids = torch.tensor([sample["input_ids"]])
            ref = model.model(input_ids=ids, use_cache=False).last_hidden_state
            assert torch.equal(manual_trunk(model, ids), ref), "harness differs from HF's text model"
        if mtp is None:
            return None
        sample = samples[10]
        ids = torch.tensor([sample["input_ids"]])
        full = mtp_forward(model, mtp, ids, model.model(input_ids=ids, use_cache=False).last_hidden_state)
        worst = 0.0
        for m in (1, 2, 40, 64, 70):
            pre_ids = ids[:, :m]
            pre = mtp_forward(model, mtp, pre_ids,
                              model.model(input_ids=pre_ids, use_cache=False).last_hidden_state)
            if m > 1:
                worst = max(worst, ((pre[: m - 1] - full[: m - 1]).abs().max() / full.abs().max()).item())
            assert not torch.allclose(pre[m - 1], full[m - 1]), "last prefix position must differ"
        assert worst < 1e-12, worst
        return worst


# ----------------------------------------------------------------------------------------------
# checkpoint names and files


def file_tensors(case, named):
    """{parameter name (text-model naming, mtp.* prefixed): tensor} -> {checkpoint name: tensor}:
    VLM prefix for the text model, MTP experts split per expert where the case stores them so
    (gate_up_proj[e] = gate_proj ‖ up_proj along dim 0 of each [2I, H] slice; down_proj[e] as is)."""
    out = {}
    for name, t in named.items():
        if name.startswith("mtp."):
            m = re.fullmatch(r"(mtp\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)", name)
            if m and case.mtp_per_expert:
                for e in range(t.shape[0]):
                    if m.group(2) == "gate_up_proj":
                        out[f"{m.group(1)}.{e}.gate_proj.weight"] = t[e, :MOE_INTERMEDIATE]
                        out[f"{m.group(1)}.{e}.up_proj.weight"] = t[e, MOE_INTERMEDIATE:]
                    else:
                        out[f"{m.group(1)}.{e}.down_proj.weight"] = t[e]
            else:
                out[name] = t
        elif case.layout == "vlm":
            out[hf_vlm_name(name)] = t
        else:
            out[name] = t
    return {n: t.contiguous() for n, t in out.items()}


def hf_config_json(model, case, tmp):
    """HF's own config.json for the text case (save_pretrained of a storage-dtype copy), and
    HF's own per-expert weight file for the cross-check below."""
    m = copy.deepcopy(model).to(case.storage)
    m.save_pretrained(tmp)
    saved = json.loads((tmp / "config.json").read_text())
    assert saved["tie_word_embeddings"] is case.tied
    assert saved.get("mtp_num_hidden_layers") == (1 if case.mtp else None)
    if case.moe:
        # HF reads its own per-expert file back into the fused parameters (stack on dim 0,
        # gate ‖ up on dim 1), bitwise.
        loaded = Qwen3_5MoeForCausalLM.from_pretrained(tmp, dtype=torch.float64, experts_implementation="eager")
        ref = dict(model.named_parameters())
        for name, p in loaded.named_parameters():
            assert torch.equal(p, ref[name]), f"{name}: HF per-expert round trip differs"
    return load_file(tmp / "model.safetensors")


def check_hf_per_expert_save(case, tensors, hf_saved):
    """transformers 5.17's save_pretrained writes MoE experts per expert (it reverses the qwen2_moe
    conversion); the fused tensors we write must be exactly their stack / concatenation."""
    if not case.moe:
        assert set(hf_saved) == {n for n in tensors if not n.startswith("mtp.")}
        return 0
    fused = [n for n in tensors if n.endswith("mlp.experts.gate_up_proj")]
    for gu in fused:
        base = gu[: -len("gate_up_proj")]
        for e in range(NUM_EXPERTS):
            g, u = hf_saved[f"{base}{e}.gate_proj.weight"], hf_saved[f"{base}{e}.up_proj.weight"]
            assert torch.equal(torch.cat([g, u], 0), tensors[gu][e])
            assert torch.equal(hf_saved[f"{base}{e}.down_proj.weight"], tensors[base + "down_proj"][e])
        assert gu not in hf_saved and base + "down_proj" not in hf_saved
    return len(fused)


def write_text_checkpoint(case, model, mtp, out_dir):
    named = {n: p.detach() for n, p in all_params(model, mtp)}  # tied: no lm_head.weight
    assert ("lm_head.weight" in named) == (not case.tied)
    tensors = {n: t.to(case.storage) for n, t in file_tensors(case, named).items()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hf_saved = hf_config_json(model, case, tmp)
        shutil.copy(tmp / "config.json", out_dir / "config.json")
    n_fused = check_hf_per_expert_save(case, tensors, hf_saved)
    save_file(tensors, out_dir / "model.safetensors", metadata={"format": "pt"})
    return tensors, {"hf_save_pretrained_per_expert_layers": n_fused}


def write_vlm_checkpoint(case, model, mtp, out_dir, gen):
    """Multimodal layout: text under model.language_model., lm_head on top, a complete tiny vision
    tower, mtp.* (experts per expert); 2 shards + index; config as HF saves it."""
    cfg, vlm = make_golden.build_vlm(Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration,
                                     text_config(case), case.storage, gen)
    text = file_tensors(case, {n: p.detach() for n, p in all_params(model, mtp)})
    tensors = {}
    for name, p in vlm.named_parameters():  # HF state_dict order: visual, language model, lm_head
        tensors[name] = p.detach() if name.startswith("model.visual.") else text.pop(name)
    assert all(n.startswith("mtp.") for n in text), sorted(text)
    tensors.update(text)  # then mtp.*
    tensors = {n: t.to(case.storage).contiguous() for n, t in tensors.items()}

    make_golden.write_two_shards(tensors, out_dir, SPLIT_AT)
    cfg.save_pretrained(out_dir)
    saved = json.loads((out_dir / "config.json").read_text())
    assert saved["tie_word_embeddings"] is False and saved["text_config"]["mtp_num_hidden_layers"] == 1
    assert saved["text_config"]["layer_types"] == case.layer_types
    return tensors, {}


def compare_logits(model, loaded, samples):
    for sample in samples:
        make_golden.compare_logits(model, loaded, sample)


def check_reload(case, model, out_dir, samples):
    """The file loads into HF (MTP tensors ignored, per-expert MTP tensors included) and gives
    bitwise the same parameters and logits."""
    kw = dict(dtype=torch.float64, attn_implementation="eager", output_loading_info=True)
    if case.moe:
        kw["experts_implementation"] = "eager"
    ref = dict(model.named_parameters())
    report = {}
    if case.layout == "text":
        cls = Qwen3_5MoeForCausalLM if case.moe else Qwen3_5ForCausalLM
        loaded, info = cls.from_pretrained(out_dir, **kw)
        got = dict(loaded.named_parameters())
        assert set(got) == set(ref)
        tied = loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    else:
        loaded, info = Qwen3_5MoeForConditionalGeneration.from_pretrained(out_dir, **kw)
        got = {n.replace("model.language_model.", "model.", 1): p
               for n, p in loaded.named_parameters() if not n.startswith("model.visual.")}
        assert set(got) == set(ref)
        tied = loaded.lm_head.weight.data_ptr() == loaded.model.language_model.embed_tokens.weight.data_ptr()
    assert not info["missing_keys"], info["missing_keys"]
    assert not info["mismatched_keys"], info["mismatched_keys"]
    assert not info["unexpected_keys"], info["unexpected_keys"]  # mtp.* is ignored silently
    assert tied == case.tied
    for name in ref:
        assert torch.equal(ref[name], got[name]), f"{name} differs after reload"
    compare_logits(model, loaded, samples[-2:])
    report["from_pretrained"] = type(loaded).__name__
    if case.layout == "vlm":
        # Aside: the VLM directory also loads into the text class (model.language_model. -> model.).
        text, info = Qwen3_5MoeForCausalLM.from_pretrained(out_dir, **kw)
        assert not info["missing_keys"] and not info["mismatched_keys"], info
        for name, p in text.named_parameters():
            assert torch.equal(p, ref[name]), name
        compare_logits(model, text, samples[-1:])
        report["also_loads_into"] = "Qwen3_5MoeForCausalLM"
        report["text_class_unexpected_keys"] = len(info["unexpected_keys"])
    return report


# ----------------------------------------------------------------------------------------------
# driver


def build(case):
    cfg = text_config(case)
    torch.manual_seed(case.seed)
    cls = Qwen3_5MoeForCausalLM if case.moe else Qwen3_5ForCausalLM
    kw = {"attn_implementation": "eager"}
    if case.moe:
        # HF's default experts path (grouped_mm) raises for float64 on CPU; eager is the original
        # per-expert loop (checked against grouped_mm in float32 below).
        kw["experts_implementation"] = "eager"
    model = cls._from_config(cfg, **kw).to(torch.float64)
    model.eval()
    mtp = Mtp(case, mtp_config(case)).to(torch.float64).eval() if case.mtp else None
    gen = torch.Generator().manual_seed(case.seed)
    redraw(model.named_parameters(), PARAM_RULES, gen, case.storage)
    if mtp is not None:
        redraw((("mtp." + n, p) for n, p in mtp.named_parameters()), PARAM_RULES, gen, case.storage)
    return model, mtp, gen


def bf16_routing_disagreement(out_dir, samples, routes, n_main_layers):
    """Information only: HF run natively in bfloat16 on the BF16 checkpoint (bf16 router logits,
    fp32 softmax) vs the float64 reference: how many main-layer token-layer pairs get a different
    expert set."""
    loaded = Qwen3_5MoeForCausalLM.from_pretrained(
        out_dir, dtype=torch.bfloat16, attn_implementation="eager", experts_implementation="eager")
    rec = RouterRecorder(list(loaded.modules()))
    with torch.no_grad():
        for sample in samples:
            loaded(input_ids=torch.tensor([sample["input_ids"]]), use_cache=False)
    rec.remove()
    per_sample = n_main_layers + 1  # the reference also records the MTP router after each sample
    ref = [r for i, r in enumerate(routes) if i % per_sample < n_main_layers]
    assert len(ref) == len(rec.records)
    differ = total = 0
    for (_, a), (_, b) in zip(rec.records, ref):
        differ += int((a.sort(dim=-1).values != b.sort(dim=-1).values).any(dim=-1).sum())
        total += a.shape[0]
    return differ, total


def check_grouped_mm(model, samples):
    """In float32 HF's default grouped_mm experts path and the eager loop agree (the reference uses
    eager because grouped_mm has no float64 CPU kernel)."""
    m = copy.deepcopy(model).to(torch.float32)
    ids = torch.tensor([samples[-2]["input_ids"]])
    registry = moe_integration.ALL_EXPERTS_FUNCTIONS._global_mapping
    original, calls = registry["grouped_mm"], []

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    registry["grouped_mm"] = counted
    try:
        with torch.no_grad():
            a = m(input_ids=ids, use_cache=False).logits
            assert not calls
            m.set_experts_implementation("grouped_mm")
            b = m(input_ids=ids, use_cache=False).logits
    finally:
        registry["grouped_mm"] = original
    assert len(calls) == len(m.model.layers), calls
    return ((a - b).abs().max() / a.abs().max()).item()


def generate_case(case, out_root):
    out_dir = out_root / case.name
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    model, mtp, gen = build(case)
    samples = make_samples(case.seed + 1)

    if case.layout == "text":
        tensors, extra = write_text_checkpoint(case, model, mtp, out_dir)
    else:
        tensors, extra = write_vlm_checkpoint(case, model, mtp, out_dir, gen)
    extra.update(check_reload(case, model, out_dir, samples))
    grouped = check_grouped_mm(model, samples) if case.moe else None
    if grouped is not None:
        assert grouped < 1e-5, grouped

    native, native_grads, native_routes, _ = run_pass(model, mtp, samples, reference=False)
    use_float64_rope(model)
    harness = check_harness(model, mtp, samples)
    results, grads, routes, rewrites = run_pass(model, mtp, samples, reference=True)

    # float32 islands vs float64: same routing, losses and gradients agree to float32 accuracy.
    assert len(native_routes) == len(routes)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(native_routes, routes)), "routing differs"
    keys = ["loss_sum"] + (["mtp_loss_sum"] if mtp is not None else [])
    loss_rel = max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-300)
                   for a, b in zip(native, results) for k in keys)
    grad_rel = max(rel_err(native_grads[n], g) for n, g in grads.items())
    assert loss_rel < 1e-5 and grad_rel < 1e-4, (loss_rel, grad_rel)

    gap, routed = topk_gap(routes) if case.moe else (None, 0)
    bf16_routing = None
    if case.moe and case.storage == torch.bfloat16:
        bf16_routing = bf16_routing_disagreement(out_dir, samples, routes, len(case.layer_types))
    if case.moe:
        assert gap > MIN_TOPK_GAP, gap

    for name, g in grads.items():
        assert g.dtype == torch.float64 and torch.isfinite(g).all(), name
        assert g.abs().max() > 0, f"{name}: zero gradient"
    grads_out = {n: g.to(torch.float32).contiguous() for n, g in file_tensors(case, grads).items()}
    trainable = {n for n in tensors if not n.startswith("model.visual.")}
    assert set(grads_out) == trainable, "gradient names must be the checkpoint's (non-visual) names"
    for name, t in tensors.items():
        if name in grads_out:
            assert grads_out[name].shape == t.shape, name
            assert grads_out[name].abs().max() > 0, f"{name}: zero gradient"
    zero_experts = []
    for name, g in grads_out.items():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            zero_experts += [f"{name}[{e}]" for e in range(g.shape[0]) if g[e].abs().max() == 0]
    assert not zero_experts, zero_experts

    make_golden.write_samples_and_expected(out_dir, samples, results)
    save_file(grads_out, out_dir / "grads.safetensors", metadata={"format": "pt"})
    if mtp is not None:
        (out_dir / "golden.json").write_text(json.dumps({"mtp_scale": MTP_SCALE}) + "\n")
    for path in out_dir.iterdir():
        path.chmod(0o644)  # safetensors writes 0600

    def per_token(key, n_key):
        tot = sum(r[n_key] for r in results)
        return sum(r[key] for r in results) / tot, tot

    mean_main, n_main = per_token("loss_sum", "n_tokens")
    assert abs(mean_main - math.log(VOCAB)) > 0.5, "logits too close to uniform"
    summary = {
        "case": case.name,
        "params": sum(p.numel() for _, p in all_params(model, mtp)),
        "checkpoint_tensors": len(tensors),
        "grad_tensors": len(grads_out),
        "samples": len(samples),
        "tokens_scored": n_main,
        "loss_per_token_mean": mean_main,
        "log_vocab": math.log(VOCAB),
    }
    if mtp is not None:
        mean_mtp, n_mtp = per_token("mtp_loss_sum", "mtp_n_tokens")
        assert abs(mean_mtp - math.log(VOCAB)) > 0.5, "MTP logits too close to uniform"
        summary.update(mtp_tokens_scored=n_mtp, mtp_loss_per_token_mean=mean_mtp,
                       mtp_prefix_check_max_rel=harness)
    embed = "model.embed_tokens.weight"
    summary["zero_embedding_grad_rows"] = int((grads[embed].abs().amax(dim=1) == 0).sum())
    if case.tied:
        assert summary["zero_embedding_grad_rows"] == 0
    else:
        # A row has a gradient iff its token occurs at or before the last main-scored position of
        # some sample (MTP adds no row: its scored e_j = embed(x_{j+1}) has j+1 main-scored too).
        reaching = make_golden.tokens_reaching_embedding(samples)
        assert summary["zero_embedding_grad_rows"] == VOCAB - len(reaching)
    if case.moe:
        summary.update(min_topk_prob_gap=gap, routed_token_layer_pairs=routed,
                       float32_grouped_mm_vs_eager_rel=grouped)
        if bf16_routing is not None:
            summary["hf_bf16_main_routing_differs"] = f"{bf16_routing[0]} of {bf16_routing[1]}"
    summary.update(
        native_hf_max_rel_loss_diff=loss_rel,
        native_hf_max_rel_grad_diff=grad_rel,
        float32_casts_rewritten=dict(sorted(rewrites.items())),
        bytes=sum(p.stat().st_size for p in out_dir.iterdir()),
        **extra,
    )
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="fixture root, e.g. tests/data/golden")
    ap.add_argument("--case", action="append", help="only these cases (default: all)")
    ap.add_argument("--allow-other-versions", action="store_true")
    args = ap.parse_args()
    check_environment(args.allow_other_versions)
    make_golden.prepare_run(args.out)
    cases = [c for c in CASES if not args.case or c.name in args.case]
    summaries = [generate_case(case, args.out) for case in cases]
    for s in summaries:
        print(json.dumps(s, indent=1))
    digest = make_golden.cases_digest(args.out, [case.name for case in cases])
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"python {sys.version.split()[0]}; total bytes "
          f"{sum(s['bytes'] for s in summaries)}; fixtures sha256 {digest}")


if __name__ == "__main__":
    main()
