#!/usr/bin/env python3
# Writes a benchmark batch-lengths file: {"micro_batch_tokens": N, "steps": [[len, ...], ...]}.
#
# SFT-like sample lengths: log-normal (median MEDIAN, sigma SIGMA), clipped to [MIN, MAX], packed
# next-fit into steps of at most micro_batch_tokens real tokens (a sample that does not fit opens
# the next step). The same file drives `tools/bench/peer_hf.py` (env LENGTHS) and deltatron's bench,
# so both time identical batches.
#
#   python3 tools/bench/make_lengths.py -o tools/bench/lengths_ln600_s0.8_8x8192.json
#
# --vision: a vision-language batches file instead (tools/bench/vl_batches.py: document, receipt and
# screenshot images with text of log-normal length; --median is then the text median, default 256,
# --min/--max the text clip, default 32/2048; --max-pixels, --min-pixels bound the images):
#   python3 tools/bench/make_lengths.py --vision -o tools/bench/lengths_vl_docs_8x8192.json
import argparse
import json
import math
import random


def lognormal_steps(steps=8, tokens=8192, median=600.0, sigma=0.8, lmin=64, lmax=2048, seed=1):
    """Returns `steps` lists of sample lengths; each list sums to <= tokens."""
    if lmin < 1 or lmax < lmin or lmax > tokens:
        raise ValueError(f"need 1 <= min <= max <= tokens, got {lmin}, {lmax}, {tokens}")
    rng = random.Random(seed)
    out, cur = [], []
    while len(out) < steps:
        n = int(min(lmax, max(lmin, rng.lognormvariate(math.log(median), sigma))))
        if sum(cur) + n > tokens:
            out.append(cur)
            cur = []
        cur.append(n)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=8192, help="micro_batch_tokens")
    ap.add_argument("--median", type=float, default=None, help="600 (text), 256 (--vision)")
    ap.add_argument("--sigma", type=float, default=0.8)
    ap.add_argument("--min", type=int, default=None, help="64 (text), 32 (--vision)")
    ap.add_argument("--max", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--vision", action="store_true", help="image-text samples (vl_batches.py)")
    ap.add_argument("--min-pixels", type=int, default=65536)
    ap.add_argument("--max-pixels", type=int, default=2097152)
    a = ap.parse_args()
    if a.vision:
        return write_vision(a)
    a.median = 600.0 if a.median is None else a.median
    a.min = 64 if a.min is None else a.min
    st = lognormal_steps(a.steps, a.tokens, a.median, a.sigma, a.min, a.max, a.seed)
    with open(a.out, "w") as f:
        f.write('{"micro_batch_tokens": %d, "steps": [\n' % a.tokens)
        f.write(",\n".join("  " + json.dumps(s) for s in st))
        f.write("\n]}\n")
    real = [sum(s) for s in st]
    fill = sum(real) / (a.tokens * len(st))
    print(f"{a.out}: {len(st)} steps, {sum(len(s) for s in st)} samples, real tokens per step "
          f"{min(real)}..{max(real)} (total {sum(real)}, fill {fill:.3f})")


def write_vision(a):
    import json
    from vl_batches import sample_patches, sample_tokens, vl_steps
    st, head = vl_steps(a.steps, a.tokens, 256.0 if a.median is None else a.median, a.sigma,
                        32 if a.min is None else a.min, a.max, min_pixels=a.min_pixels,
                        max_pixels=a.max_pixels, seed=a.seed)
    with open(a.out, "w") as f:
        f.write("{" + ", ".join(f'"{k}": {json.dumps(v)}' for k, v in head.items()))
        f.write(', "steps": [\n')
        f.write(",\n".join("  " + json.dumps(s) for s in st))
        f.write("\n]}\n")
    real = [sum(sample_tokens(x) for x in s) for s in st]
    img = sum(sum(sample_patches(x) // 4 for x in s) for s in st)
    grids = [x["grids"][0] for s in st for x in s]
    per = sorted(h * w // 4 for _, h, w in grids)
    print(f"{a.out}: {len(st)} steps, {len(grids)} samples, tokens per step {min(real)}..{max(real)} "
          f"(total {sum(real)}, {img / sum(real):.0%} image tokens, fill "
          f"{sum(real) / (a.tokens * len(st)):.3f}); image tokens per image {per[0]}..{per[-1]} "
          f"(median {per[len(per) // 2]})")


if __name__ == "__main__":
    main()
