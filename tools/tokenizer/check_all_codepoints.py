#!/usr/bin/env python3
"""Compares deltatron's tokenizer with HF `tokenizers` on every Unicode code point (slow; not CI).

For each code point c (surrogates excluded) it encodes a probe that puts c after letters,
digits, spaces, newlines, an apostrophe and a combining mark, and next to itself; then, for every
code point that utf8proc decomposes or gives a combining class (read through ctypes), probes of
its decomposition, reordering and recomposition. HF's ids (encode_batch, added tokens on) are
compared with deltatron's (`deltatron tokenize`, which runs Tokenizer::encode_batch: plain
text, added tokens off; the probes contain none).

Usage:
  /tmp/tok-venv/bin/python tools/tokenizer/check_all_codepoints.py BUILD_DIR/deltatron \\
      TOKENIZER_JSON [more tokenizer.json ...]
Prints the differing code points grouped in ranges; exits 1 if any.
"""
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import unicodedata

from tokenizers import Tokenizer


def code_point_probes():
    out = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        out.append((cp, f"a{c}b {c}{c}1{c} {c}\n{c}'s{c}x\u0301{c} {c}"))
    return out


def normalization_probes():
    """Probes of decomposition / reordering / composition, from utf8proc's tables."""
    try:
        lib = ctypes.CDLL("libutf8proc.so.2")
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        print("note: libutf8proc.so.2 not found, normalization probes skipped", file=sys.stderr)
        return []
    lib.utf8proc_NFD.restype = ctypes.c_void_p
    lib.utf8proc_NFD.argtypes = [ctypes.c_char_p]
    libc.free.argtypes = [ctypes.c_void_p]

    class Prop(ctypes.Structure):
        _fields_ = [("category", ctypes.c_int16), ("combining_class", ctypes.c_int16)]

    lib.utf8proc_get_property.restype = ctypes.POINTER(Prop)

    def nfd(s):
        p = lib.utf8proc_NFD(s.encode())
        r = ctypes.string_at(p).decode()
        libc.free(p)
        return r

    out = []
    for cp in range(1, 0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        d = nfd(c)
        if d != c:
            out += [(cp, d), (cp, "x" + d + "\u0301"), (cp, c + "\u0334"),
                    (cp, d[0] + "\u0345" + d[1:])]
            if len(d) == 2:
                out.append((cp, d[1] + d[0] + d[1]))
        if lib.utf8proc_get_property(cp).contents.combining_class or unicodedata.combining(c):
            out += [(cp, "x\u0345" + c + "\u0301y"), (cp, "a" + c + "\u0334\u0300"),
                    (cp, "e\u0301" + c)]
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    binary, paths = sys.argv[1], sys.argv[2:]
    probes = code_point_probes() + normalization_probes()
    texts = [t for _, t in probes]
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        jin, jout = os.path.join(tmp, "in.jsonl"), os.path.join(tmp, "out.txt")
        with open(jin, "w") as f:
            f.writelines(json.dumps(t) + "\n" for t in texts)
        for path in paths:
            hf = [" ".join(map(str, e.ids)) for e in Tokenizer.from_file(path).encode_batch(texts)]
            subprocess.run([binary, "tokenize", "--tokenizer", path, "--in", jin, "--out", jout],
                           check=True, stdout=subprocess.DEVNULL)
            with open(jout) as f:
                mine = f.read().split("\n")[:-1]
            assert len(mine) == len(hf), (len(mine), len(hf))
            bad = sorted({probes[i][0] for i in range(len(texts)) if mine[i] != hf[i]})
            print(f"{path}: {len(texts)} probes, {len(bad)} code points differ")
            ranges = []
            for cp in bad:
                if ranges and ranges[-1][1] == cp - 1:
                    ranges[-1][1] = cp
                else:
                    ranges.append([cp, cp])
            for a, b in ranges[:100]:
                print(f"  U+{a:04X}..U+{b:04X} {unicodedata.name(chr(a), '?')}")
            failed |= bool(bad)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
