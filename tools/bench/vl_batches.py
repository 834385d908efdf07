#!/usr/bin/env python3
# Vision-language benchmark batches shared by make_lengths.py (--vision: writes a batches file) and
# peer_hf.py (VISION=...: builds the packed HF inputs of each step). The file format and the
# drawing rules are deltatron's (src/train/bench_vl.h); this Python generator draws with Python's
# RNG, so its files differ from `deltatron bench --vision --lengths-out` files for the same seed,
# but either kind drives both benchmarks.
#
# File: {"micro_batch_tokens": N, "vision": {"patch_size": 16, "spatial_merge_size": 2,
#        "temporal_patch_size": 2, "min_pixels": .., "max_pixels": ..}, "draw": {...},
#        "steps": [[{"text": [a, b], "grids": [[t, h, w]]}, ...], ...]}
# A sample is text[0] tokens, then per image <|vision_start|> + t*h*w/4 <|image_pad|> +
# <|vision_end|> and the next text length (len(text) == len(grids) + 1).
import math
import random

IMAGE_PAD, VISION_START, VISION_END = 248056, 248053, 248054  # Qwen3.5 (qwen35-vl spec 1.1)
SCREENS = [(720, 1280), (768, 1366), (900, 1440), (1080, 1920), (768, 1024), (1792, 828)]


def smart_resize(height, width, factor=32, min_pixels=65536, max_pixels=16777216):
    """HF's smart_resize (qwen35-vl spec 2.2): Python's round is half-to-even, as HF's."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of {height}x{width} above 200")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def sample_tokens(s, merge=2):
    return sum(s["text"]) + sum(t * h * w // (merge * merge) + 2 for t, h, w in s["grids"])


def sample_patches(s):
    return sum(t * h * w for t, h, w in s["grids"])


def draw_source_size(rng):
    """(height, width) in pixels of a document page (50%), receipt (30%) or screenshot (20%)."""
    kind = rng.random()
    if kind < 0.5:
        w = 800 + 900 * rng.random()
        return int(w * (1.29 + 0.13 * rng.random())), int(w)
    if kind < 0.8:
        w = 400 + 500 * rng.random()
        return int(w * (1.5 + 2.0 * rng.random())), int(w)
    return SCREENS[min(int(rng.random() * 6), 5)]


def vl_steps(steps=8, tokens=8192, median_text=256.0, sigma=0.8, min_text=32, max_text=2048,
             prompt_len=24, min_pixels=65536, max_pixels=2097152, patch=16, merge=2, seed=1):
    """`steps` lists of samples, next-fit into <= tokens each (deltatron's rules, Python's RNG)."""
    rng = random.Random(seed)
    out, cur, used = [], [], 0
    while len(out) < steps:
        for _ in range(1000):
            H, W = draw_source_size(rng)
            h, w = smart_resize(H, W, patch * merge, min_pixels, max_pixels)
            text = int(min(max_text, max(min_text, rng.lognormvariate(math.log(median_text),
                                                                        sigma))))
            prompt = min(prompt_len, text // 2)
            s = {"text": [prompt, text - prompt], "grids": [[1, h // patch, w // patch]]}
            if sample_tokens(s, merge) <= tokens:
                break
        else:
            raise ValueError(f"no sample fits {tokens} tokens")
        n = sample_tokens(s, merge)
        if used + n > tokens:
            out.append(cur)
            cur, used = [], 0
        cur.append(s)
        used += n
    return out, dict(micro_batch_tokens=tokens,
                     vision=dict(patch_size=patch, spatial_merge_size=merge,
                                 temporal_patch_size=2, min_pixels=min_pixels,
                                 max_pixels=max_pixels),
                     draw=dict(generator="tools/bench/vl_batches.py", seed=seed,
                               median_text=median_text, sigma=sigma, min_text=min_text,
                               max_text=max_text, prompt_len=prompt_len))


def check_steps(spec, merge=2):
    """Validates a batches file's steps (as deltatron's read_vl_steps); returns them."""
    mbt = int(spec["micro_batch_tokens"])
    steps = spec["steps"]
    for i, st in enumerate(steps):
        if not st:
            raise ValueError(f"step {i} is empty")
        for s in st:
            if not isinstance(s, dict) or len(s["text"]) != len(s["grids"]) + 1:
                raise ValueError(f"step {i}: a sample must be {{text: [..], grids: [..]}} with "
                                 f"len(text) == len(grids) + 1, got {str(s)[:80]}")
            for t, h, w in s["grids"]:
                if t < 1 or h <= 0 or w <= 0 or h % merge or w % merge:
                    raise ValueError(f"step {i}: grid {[t, h, w]} not a multiple of {merge}")
        n = sum(sample_tokens(s, merge) for s in st)
        if n > mbt:
            raise ValueError(f"step {i} has {n} tokens > micro_batch_tokens {mbt}")
    return steps


def mrope(ids, grids, merge=2):
    """Rows T, H, W of one sample (qwen35-vl spec 5.1; HF's get_rope_index for Qwen3.5)."""
    T, Hs, Ws, cur, t, g = [], [], [], 0, 0, 0
    while t < len(ids):
        if ids[t] != IMAGE_PAD:
            T.append(cur), Hs.append(cur), Ws.append(cur)
            cur, t = cur + 1, t + 1
            continue
        gt, gh, gw = grids[g]
        lh, lw = gh // merge, gw // merge
        for f in range(gt):
            for r in range(lh):
                for c in range(lw):
                    T.append(cur + f), Hs.append(cur + r), Ws.append(cur + c)
        t += gt * lh * lw
        cur += max(lh, lw)  # deltatron's data::mrope_positions (t = 1 for images)
        g += 1
    return T, Hs, Ws


def host_batch(step, text_vocab, seed, patch_dim=1536, merge=2):
    """One packed step on the host (torch tensors): input_ids (1, N), labels (1, N) with -100 on
    the vision tokens and on each sample's first token (HF's DataCollatorWithFlattening),
    position_ids (4, 1, N) (row 0: text positions restarting per sample, for HF's packed-sequence
    detection; rows 1-3: MRoPE), pixel_values (P, patch_dim) uniform in [-1, 1], image_grid_thw
    (I, 3), cu_seqlens (S + 1,) and the per-sample lengths."""
    import torch
    g = torch.Generator().manual_seed(seed)
    ids, labels, pos, grids, lens = [], [], [[], [], [], []], [], []
    for s in step:
        sid, slab = [], []
        for k, n in enumerate(s["text"]):
            t = torch.randint(0, text_vocab, (n,), generator=g).tolist()
            sid += t
            slab += t
            if k == len(s["grids"]):
                break
            gt, gh, gw = s["grids"][k]
            block = [VISION_START] + [IMAGE_PAD] * (gt * gh * gw // (merge * merge)) + [VISION_END]
            sid += block
            slab += [-100] * len(block)
            grids.append([gt, gh, gw])
        slab[0] = -100
        T, Hs, Ws = mrope(sid, s["grids"], merge)
        pos[0] += list(range(len(sid)))
        pos[1] += T
        pos[2] += Hs
        pos[3] += Ws
        ids += sid
        labels += slab
        lens.append(len(sid))
    P = sum(t * h * w for t, h, w in grids)
    pv = torch.rand((P, patch_dim), generator=g) * 2 - 1
    cu = torch.tensor([0] + lens, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return dict(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]),
                position_ids=torch.tensor(pos)[:, None, :], pixel_values=pv,
                image_grid_thw=torch.tensor(grids, dtype=torch.long).reshape(-1, 3),
                cu_seqlens=cu, lens=lens, patches=P,
                image_tokens=sum(t * h * w // (merge * merge) for t, h, w in grids))
