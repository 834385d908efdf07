#!/usr/bin/env python3
"""Compares two deltatron runs for tools/gpu/check_parallel.sh (standard library only).

  compare_runs.py score LABEL REF GOT LOSS_TOL GRAD_TOL
      REF.jsonl / GOT.jsonl (score outputs) and REF.safetensors / GOT.safetensors (--grad-out):
      worst per-sample loss difference (relative, floor 1) and worst gradient rel RMS.
  compare_runs.py train LABEL REF_DIR GOT_DIR TOL
      the step losses of metrics.jsonl (relative) and the last checkpoint's F32 weights (rel RMS).
  compare_runs.py curve LABEL REF_DIR GOT_DIR FIRST_ABS TAIL_REL
      a bf16 loss curve against another (tools/gpu/multi_gpu.sh): the largest |loss difference|
      over the first 20 steps (<= FIRST_ABS), and the mean of the last 10 steps' losses
      (relative difference <= TAIL_REL); the same number of steps.
Prints one line; exits 1 when a bound is exceeded. With COMPARE_JSONL=FILE, also appends the
numbers as one JSON line to FILE. tools/gpu/check_score.sh imports tensors and worst_rel_rms."""
import os
import glob
import json
import math
import struct
import sys


def tensors(path, only_f32=False):
    """The F32 tensors of a safetensors file; only_f32: any other dtype is an assertion error."""
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    out = {}
    for k, v in h.items():
        if k == "__metadata__":
            continue
        assert not only_f32 or v["dtype"] == "F32", (path, k, v["dtype"])
        if v["dtype"] != "F32":
            continue
        s, e = v["data_offsets"]
        out[k] = struct.unpack(f"<{(e - s) // 4}f", b[8 + n + s:8 + n + e])
    return out


def worst_rel_rms(ref, got):
    """The largest relative RMS difference over ref's tensors, and its tensor's name."""
    worst, name = 0.0, ""
    for k, w in ref.items():
        g = got[k]
        num = math.sqrt(sum((p - q) ** 2 for p, q in zip(g, w)) / len(w))
        den = math.sqrt(sum(q * q for q in w) / len(w))
        r = num / den if den > 0 else num
        if r > worst:
            worst, name = r, k
    return worst, name


def main():
    mode, label = sys.argv[1], sys.argv[2]
    if mode == "score":
        ref, got, ltol, gtol = sys.argv[3], sys.argv[4], float(sys.argv[5]), float(sys.argv[6])
        a = [json.loads(l) for l in open(ref + ".jsonl")]
        b = [json.loads(l) for l in open(got + ".jsonl")]
        loss = max(abs(x["loss_sum"] - y["loss_sum"]) / max(abs(x["loss_sum"]), 1.0)
                   for x, y in zip(a, b))
        grad, name = worst_rel_rms(tensors(ref + ".safetensors"), tensors(got + ".safetensors"))
        ok = len(a) == len(b) and loss <= ltol and grad <= gtol
        line = f"worst loss rel diff {loss:.2e}, worst grad rel RMS {grad:.2e} ({name})"
        rec = {"loss": loss, "grad": grad, "grad_tensor": name}
    elif mode == "curve":
        ref, got = sys.argv[3], sys.argv[4]
        first_tol, tail_tol = float(sys.argv[5]), float(sys.argv[6])
        losses = lambda d: [json.loads(l)["loss"] for l in open(d + "/metrics.jsonl")
                            if '"loss"' in l]
        la, lb = losses(ref), losses(got)
        n = min(len(la), len(lb))
        first = max([abs(p - q) for p, q in zip(la[:20], lb[:20])] or [math.inf])
        k = min(10, n)
        ta, tb = sum(la[n - k:n]) / max(k, 1), sum(lb[n - k:n]) / max(k, 1)
        tail = abs(ta - tb) / abs(ta) if k else math.inf
        ok = len(la) == len(lb) and first <= first_tol and tail <= tail_tol
        line = (f"{len(lb)} steps: max |loss diff| steps 1-{min(20, n)} {first:.2e} (bound "
                f"{first_tol:g}); mean of the last {k} {tb:.4f} vs {ta:.4f} (rel {tail:.2e}, bound "
                f"{tail_tol:g})")
        rec = {"steps": len(lb), "first_abs": first, "tail_rel": tail,
               "final_loss": lb[-1] if lb else None}
    else:
        ref, got, tol = sys.argv[3], sys.argv[4], float(sys.argv[5])
        last = lambda d: sorted(glob.glob(d + "/checkpoint-*"))[-1] + "/model.safetensors"
        losses = lambda d: [json.loads(l)["loss"] for l in open(d + "/metrics.jsonl")
                            if '"loss"' in l]
        la, lb = losses(ref), losses(got)
        loss = max(abs(p - q) / abs(p) for p, q in zip(la, lb))
        w, name = worst_rel_rms(tensors(last(ref)), tensors(last(got)))
        ok = len(la) == len(lb) and loss <= tol and w <= tol
        line = f"step losses {loss:.2e}, weights {w:.2e} ({name})"
        rec = {"loss": loss, "weights": w, "weights_tensor": name}
    print(f"   {label}: {line}" + ("" if ok else "  FAIL"))
    if os.environ.get("COMPARE_JSONL"):
        with open(os.environ["COMPARE_JSONL"], "a") as f:
            f.write(json.dumps({"label": label, "mode": mode, "ok": ok, **rec}) + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
