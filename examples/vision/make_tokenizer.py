#!/usr/bin/env python3
"""Makes examples/vision/tokenizer.json: a small subset of the Qwen3.5 tokenizer with the real ids.

    python3 examples/vision/make_tokenizer.py QWEN35_TOKENIZER_JSON [--merges 3000]

The real tokenizer.json is 33 MB (tests/data/tokenizer/qwen35_tokenizer.tar.xz holds it; a
configured build directory has it unpacked at build*/test_data/tokenizer/qwen35_tokenizer.json).
The subset keeps its normaliser, pre-tokeniser, decoder and every added token (<|im_start|>,
<|vision_start|> = 248053, <|image_pad|> = 248056, ...) unchanged (and lists them in the model's
vocabulary as well, under the same ids), the 256 byte tokens (ids
0..255) and those of the first --merges merges whose parts it keeps, in rank order, with their
tokens' real ids. Text therefore tokenises into real Qwen3.5 ids (common
words less merged than with the full tokenizer), and a model trained on it has the real
vocabulary: its checkpoint works with the real tokenizer. Deterministic output.
"""
import argparse
import json
import os

ap = argparse.ArgumentParser()
ap.add_argument("source")
ap.add_argument("--merges", type=int, default=3000)
ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                              "tokenizer.json"))
a = ap.parse_args()
with open(a.source, encoding="utf-8") as f:
    t = json.load(f)
vocab = t["model"]["vocab"]
keep = {tok: i for tok, i in vocab.items() if i < 256}
assert len(keep) == 256, "expected ids 0..255 to be the byte tokens"
# The first --merges ranks, less those whose parts no kept merge makes (to a fixed point).
candidates = [(m.split(" ") if isinstance(m, str) else m) for m in t["model"]["merges"][:a.merges]]
kept = [False] * len(candidates)
changed = True
while changed:
    changed = False
    for r, (left, right) in enumerate(candidates):
        if not kept[r] and left in keep and right in keep:
            kept[r] = changed = True
            keep[left + right] = vocab[left + right]
merges = [t["model"]["merges"][r] for r in range(len(candidates)) if kept[r]]
# The added tokens go into the model's vocabulary too, under their ids: HF tokenizers numbers an
# added token that the model lacks after the model's last id, which would renumber them here.
for added in t["added_tokens"]:
    keep[added["content"]] = added["id"]
t["model"]["vocab"] = dict(sorted(keep.items(), key=lambda kv: kv[1]))
t["model"]["merges"] = merges
with open(a.out, "w", encoding="utf-8") as f:
    json.dump(t, f, ensure_ascii=False, separators=(",", ":"))
    f.write("\n")
print(f"wrote {a.out}: {len(keep)} tokens, {len(merges)} merges, "
      f"{len(t['added_tokens'])} added tokens")
