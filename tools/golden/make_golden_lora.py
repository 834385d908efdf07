#!/usr/bin/env python3
"""Generates the HF-transformers + PEFT LoRA parity fixtures for deltatron (see README_lora.md).

Each case loads an existing golden base checkpoint (tests/data/golden/<base>/, written by
make_golden.py / make_golden_moe.py; never regenerated here) in float64, wraps it with PEFT's
`get_peft_model(model, LoraConfig(...))`, gives every lora_A / lora_B tensor seeded random values
(both non-zero, so that every gradient is non-zero) and computes, for every sample of the base's
samples.jsonl alone, the summed next-token cross entropy, and (summed over all samples) the gradient
of every LoRA tensor with the base frozen. It writes PEFT's own adapter files, the losses, the
gradients and the merged weights of PEFT's `merge_and_unload()`.

Precision technique as in make_golden.py, whose float64 machinery is imported from the same
directory: HF's float32 islands are turned into float64 by `Float64Everywhere`, inv_freq is
recomputed in float64, `OnlyFloat64` asserts that every ATen op of the forward and backward
produced float64, and the unmodified HF + PEFT path must agree to float32 accuracy.
"""

import argparse
import copy
import dataclasses
import importlib.metadata
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Qwen3_5ForCausalLM, Qwen3_5MoeForCausalLM

import peft
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.tuners.lora.layer import LoraLayer, ParamWrapper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_golden  # noqa: E402  (same directory)
from make_golden import (  # noqa: E402  (same directory)
    Float64Everywhere,
    OnlyFloat64,
    check_environment,
    labels_of,
    rel_err,
    sample_loss,
    use_float64_rope,
)
from make_golden_moe import RouterRecorder, topk_gap  # noqa: E402

PINNED_PEFT = "0.21.0"
ADAPTER_STD = 0.1  # lora_A and lora_B ~ N(0, 0.1), drawn in float64, rounded to float32
MIN_TOPK_GAP = 1e-6
REPO = Path(__file__).resolve().parents[2]

# Case 1's explicit list: every Linear projection of the full-attention, GDN and MLP blocks.
DEFAULT_TARGETS = [
    "q_proj", "k_proj", "v_proj", "o_proj",
    "in_proj_qkv", "in_proj_z", "in_proj_a", "in_proj_b", "out_proj",
    "gate_proj", "up_proj", "down_proj",
]
EXPERT_PARAMETERS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


@dataclasses.dataclass
class Case:
    name: str
    base: str  # directory under tests/data/golden/
    moe: bool
    r: int
    alpha: float
    rslora: bool
    targets: list | str  # LoraConfig.target_modules, as given
    seed: int
    target_parameters: list | None = None  # LoraConfig.target_parameters, as given


CASES = [
    Case("dense_tied_default", "dense_text_tied", False, 4, 8, False, list(DEFAULT_TARGETS), 7001),
    Case("varied_rslora", "dense_text_varied", False, 3, 5, True, "all-linear", 7002),
    Case("moe_default", "moe_text_fused_tied", True, 4, 8, False, list(DEFAULT_TARGETS), 7003),
    Case("moe_experts", "moe_text_fused_tied", True, 4, 8, False, list(DEFAULT_TARGETS), 7004,
         target_parameters=list(EXPERT_PARAMETERS)),
]

# ----------------------------------------------------------------------------------------------
# base model


def load_base(case):
    base_dir = REPO / "tests" / "data" / "golden" / case.base
    cls = Qwen3_5MoeForCausalLM if case.moe else Qwen3_5ForCausalLM
    kw = {"attn_implementation": "eager"}
    if case.moe:
        kw["experts_implementation"] = "eager"  # grouped_mm has no float64 CPU kernel
    model, info = cls.from_pretrained(base_dir, dtype=torch.float64, output_loading_info=True, **kw)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    model.eval()
    # Written into adapter_config.json as base_model_name_or_path: repo-relative, not this machine's path.
    model.name_or_path = f"tests/data/golden/{case.base}"
    checkpoint = load_file(base_dir / "model.safetensors")
    params = dict(model.named_parameters())
    assert set(checkpoint) == set(params), "base checkpoint names differ from the model's"
    for n, t in checkpoint.items():
        assert torch.equal(t.to(torch.float64), params[n]), n
    samples = [json.loads(line) for line in (base_dir / "samples.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (base_dir / "expected.jsonl").read_text().splitlines()]
    return model, checkpoint, samples, expected


def linear_modules(model):
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


# ----------------------------------------------------------------------------------------------
# adapter


def saved_name(param_name):
    """PeftModel parameter name -> adapter_model.safetensors key (PEFT drops the adapter name)."""
    out = re.sub(r"\.(lora_[AB])\.default\.weight$", r".\1.weight", param_name)
    assert out != param_name, param_name
    return out


def lora_params(pm):
    """{saved name: parameter} of every trainable tensor (all must be lora_A / lora_B)."""
    out = {}
    for n, p in pm.named_parameters():
        if p.requires_grad:
            out[saved_name(n)] = p
    return out


def randomize_adapter(pm, seed):
    """Every lora_A / lora_B ~ N(0, ADAPTER_STD) (float64, seeded, in named_parameters order),
    rounded to float32 so that the F32 adapter file holds exactly the values used."""
    gen = torch.Generator().manual_seed(seed)
    for _, p in lora_params(pm).items():
        v = ADAPTER_STD * torch.randn(tuple(p.shape), generator=gen, dtype=torch.float64)
        with torch.no_grad():
            p.copy_(v.to(torch.float32).to(torch.float64))
        assert p.abs().min() > 0


def adapted(pm):
    """(module names adapted through target_modules, parameter names through target_parameters)."""
    mods, params = [], []
    for name, m in pm.base_model.model.named_modules():
        if isinstance(m, ParamWrapper):
            params.append(re.sub(r"(\.base_layer)+$", "", name) + "." + m.parameter_name)
        elif isinstance(m, LoraLayer):
            mods.append(name)
    return sorted(mods), sorted(params)


def write_adapter(pm, out_dir):
    """PEFT's own save_pretrained of an F32 copy; its README.md (a model card stub) is dropped."""
    with tempfile.TemporaryDirectory() as tmp:
        copy.deepcopy(pm).to(torch.float32).save_pretrained(tmp)
        files = sorted(os.listdir(tmp))
        assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors"], files
        (out_dir / "adapter").mkdir()
        for f in files[1:]:
            shutil.copyfile(Path(tmp) / f, out_dir / "adapter" / f)
    saved = load_file(out_dir / "adapter" / "adapter_model.safetensors")
    ours = lora_params(pm)
    assert set(saved) == set(ours), set(saved) ^ set(ours)
    for n, t in saved.items():
        assert t.dtype == torch.float32 and torch.equal(t.to(torch.float64), ours[n].detach()), n
    return saved


def check_reload(case, out_dir, pm):
    """PEFT loads the fixture onto a fresh base into bitwise the same LoRA tensors (so the nesting
    of expert ParamWrappers is reproduced from adapter_config.json alone)."""
    base, _, _, _ = load_base(case)
    loaded = PeftModel.from_pretrained(base, out_dir / "adapter")
    a = get_peft_model_state_dict(loaded)
    b = {n: p.detach() for n, p in lora_params(pm).items()}
    assert set(a) == set(b)
    for n in a:
        assert torch.equal(a[n], b[n]), n
    assert adapted(loaded) == adapted(pm)


# ----------------------------------------------------------------------------------------------
# losses and gradients


def run_pass(pm, samples, reference, moe, with_grad=True):
    """Per-sample (loss_sum, n_tokens), gradient of the sum of loss_sum w.r.t. every LoRA tensor,
    router records. reference=True: float64 everywhere, checked op by op."""
    params = lora_params(pm)
    for p in params.values():
        p.grad = None
    rec = RouterRecorder(list(pm.modules())) if moe else None
    f64, check = Float64Everywhere(), OnlyFloat64()
    results = []
    try:
        if reference:
            f64.__enter__()
            check.__enter__()
        for sample in samples:
            with torch.set_grad_enabled(with_grad):
                loss_sum, n_tokens, logits = sample_loss(pm, sample)
            if with_grad and n_tokens > 0:
                loss_sum.backward()
            if reference:
                assert logits.dtype == torch.float64 and loss_sum.dtype == torch.float64
                if n_tokens > 0 and with_grad:
                    # HF's own loss (mean over targets) through the PEFT model agrees with our sum.
                    if rec is not None:
                        rec.enabled = False
                    with torch.no_grad():
                        hf = pm(input_ids=torch.tensor([sample["input_ids"]]),
                                labels=torch.tensor([labels_of(sample)]), use_cache=False).loss
                    assert hf.dtype == torch.float64
                    assert math.isclose(hf.item() * n_tokens, loss_sum.item(), rel_tol=1e-13)
                    if rec is not None:
                        rec.enabled = True
            results.append((loss_sum.item(), n_tokens))
    finally:
        if reference:
            check.__exit__(None, None, None)
            f64.__exit__(None, None, None)
        if rec is not None:
            rec.remove()
    if reference:
        assert check.ops > 0 and sum(f64.rewrites.values()) > 0
    grads = {}
    if with_grad:
        for name, p in params.items():
            assert p.grad is not None, f"{name}: no gradient"
            grads[name] = p.grad.detach().clone()
            p.grad = None
    for n, p in pm.named_parameters():
        assert p.grad is None or not p.requires_grad, n
        # base frozen (PEFT's disable_adapter() also freezes the LoRA tensors while it is active)
        assert p.requires_grad == ("lora_" in n) or not with_grad and not p.requires_grad, n
    return results, grads, (rec.records if rec is not None else None), f64.rewrites


def directional_check(pm, samples, grads, seed, routes):
    """Finite difference of sum(loss_sum) along one random N(0, 1) direction over all LoRA tensors
    (float64 reference mode) against <grad, direction>."""
    params = lora_params(pm)
    gen = torch.Generator().manual_seed(seed + 100)
    dirs = {n: torch.randn(tuple(p.shape), generator=gen, dtype=torch.float64) for n, p in params.items()}
    saved = {n: p.detach().clone() for n, p in params.items()}

    def total_at(step):
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n] + step * dirs[n])
        res, _, rts, _ = run_pass(pm, samples, True, routes is not None, with_grad=False)
        if routes is not None:  # the step must not change any expert selection
            assert len(rts) == len(routes)
            assert all(torch.equal(a[1], b[1]) for a, b in zip(rts, routes)), "routing changed"
        return math.fsum(ls for ls, _ in res)

    # Richardson-extrapolated central differences (error O(eps^4) + round-off ~1e-16 * sum / eps).
    eps = 1e-5
    d1 = (total_at(eps) - total_at(-eps)) / (2 * eps)
    d2 = (total_at(eps / 2) - total_at(-eps / 2)) / eps
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(saved[n])
    fd = (4 * d2 - d1) / 3
    an = math.fsum(float((grads[n] * dirs[n]).sum()) for n in params)
    rel = abs(fd - an) / abs(an)
    assert rel < 1e-6, (fd, an, rel)
    return rel


# ----------------------------------------------------------------------------------------------
# merge


def expected_delta(lora, scaling, num_experts, wrapper_key):
    """Our own formula (numpy) for the merged delta of the tensor adapted by the wrapper at wrapper_key:
    nn.Linear: scaling * B @ A;  fused experts [E, out, in]: delta[e] = scaling * B[:, e::E] @ A[e*r:(e+1)*r]."""
    A = lora[wrapper_key + ".lora_A.weight"].numpy()
    B = lora[wrapper_key + ".lora_B.weight"].numpy()
    if num_experts is None:
        return scaling * (B @ A)
    E = num_experts
    r = A.shape[0] // E
    return np.stack([scaling * (B[:, e::E] @ A[e * r:(e + 1) * r]) for e in range(E)])


def merge(case, pm, base_params, adapted_mods, adapted_params):
    """PEFT's merge_and_unload() on a float64 copy; returns {checkpoint name: merged float64 tensor}
    for exactly the tensors that merging changed, after checking them against our own formula."""
    lora = {n: p.detach().clone() for n, p in lora_params(pm).items()}
    merged_model = copy.deepcopy(pm)
    with OnlyFloat64():
        merged_model = merged_model.merge_and_unload()
    merged_params = dict(merged_model.named_parameters())
    assert set(merged_params) == set(base_params), "merge_and_unload changed the parameter names"
    changed = {n: p.detach().clone() for n, p in merged_params.items()
               if not torch.equal(p.detach(), base_params[n])}
    want = {m + ".weight" for m in adapted_mods} | set(adapted_params)
    assert set(changed) == want, set(changed) ^ want
    scaling = case.alpha / (math.sqrt(case.r) if case.rslora else case.r)
    worst = {"linear": 0.0, "experts": 0.0}
    for name, w in changed.items():
        delta = (w - base_params[name]).numpy()
        module, _, pname = name.rpartition(".")
        if name in adapted_params:
            key = "base_model.model." + wrapper_path(pm, module, pname)
            mine = expected_delta(lora, scaling, base_params[name].shape[0], key)
            # the other natural reading (B's columns in contiguous per-expert blocks) is not PEFT's
            A, B = lora[key + ".lora_A.weight"].numpy(), lora[key + ".lora_B.weight"].numpy()
            E, r = base_params[name].shape[0], case.r
            contiguous = np.stack([scaling * (B[:, e * r:(e + 1) * r] @ A[e * r:(e + 1) * r]) for e in range(E)])
            assert np.abs(contiguous - delta).max() > 1e-3
            kind = "experts"
        else:
            mine = expected_delta(lora, scaling, None, "base_model.model." + module)
            kind = "linear"
        err = np.abs(mine - delta).max() / np.abs(delta).max()
        worst[kind] = max(worst[kind], err)
    assert max(worst.values()) < 1e-13, worst
    return merged_model, changed, worst


def wrapper_chain(pm, module):
    """Parameter names of the nested ParamWrappers on `module`, outermost first."""
    m = dict(pm.base_model.model.named_modules())[module]
    chain = []
    while isinstance(m, ParamWrapper):
        chain.append(m.parameter_name)
        m = m.base_layer
    return chain, m


def wrapper_path(pm, module, pname):
    """Module path of the ParamWrapper that adapts module.pname: the outermost wrapper sits at the
    module's own name, each level inwards adds ".base_layer". PEFT wraps the parameters in the order
    the module registers them, so the first registered one (gate_up_proj) ends up innermost."""
    chain, inner = wrapper_chain(pm, module)
    registered = [n for n, _ in inner.named_parameters(recurse=False) if n in chain]
    assert chain == registered[::-1], (chain, registered)
    return module + ".base_layer" * chain.index(pname)


# ----------------------------------------------------------------------------------------------
# driver


def generate_case(case, out_root):
    out_dir = out_root / case.name
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    model, checkpoint, samples, base_expected = load_base(case)
    all_linear = linear_modules(model)
    base_params = {n: p.detach().clone() for n, p in model.named_parameters()}

    config = LoraConfig(
        r=case.r,
        lora_alpha=case.alpha,
        use_rslora=case.rslora,
        target_modules=copy.deepcopy(case.targets),
        target_parameters=copy.deepcopy(case.target_parameters),
    )
    pm = get_peft_model(model, config)
    adapted_mods, adapted_params = adapted(pm)
    not_adapted = sorted(set(all_linear) - set(adapted_mods))
    # Every Linear of the attention, GDN and MLP blocks; never lm_head, the router or shared_expert_gate.
    assert all(re.fullmatch(r"lm_head|model\.layers\.\d+\.mlp\.shared_expert_gate", n) for n in not_adapted), not_adapted
    assert set(adapted_mods) <= set(all_linear)
    assert not any(re.search(r"\.mlp\.(gate|shared_expert_gate|experts)$", n) for n in adapted_mods)
    if case.target_parameters:
        n_layers = len(model.config.layer_types)
        assert adapted_params == sorted(f"model.layers.{i}.{p}" for i in range(n_layers) for p in case.target_parameters)
    else:
        assert not adapted_params
    randomize_adapter(pm, case.seed)
    saved = write_adapter(pm, out_dir)
    check_reload(case, out_dir, pm)

    # The unmodified HF + PEFT path (float32 islands), then the float64 reference.
    native, native_grads, native_routes, _ = run_pass(pm, samples, False, case.moe)
    use_float64_rope(pm.base_model.model)
    results, grads, routes, rewrites = run_pass(pm, samples, True, case.moe)

    loss_rel = max(abs(a - b) / max(abs(b), 1e-300) for (a, _), (b, _) in zip(native, results))
    grad_rel = max(rel_err(native_grads[n], g) for n, g in grads.items())
    assert loss_rel < 1e-5 and grad_rel < 1e-4, (loss_rel, grad_rel)
    gap = routed = None
    if case.moe:
        assert len(native_routes) == len(routes)
        assert all(torch.equal(a[1], b[1]) for a, b in zip(native_routes, routes)), "routing differs"
        gap, routed = topk_gap(routes)
        assert gap > MIN_TOPK_GAP, gap

    # Adapters disabled, the reference reproduces the base fixture's losses.
    with pm.disable_adapter():
        plain, _, _, _ = run_pass(pm, samples, True, case.moe, with_grad=False)
    base_rel = max(abs(a - e["loss_sum"]) / max(abs(e["loss_sum"]), 1e-300)
                   for (a, n), e in zip(plain, base_expected) if n > 0)
    assert all(n == e["n_tokens"] for (_, n), e in zip(plain, base_expected))
    assert base_rel < 1e-12, base_rel
    assert any(abs(a - b) > 1e-3 * abs(b) for (a, _), (b, _) in zip(results, plain)), "adapter has no effect"

    fd_rel = directional_check(pm, samples, grads, case.seed, routes)

    # Gradients: finite, non-zero tensors, and non-zero per expert block.
    for name, g in grads.items():
        assert g.dtype == torch.float64 and torch.isfinite(g).all() and g.abs().max() > 0, name
        assert g.shape == saved[name].shape, name
    if case.target_parameters:
        E = model.config.num_experts
        for name, g in grads.items():
            if ".mlp.experts." in name:
                blocks = ([g[e * case.r:(e + 1) * case.r] for e in range(E)] if ".lora_A." in name
                          else [g[:, e::E] for e in range(E)])
                assert all(b.abs().max() > 0 for b in blocks), f"{name}: an expert has no gradient"

    merged_model, changed, merge_err = merge(case, pm, base_params, adapted_mods, adapted_params)
    assert set(changed) <= set(checkpoint)
    # The merged float64 model gives the adapter model's losses.
    merged_res, _, _, _ = run_pass_plain(merged_model, samples)
    merged_rel = max(abs(a - b) / max(abs(b), 1e-300) for (a, n), (b, _) in zip(merged_res, results) if n > 0)
    assert merged_rel < 1e-12, merged_rel

    # Files.
    with open(out_dir / "expected.jsonl", "w") as f:
        for i, (loss_sum, n_tokens) in enumerate(results):
            f.write(json.dumps({"index": i, "loss_sum": loss_sum, "n_tokens": n_tokens}) + "\n")
    save_file({n: grads[n].to(torch.float32).contiguous() for n in sorted(grads)},
              out_dir / "grads.safetensors", metadata={"format": "pt"})
    save_file({n: changed[n].to(torch.float32).contiguous() for n in sorted(changed)},
              out_dir / "merged.safetensors", metadata={"format": "pt"})
    golden = {
        "base": case.base,
        "r": case.r,
        "alpha": case.alpha,
        "rslora": case.rslora,
        "scaling": case.alpha / (math.sqrt(case.r) if case.rslora else case.r),
        "targets": case.targets,
        "target_parameters": case.target_parameters,
        "adapted_modules": adapted_mods,
        "adapted_parameters": adapted_params,
        "adapter_seed": case.seed,
        "adapter_std": ADAPTER_STD,
        "peft_version": peft.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    (out_dir / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    for path in out_dir.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)  # safetensors writes 0600

    n_tok = sum(n for _, n in results)
    return {
        "case": case.name,
        "base": case.base,
        "adapted_modules": len(adapted_mods),
        "adapted_module_kinds": sorted({m.rpartition(".")[2] for m in adapted_mods}),
        "adapted_parameters": adapted_params,
        "not_adapted_linear": sorted({re.sub(r"layers\.\d+", "layers.*", n) for n in not_adapted}),
        "lora_tensors": len(saved),
        "lora_params": sum(t.numel() for t in saved.values()),
        "merged_tensors": len(changed),
        "loss_per_token_mean": sum(ls for ls, _ in results) / n_tok,
        "base_loss_per_token_mean": sum(e["loss_sum"] for e in base_expected) / n_tok,
        "base_fixture_max_rel_loss_diff": base_rel,
        "native_hf_max_rel_loss_diff": loss_rel,
        "native_hf_max_rel_grad_diff": grad_rel,
        "directional_fd_rel": fd_rel,
        "merged_vs_adapter_max_rel_loss_diff": merged_rel,
        "merge_delta_vs_own_formula_max_rel": merge_err,
        "min_topk_prob_gap": gap,
        "routed_token_layer_pairs": routed,
        "float32_casts_rewritten": dict(sorted(rewrites.items())),
        "bytes": sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file()),
    }


def run_pass_plain(model, samples):
    """Float64 reference losses of an unwrapped HF model (no gradients)."""
    f64, check = Float64Everywhere(), OnlyFloat64()
    out = []
    with f64, check, torch.no_grad():
        for s in samples:
            loss_sum, n_tokens, _ = sample_loss(model, s)
            out.append((loss_sum.item(), n_tokens))
    return out, None, None, None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="fixture root, e.g. tests/data/golden_lora")
    ap.add_argument("--case", action="append", help="only these cases (default: all)")
    ap.add_argument("--allow-other-versions", action="store_true")
    args = ap.parse_args()
    if os.environ.get("PYTHONHASHSEED") != "0":
        # PEFT writes target_modules (a set) into adapter_config.json in set iteration order, which
        # depends on str hashing: fix it so that two runs write the same bytes.
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable] + sys.argv)
    check_environment(args.allow_other_versions)
    if peft.__version__ != PINNED_PEFT:
        msg = f"pinned peft {PINNED_PEFT}; found {peft.__version__}"
        if not args.allow_other_versions:
            sys.exit(msg + " (pass --allow-other-versions to go on)")
        print("warning:", msg)
    make_golden.prepare_run(args.out)
    cases = [c for c in CASES if not args.case or c.name in args.case]
    summaries = [generate_case(case, args.out) for case in cases]
    for s in summaries:
        print(json.dumps(s, indent=1))
    digest = make_golden.cases_digest(args.out, [case.name for case in cases])
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
          f"safetensors {importlib.metadata.version('safetensors')}, python {sys.version.split()[0]}; "
          f"total bytes {sum(s['bytes'] for s in summaries)}; fixtures sha256 {digest}")


if __name__ == "__main__":
    main()
