#!/usr/bin/env python3
"""GPU time per kernel of a training run from a dt_trace CSV (cupti_trace.cpp): the kernels'
durations summed per name over the steps given by --steps (a step ends with the last of the
optimizer's AdamW kernels) and divided by their number; cuBLASLt GEMMs (nvjet, sm90_xmma, cutlass) as one family
per name. Unlike tools/gpu/kernel_profile.sh (Nsight Compute) the kernels run as in a normal step.
  python3 kernels.py trace.csv [--steps 1:-1] [--top 40]
"""
import argparse, collections, csv, re, shutil, subprocess


def short(n):
    n = re.sub(r"^(void )?", "", n)
    n = re.sub(r"^(deltatron::)?(cuda::)?(gdn::|attn::)?(\(anonymous namespace\)::|<unnamed>::)?", "", n)
    return re.sub(r"\(.*$", "", n)[:90]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--steps", default="1:-1", help="python slice of the steps to sum")
    ap.add_argument("--top", type=int, default=40)
    a = ap.parse_args()
    kern = []
    for r in csv.DictReader(open(a.csv)):
        if r["kind"] != "K":
            continue
        kern.append((int(r["start"]), int(r["end"]), r["name"]))
    kern.sort()
    # a step ends with the last AdamW kernel of a run (the optimizer launches one per parameter
    # group, a few other kernels apart)
    opt = [i for i, k in enumerate(kern) if "adamw" in k[2].lower()]
    ends = [i for i, nxt in zip(opt, opt[1:] + [len(kern) + 1000]) if nxt - i > 50]
    steps, start = [], 0
    for e in ends:
        steps.append(kern[start:e + 1])
        start = e + 1
    lo, _, hi = a.steps.partition(":")
    sel = steps[int(lo) if lo else None:int(hi) if hi else None]
    if not sel:
        raise SystemExit(f"kernels.py: {len(steps)} steps in the trace, none selected by {a.steps}")
    names = sorted({n for st in sel for _, _, n in st})
    if shutil.which("c++filt"):  # CUPTI gives mangled names
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
        dem = dict(zip(names, out.stdout.splitlines()))
    else:
        dem = {n: n for n in names}
    tot, cnt = collections.defaultdict(float), collections.Counter()
    for st in sel:
        for s, e, n in st:
            tot[short(dem[n])] += (e - s) / 1e6 / len(sel)
            cnt[short(dem[n])] += 1
    total = sum(tot.values())
    print(f"kernel time per step: {total:.1f} ms over {len(sel)} steps")
    print(f"{'ms/step':>8} {'%':>5} {'calls':>6}  kernel")
    for k, v in sorted(tot.items(), key=lambda t: -t[1])[:a.top]:
        print(f"{v:8.3f} {100 * v / total:5.1f} {cnt[k] / len(sel):6.1f}  {k}")


if __name__ == "__main__":
    main()
