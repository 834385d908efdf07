#!/usr/bin/env python3
"""Checks a training run's TensorBoard event files against its metrics.jsonl, reading the events
with the `tensorboard` package itself (pip install tensorboard; not needed by the build or CI).

    python3 tools/check_tensorboard.py OUT_DIR

OUT_DIR is a `deltatron train` out_dir: metrics.jsonl and tensorboard/events.out.tfevents.*.
Every numeric field of every metrics.jsonl record must appear as a scalar at the record's step,
tagged train/<field> (eval/<x> for eval_<x>), with the value rounded to float32; a step logged
twice (steps after a resumed checkpoint) counts with its latest value, as TensorBoard shows it.
Exits 1 on any missing, extra or different value.
"""
import argparse
import json
import math
import os
import struct
import sys

from tensorboard.backend.event_processing.event_accumulator import (SCALARS,
                                                                    EventAccumulator)


def f32(x):
    """x rounded to float32, as a Python float; None (JSON for a non-finite number) is NaN."""
    return math.nan if x is None else struct.unpack("<f", struct.pack("<f", x))[0]


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


def metrics_view(path):
    """{tag: {step: float32 value}} from metrics.jsonl, later records replacing earlier ones."""
    view = {}
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            for key, x in rec.items():
                numeric = x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))
                if key == "step" or not numeric:
                    continue
                tag = "eval/" + key[5:] if key.startswith("eval_") else "train/" + key
                view.setdefault(tag, {})[rec["step"]] = f32(x)
    return view


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    args = ap.parse_args()
    tb_dir = os.path.join(args.out_dir, "tensorboard")
    files = sorted(f for f in os.listdir(tb_dir) if "tfevents" in f)
    print(f"{tb_dir}: {len(files)} event file(s)")
    for f in files:
        print(f"  {f} ({os.path.getsize(os.path.join(tb_dir, f))} bytes)")

    acc = EventAccumulator(tb_dir, size_guidance={SCALARS: 0})  # 0: keep every value
    acc.Reload()
    got = {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}
    want = metrics_view(os.path.join(args.out_dir, "metrics.jsonl"))

    errors = 0
    for tag in sorted(set(want) | set(got)):
        events = got.get(tag, [])
        w = want.get(tag, {})
        steps = [e.step for e in events]
        problems = []
        if tag not in got:
            problems.append("missing from the event files")
        elif tag not in want:
            problems.append("not in metrics.jsonl")
        if len(set(steps)) != len(steps):
            problems.append(f"{len(steps) - len(set(steps))} step(s) appear more than once")
        if tag in got and tag in want and sorted(set(steps)) != sorted(w):
            problems.append(f"steps {sorted(set(steps) ^ set(w))[:10]} differ")
        bad = [(e.step, e.value, w[e.step]) for e in events
               if e.step in w and not same(e.value, w[e.step])]
        if bad:
            problems.append(f"{len(bad)} value(s) differ, first: step {bad[0][0]} "
                            f"event {bad[0][1]!r} vs metrics {bad[0][2]!r}")
        if problems:
            errors += 1
            print(f"FAIL {tag}: " + "; ".join(problems))
        else:
            first, last = events[0], events[-1]
            print(f"ok   {tag}: {len(events)} step(s) {first.step}..{last.step} equal "
                  f"metrics.jsonl as float32 (first {first.value:.6g}, last {last.value:.6g})")
    print("all equal" if errors == 0 else f"{errors} tag(s) differ")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
