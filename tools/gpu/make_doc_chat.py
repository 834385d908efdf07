#!/usr/bin/env python3
"""A chat dataset of real English text for training-curve comparisons on machines without
network access: one conversation per documented function or class of the Python standard
library ("Explain X." -> its docstring), deterministic (sorted names), written as JSONL rows
{"messages": [...]} that `deltatron train` reads with data.format = "chat".

Usage: make_doc_chat.py OUT.jsonl [MIN_CHARS=120]
"""
import importlib
import inspect
import json
import pkgutil
import sys
import warnings

out = sys.argv[1]
min_chars = int(sys.argv[2]) if len(sys.argv) > 2 else 120
skip = ("test", "idlelib", "tkinter", "turtle", "antigravity", "this", "lib2to3", "ensurepip",
        "venv", "pydoc_data", "__main__", "__phello__", "_")
rows, seen = [], set()
warnings.simplefilter("ignore")
for m in sorted(pkgutil.iter_modules(), key=lambda m: m.name):
    if m.name.startswith(skip) or m.ispkg and m.name in ("encodings",):
        continue
    try:
        mod = importlib.import_module(m.name)
    except Exception:
        continue
    if getattr(mod, "__file__", None) and "site-packages" in mod.__file__:
        continue  # the standard library only: the same text on every machine
    items = []
    for name, obj in sorted(vars(mod).items()):
        if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        items.append((name, obj))
        if inspect.isclass(obj):  # and its methods
            items += [(f"{name}.{k}", v) for k, v in sorted(vars(obj).items())
                      if not k.startswith("_") and inspect.isfunction(v)]
    for name, obj in items:
        doc = inspect.getdoc(obj) or ""
        key = (getattr(obj, "__module__", "") or m.name, name)
        if len(doc) < min_chars or len(doc) > 6000 or key in seen:  # 6000: ~1500 tokens
            continue
        seen.add(key)
        rows.append({"messages": [
            {"role": "user", "content": f"Explain {key[0]}.{name} in Python."},
            {"role": "assistant", "content": doc}]})
with open(out, "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
print(f"make_doc_chat: {len(rows)} conversations, "
      f"{sum(len(r['messages'][1]['content']) for r in rows)} characters of answers -> {out}")
