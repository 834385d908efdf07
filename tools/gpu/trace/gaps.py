#!/usr/bin/env python3
"""GPU idle gaps of a training run from a dt_trace CSV (cupti_trace.cpp).

Steps end at each AdamW kernel (the optimizer ends every step). For each step: span, GPU busy
time (union of kernels, copies, memsets), idle time; then, over the steps given by --steps,
idle time by what the host was doing while the GPU waited: the CUDA API calls that overlap each
gap (a blocking copy, a synchronisation, an allocation) or 'host work' (no CUDA call: the host
computing or launching late), and the largest single gaps with the kernels on either side.
  python3 gaps.py trace.csv [--steps 1:-1] [--min-us 5]
"""
import argparse, bisect, collections, csv, re


def short(n):
    n = re.sub(r"^(void )?", "", n)
    n = re.sub(r"\(.*$", "", n)
    n = re.sub(r"<.*$", "", n)
    return n[:60]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--steps", default="1:", help="python slice of the steps to analyse")
    ap.add_argument("--min-us", type=float, default=5.0)
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    dev, api = [], []
    for r in csv.DictReader(open(a.csv)):
        row = (int(r["start"]), int(r["end"]), int(r["corr"]), r["name"])
        (dev if r["kind"] in "KCS" else api).append((r["kind"],) + row)
    dev.sort(key=lambda x: x[1])
    api.sort(key=lambda x: x[1])
    launch = {x[3]: x for x in api}  # corr -> API call that enqueued it
    ends = [i for i, d in enumerate(dev) if d[0] == "K" and "adamw" in d[4].lower()]
    # one step may run several AdamW kernels back to back: keep the last of each run
    bounds = [i for j, i in enumerate(ends) if j + 1 == len(ends) or ends[j + 1] != i + 1]
    steps, lo = [], 0
    for b in bounds:
        steps.append((lo, b + 1))
        lo = b + 1
    print(f"{len(dev)} device records, {len(api)} API records, {len(steps)} steps (AdamW-ended)")
    sl = slice(*[int(x) if x else None for x in a.steps.split(":")])
    chosen = list(range(len(steps)))[sl]
    api_starts = [x[1] for x in api]
    cause_t = collections.Counter()
    cause_n = collections.Counter()
    gaps_all = []
    for si, (b, e) in enumerate(steps):
        recs = dev[b:e]
        t0 = dev[b - 1][2] if b > 0 else recs[0][1]
        t1 = max(r[2] for r in recs)
        busy, cur_s, cur_e = 0, None, None
        gaps = []
        last_end, last_name = t0, dev[b - 1][4] if b > 0 else "(start)"
        for r in recs:
            if r[1] > last_end:
                gaps.append((r[1] - last_end, last_end, r[1], last_name, r))
            if cur_e is None or r[1] > cur_e:
                if cur_e is not None:
                    busy += cur_e - cur_s
                cur_s, cur_e = r[1], r[2]
            else:
                cur_e = max(cur_e, r[2])
            if r[2] >= last_end:
                last_end, last_name = r[2], r[4]
        busy += (cur_e - cur_s) if cur_e is not None else 0
        span = t1 - t0
        kern = sum(r[2] - r[1] for r in recs if r[0] == "K")
        print(f"step {si}: span {span / 1e6:8.2f} ms, GPU busy {busy / 1e6:8.2f} ms, idle "
              f"{(span - busy) / 1e6:7.2f} ms, {len(recs)} device records, kernel sum {kern / 1e6:.2f} ms"
              + ("  <- analysed" if si in chosen else ""))
        if si not in chosen:
            continue
        for g in gaps:
            dur, gs, ge, prev, nxt = g
            if dur < a.min_us * 1e3:
                cause_t["(gaps below --min-us)"] += dur
                continue
            # API calls overlapping the gap, by overlap
            i = bisect.bisect_left(api_starts, gs - 50_000_000)
            ov = collections.Counter()
            for x in api[i:]:
                if x[1] > ge:
                    break
                o = min(ge, x[2]) - max(gs, x[1])
                if o > 0:
                    ov[x[4]] += o
            covered = sum(ov.values())
            top = ov.most_common(1)[0][0] if ov else None
            host_late = None
            if nxt[3] in launch:
                host_late = launch[nxt[3]][1] - gs
            key = top if top and covered > 0.5 * dur else "host work (no CUDA call covers the gap)"
            cause_t[key] += dur
            cause_n[key] += 1
            gaps_all.append((dur, si, short(prev), short(nxt[4]), key, host_late,
                             launch[nxt[3]][4] if nxt[3] in launch else "?"))
    n = max(1, len(chosen))
    print(f"\nidle time per analysed step by cause (ms; {n} steps):")
    for k, v in cause_t.most_common():
        print(f"  {v / 1e6 / n:8.3f}  x{cause_n[k] / n:7.1f}  {k}")
    print(f"\nlargest gaps (us): step, before -> after, cause, host launched the next after (us)")
    for g in sorted(gaps_all, reverse=True)[: a.top]:
        late = f"{g[5] / 1e3:.0f}" if g[5] is not None else "?"
        print(f"  {g[0] / 1e3:9.1f}  s{g[1]}  {g[2]} -> {g[3]}  [{g[4]}]  launch +{late} via {g[6]}")


if __name__ == "__main__":
    main()
