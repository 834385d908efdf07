#!/usr/bin/env python3
"""Writes tests/data/vl_data/: chat samples with images and what Hugging Face makes of them.

For each row of samples.jsonl (images from tests/data/images, paths relative to the JSONL file,
in the three input forms deltatron reads: structured parts, "<image>" tags + "images", TRL's
"images" column), transformers' Qwen3-VL processor (Qwen3VLProcessor = Qwen3.5's
processor_class, with the PIL image processor Qwen2VLImageProcessorPil and the Qwen3.5 chat
template) gives input_ids, image_grid_thw and pixel_values via apply_chat_template(tokenize=True),
and Qwen3_5Model.get_rope_index (called without weights) gives the MRoPE position_ids. HF only
reads structured parts, so the other two forms are rewritten for it the way LLaMA-Factory (each
tag becomes an image part in place) and TRL (all images before the first user text) do.

Outputs:
  preprocessor_config.json  the image processor settings (min 4096, max 65536 pixels: small grids)
  samples.jsonl             the rows deltatron reads
  expected.jsonl            per row: text (rendered, before expansion), input_ids,
                            image_grid_thw, pixel_values shape, float64 sum and FNV-1a 64 of the
                            float32 little-endian bytes, position_ids [3][L]

Usage (the golden venv: torch CPU, transformers 5.17; the tokenizer is extracted by CMake):
  /tmp/golden-venv/bin/python tools/golden/make_vl_data_fixtures.py \\
      --tokenizer build-nocuda/test_data/tokenizer/qwen35_tokenizer.json \\
      --template /path/to/trl/chat_templates/qwen3_5_think.jinja --out tests/data/vl_data
"""
import argparse
import copy
import json
import os
import types

import numpy as np
import torch
import transformers
from transformers import PreTrainedTokenizerFast
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5Model
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

PRE = {
    "size": {"shortest_edge": 4096, "longest_edge": 65536},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "Qwen3VLProcessor",
    "image_processor_type": "Qwen2VLImageProcessorFast",
}

IMG = "../images/"
ROWS = [
    # structured parts naming their files
    {"messages": [
        {"role": "user", "content": [{"type": "image", "image": IMG + "photo_97x61.jpg"},
                                     {"type": "text", "text": "What is in this picture?"}]},
        {"role": "assistant", "content": "A small photo."}]},
    # LLaMA-Factory / ms-swift: <image> tags and an "images" list, two turns
    {"messages": [
        {"role": "system", "content": "You describe images."},
        {"role": "user", "content": "Compare <image> and <image>, please."},
        {"role": "assistant", "content": "The first is larger."},
        {"role": "user", "content": "<image>\nAnd this one?"},
        {"role": "assistant", "content": "A palette image."}],
     "images": [IMG + "rgb_640x480.png", IMG + "lossy_41x27.webp", IMG + "palette_31x23.png"]},
    # TRL: an "images" column, plain string content
    {"messages": [
        {"role": "user", "content": "Describe it."},
        {"role": "assistant", "content": "Colourful noise."}],
     "images": [IMG + "rgba_23x19.png"]},
    # OpenAI image_url and HF "path" parts, images between texts
    {"messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "First "},
            {"type": "image_url", "image_url": {"url": IMG + "rgb_37x53.png"}},
            {"type": "text", "text": " then "},
            {"type": "image", "path": IMG + "progressive_51x35.jpg"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Two images."}]}]},
    # text only, in the same file
    {"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"}]},
]


def hf_messages(row, base):
    """The row as HF's processor reads it: structured parts with absolute paths."""
    msgs = copy.deepcopy(row["messages"])
    images = [os.path.join(base, p) for p in row.get("images", [])]
    has_tags = any(isinstance(m["content"], str) and "<image>" in m["content"] for m in msgs)
    if images and has_tags:  # LLaMA-Factory: each tag in order becomes an image
        k = 0
        for m in msgs:
            if not isinstance(m["content"], str) or "<image>" not in m["content"]:
                continue
            parts = []
            for i, piece in enumerate(m["content"].split("<image>")):
                if i > 0:
                    parts.append({"type": "image", "image": images[k]})
                    k += 1
                if piece:
                    parts.append({"type": "text", "text": piece})
            m["content"] = parts
        assert k == len(images)
    elif images:  # TRL: all images before the first user text
        first = next(m for m in msgs if m["role"] == "user")
        first["content"] = [{"type": "image", "image": p} for p in images] + [
            {"type": "text", "text": first["content"]}]
    for m in msgs:
        if isinstance(m["content"], list):
            for part in m["content"]:
                for key in ("image", "path"):
                    if key in part and not os.path.isabs(part[key]):
                        part[key] = os.path.join(base, part[key])
                if part.get("type") == "image_url":
                    part["image_url"]["url"] = os.path.join(base, part["image_url"]["url"])
    return msgs


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--template", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    base = os.path.abspath(a.out)

    tok = PreTrainedTokenizerFast(tokenizer_file=a.tokenizer)
    template = open(a.template).read()
    ip = Qwen2VLImageProcessorPil(**{k: v for k, v in PRE.items()
                                     if k not in ("processor_class", "image_processor_type")})
    proc = Qwen3VLProcessor(image_processor=ip, tokenizer=tok,
                            video_processor=Qwen3VLVideoProcessor(), chat_template=template)
    fake = types.SimpleNamespace(
        config=types.SimpleNamespace(vision_config=types.SimpleNamespace(spatial_merge_size=2)),
        get_vision_position_ids=lambda *args, **kw: Qwen3_5Model.get_vision_position_ids(
            None, *args, **kw))

    with open(os.path.join(a.out, "preprocessor_config.json"), "w") as f:
        json.dump(PRE, f, indent=2)
        f.write("\n")
    with open(os.path.join(a.out, "samples.jsonl"), "w") as f:
        for row in ROWS:
            f.write(json.dumps(row) + "\n")

    with open(os.path.join(a.out, "expected.jsonl"), "w") as f:
        for line, row in enumerate(ROWS, 1):
            msgs = hf_messages(row, base)
            text = proc.apply_chat_template(msgs, tokenize=False)
            out = proc.apply_chat_template(msgs, tokenize=True, return_dict=True,
                                           return_tensors="pt")
            ids = out["input_ids"]
            rec = {"line": line, "text": text, "input_ids": ids[0].tolist()}
            if "pixel_values" in out:
                grid = out["image_grid_thw"]
                pv = out["pixel_values"].numpy().astype("<f4")
                pos, _ = Qwen3_5Model.get_rope_index(
                    fake, ids, out["mm_token_type_ids"], image_grid_thw=grid)
                rec.update({
                    "image_grid_thw": grid.tolist(),
                    "pixel_values_shape": list(pv.shape),
                    "pixel_values_sum": float(pv.astype(np.float64).sum()),
                    "pixel_values_fnv1a64": fnv1a64(pv.tobytes()),
                    "position_ids": pos[:, 0, :].tolist(),
                })
            f.write(json.dumps(rec) + "\n")
            print(line, len(rec["input_ids"]), rec.get("image_grid_thw"))
    print("transformers", transformers.__version__, "torch", torch.__version__)


if __name__ == "__main__":
    main()
