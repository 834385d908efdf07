#!/usr/bin/env python3
"""Writes tests/data/chat/fixtures.jsonl: for each chat template and conversation, what Hugging Face
transformers makes of it: the rendered text (apply_chat_template), the ids (the tokenizer on that
text, as apply_chat_template(tokenize=True)), the assistant mask, or the template's error.

Templates: the original Qwen chat templates and TRL's *_training variants, from the PyPI wheel
trl==1.16.0 (trl/chat_templates/). Masks: for the *_training templates, HF's own
return_assistant_tokens_mask ({% generation %} blocks). The originals have no generation blocks;
their mask is computed the same way (HF's char_to_token over character spans) on spans marked by
patching the template's assistant branch with two marker characters (after
"<|im_start|>assistant\\n" and after its "<|im_end|>\\n", where TRL's training variants put
{% generation %}); the markers are checked against HF's generation masks on the training variants.

Run (no torch needed): pip install transformers==5.17.0 trl==1.16.0 --no-deps jinja2 tokenizers
  python3 tools/chat/make_fixtures.py --trl-dir DIR/trl/chat_templates \\
      --qwen3 build/test_data/tokenizer/qwen3_tokenizer.json \\
      --qwen35 build/test_data/tokenizer/qwen35_tokenizer.json --out tests/data/chat/fixtures.jsonl
"""
import argparse
import json
import os
import sys

from transformers import PreTrainedTokenizerFast

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conversations import conversations  # noqa: E402

S, E = "\x00S\x00", "\x00E\x00"

# (fixture name, trl file, tokenizer, template kwargs)
CONFIGS = [
    ("qwen3", "qwen3", "qwen3", {}),
    ("qwen3_training", "qwen3_training", "qwen3", {}),
    ("qwen3_5_think", "qwen3_5_think", "qwen35", {}),
    ("qwen3_5_nothink", "qwen3_5_nothink", "qwen35", {}),
    ("qwen3_5_think_training", "qwen3_5_think_training", "qwen35", {}),
    ("qwen3_6", "qwen3_6", "qwen35", {}),
    ("qwen3_6+preserve", "qwen3_6", "qwen35", {"preserve_thinking": True}),
    ("qwen3_6_training", "qwen3_6_training", "qwen35", {}),
    ("qwen3_8", "qwen3_8", "qwen35", {}),
    ("qwen3_8-preserve", "qwen3_8", "qwen35", {"preserve_thinking": False}),
    ("qwen3_8+low", "qwen3_8", "qwen35", {"reasoning_effort": "low"}),
    ("qwen3_8+medium", "qwen3_8", "qwen35", {"reasoning_effort": "medium"}),
    ("qwen3_8-thinking", "qwen3_8", "qwen35", {"enable_thinking": False}),
    ("qwen3_8_training", "qwen3_8_training", "qwen35", {}),
]


def mark(template):
    """The template with S after the assistant header and E after the assistant's <|im_end|>."""
    a = template.index('message.role == "assistant"')
    b = template.index('message.role == "tool"', a)
    body = template[a:b]
    n0 = body.count("'<|im_start|>' + message.role + '\\n")
    body = body.replace("'<|im_start|>' + message.role + '\\n<think>\\n'",
                        "'<|im_start|>' + message.role + '\\n' + '" + S + "<think>\\n'")
    body = body.replace("'<|im_start|>' + message.role + '\\n' + content",
                        "'<|im_start|>' + message.role + '\\n' + '" + S + "' + content")
    body = body.replace("'<|im_start|>' + message.role + '\\n' }}",
                        "'<|im_start|>' + message.role + '\\n' + '" + S + "' }}")
    assert body.count(S) == n0, "unexpected assistant header forms"
    k = body.rindex("{{- '<|im_end|>\\n' }}")
    body = body[:k] + "{{- '<|im_end|>\\n" + E + "' }}" + body[k + len("{{- '<|im_end|>\\n' }}"):]
    return template[:a] + body + template[b:]


def span_mask(tok, marked_text, text):
    spans, clean, i = [], [], 0
    start = None
    while i < len(marked_text):
        if marked_text.startswith(S, i):
            start = len("".join(clean))
            i += len(S)
        elif marked_text.startswith(E, i):
            spans.append((start, len("".join(clean))))
            i += len(E)
        else:
            clean.append(marked_text[i])
            i += 1
    assert "".join(clean) == text
    enc = tok(text, add_special_tokens=False)
    mask = [0] * len(enc.input_ids)
    for s, e in spans:  # transformers' apply_chat_template, return_assistant_tokens_mask
        st, en = enc.char_to_token(s), enc.char_to_token(e - 1)
        if st is None:
            break
        for k in range(st, en + 1 if en else len(mask)):
            mask[k] = 1
    return mask


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trl-dir", required=True)
    ap.add_argument("--qwen3", required=True)
    ap.add_argument("--qwen35", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    toks = {"qwen3": PreTrainedTokenizerFast(tokenizer_file=args.qwen3),
            "qwen35": PreTrainedTokenizerFast(tokenizer_file=args.qwen35)}
    convs = conversations()
    n_ok = n_err = 0
    with open(args.out, "w", encoding="utf-8") as out:
        for name, file, tname, kwargs in CONFIGS:
            template = open(os.path.join(args.trl_dir, file + ".jinja"), encoding="utf-8").read()
            marked = mark(template)
            training = "generation %}" in template
            tok = toks[tname]
            for ci, row in enumerate(convs):
                kw = dict(kwargs)
                kw.update(row.get("chat_template_kwargs", {}))
                tools = row.get("tools")
                if isinstance(tools, str):
                    tools = json.loads(tools)
                rec = {"config": name, "template": file, "tokenizer": tname, "kwargs": kwargs,
                       "conversation": ci, "row": row}
                try:
                    text = tok.apply_chat_template(row["messages"], tools=tools, tokenize=False,
                                                   chat_template=template, **kw)
                except Exception as e:  # the template refuses it
                    rec.update(ok=False, error=f"{type(e).__name__}: {e}")
                    n_err += 1
                    out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    continue
                marked_text = tok.apply_chat_template(row["messages"], tools=tools, tokenize=False,
                                                      chat_template=marked, **kw)
                ids = tok(text, add_special_tokens=False).input_ids
                mask = span_mask(tok, marked_text, text)
                if training:
                    hf = tok.apply_chat_template(row["messages"], tools=tools, tokenize=True,
                                                 return_dict=True, return_assistant_tokens_mask=True,
                                                 chat_template=template, **kw)
                    assert hf["input_ids"] == ids, (name, ci)
                    assert hf["assistant_masks"] == mask, (name, ci, "marker mask != HF mask")
                rec.update(ok=True, text=text, input_ids=ids, assistant_mask=mask,
                           mask_source="generation" if training else "markers")
                n_ok += 1
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(f"{args.out}: {n_ok} rendered, {n_err} refused, {len(CONFIGS)} templates x "
          f"{len(convs)} conversations")


if __name__ == "__main__":
    main()
