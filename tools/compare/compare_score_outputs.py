"""Compares two `deltatron score` outputs (PREFIX.jsonl and PREFIX.safetensors of each build):
per-sample losses and every gradient tensor, bitwise and by relative error.

Usage: compare_score_outputs.py NEW_PREFIX OLD_PREFIX NAME
"""
import json
import sys

import numpy as np
from safetensors.numpy import load_file


def main():
    new, old, name = sys.argv[1:4]
    ln = [json.loads(l) for l in open(new + ".jsonl")]
    lo = [json.loads(l) for l in open(old + ".jsonl")]
    assert len(ln) == len(lo), "different sample counts"
    same_loss, worst_loss = 0, 0.0
    for a, b in zip(ln, lo):
        for key in ("loss_sum", "mtp_loss_sum"):
            if key not in b:
                continue
            same_loss += a[key] == b[key]
            worst_loss = max(worst_loss, abs(a[key] - b[key]) / max(abs(b[key]), 1e-30))
    n_loss = sum(("loss_sum" in b) + ("mtp_loss_sum" in b) for b in lo)
    gn, go = load_file(new + ".safetensors"), load_file(old + ".safetensors")
    assert sorted(gn) == sorted(go), "different gradient tensors"
    same_grad, worst_grad, worst_name = 0, 0.0, ""
    for k in go:
        a, b = gn[k].astype(np.float64), go[k].astype(np.float64)
        if np.array_equal(gn[k].view(np.uint32), go[k].view(np.uint32)):
            same_grad += 1
            continue
        rms = np.sqrt(np.mean((a - b) ** 2)) / max(np.sqrt(np.mean(b**2)), 1e-30)
        if rms > worst_grad:
            worst_grad, worst_name = rms, k
    print(f"{name}: losses bitwise {same_loss}/{n_loss}, worst rel {worst_loss:.2e}; "
          f"gradients bitwise {same_grad}/{len(go)}, worst rel RMS {worst_grad:.2e} {worst_name}")


if __name__ == "__main__":
    main()
