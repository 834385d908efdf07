# Prints the expected ids/labels of tests/test_formats.cpp: HF `tokenizers` on the rendered
# ChatML string; a token is trained iff its character span overlaps a trained span.
# Usage: python make_expected.py TOKENIZER_JSON QWEN3_TOKENIZER_CONFIG_JSON
#   (the config holds the shipped chat_template; pip install tokenizers jinja2)
import json, sys

import jinja2
from tokenizers import Tokenizer

tok = Tokenizer.from_file(sys.argv[1])

CONV = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "2+2 = 4."},
    {"role": "user", "content": "And times 3?"},
    {"role": "assistant", "content": "\n12, since 4 x 3 = 12."},
]

def render(conv, mode):
    s, spans = "", []
    last_a = max(i for i, m in enumerate(conv) if m["role"] == "assistant")
    for i, m in enumerate(conv):
        s += "<|im_start|>" + m["role"] + "\n"
        body0 = len(s)
        s += m["content"] + "<|im_end|>"
        if m["role"] == "assistant" and (mode == "assistant" or (mode == "last_assistant" and i == last_a)):
            spans.append((body0, len(s)))
        s += "\n"
    if mode == "all":
        spans = [(0, len(s))]
    return s, spans

def tokens_labels(s, spans):
    enc = tok.encode(s, add_special_tokens=False)
    ids, labels = enc.ids, []
    for t, (a, b) in zip(ids, enc.offsets):
        tr = any(a < e and b > st for st, e in spans)
        labels.append(t if tr else -100)
    return ids, labels

def arr(v):
    return "{" + ", ".join(str(x) for x in v) + "}"

for mode in ["assistant", "last_assistant", "all"]:
    s, spans = render(CONV, mode)
    ids, labels = tokens_labels(s, spans)
    print(mode, "ids", arr(ids))
    print(mode, "labels", arr(labels))
print("tokens", [tok.id_to_token(i) for i in tokens_labels(*render(CONV, "assistant"))[0]])

# --- shipped Qwen3 template (think mode), prompt/completion, text ---
tmpl = json.load(open(sys.argv[2]))["chat_template"]
env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # as transformers renders it
CONV = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n2+2 = 4."},
    {"role": "user", "content": "And times 3?"},
    {"role": "assistant", "content": "<think>\nuse the tool\n</think>\n\nCalling the tool."},
    {"role": "tool", "content": "12"},
    {"role": "tool", "content": "twelve"},
    {"role": "assistant", "content": "It is 12."},
]
s = env.from_string(tmpl).render(messages=CONV, add_generation_prompt=False)
print(repr(s))
spans = []
h = "<|im_start|>assistant\n"
i = s.find(h)
while i >= 0:
    a = i + len(h); e = s.find("<|im_end|>", a) + len("<|im_end|>")
    spans.append((a, e)); i = s.find(h, e)
enc = tok.encode(s, add_special_tokens=False)
labels = [t if any(a < e and b > st for st, e in spans) else -100 for t, (a, b) in zip(enc.ids, enc.offsets)]
print("think ids", arr(enc.ids)); print("think labels", arr(labels))
print([tok.id_to_token(i) for i in enc.ids])
# prompt/completion and text
pc = tok.encode("The answer is" + " the completion.", add_special_tokens=False)
p = tok.encode("The answer is", add_special_tokens=False)
print("pc ids", arr(pc.ids), "prompt", arr(p.ids))
tx = tok.encode("Hello world! How are you today?", add_special_tokens=False)
print("text ids", arr(tx.ids))
