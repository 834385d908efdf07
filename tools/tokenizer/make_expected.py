#!/usr/bin/env python3
"""Generates the tokenizer parity fixtures of tests/test_tokenizer.cpp with HF `tokenizers`.

Writes into tests/data/tokenizer/:
  qwen3_tokenizer.tar.xz   the Qwen3 tokenizer.json (xz, smaller than gzip), extracted by CMake
  expected.jsonl           Qwen3 ids of the corpus below: plain encode (added tokens not
                           recognised: HF run on the same file with "added_tokens" emptied) and
                           HF's default encode, plus HF's NFC and decodes
  tiny_qwen35.json         small hand-specified tokenizers: the Qwen3.5 split regex (\\p{M}),
  tiny_gpt2.json           GPT-2 style ByteLevel(use_regex, add_prefix_space) with "a b" merges
  tiny_split.json          and ignore_merges, String/empty-match Split patterns; their added
                           tokens use the lstrip / rstrip / single_word / normalized flags
  expected_tiny.jsonl      ids of TINY_CORPUS for each tiny tokenizer

Usage:
  python3 -m venv /tmp/tok-venv && /tmp/tok-venv/bin/pip install tokenizers
  /tmp/tok-venv/bin/python tools/tokenizer/make_expected.py [--qwen3 PATH/tokenizer.json]
The default Qwen3 file is ../shared/data/qwen3-tokenizer/tokenizer.json (see its SOURCE.md).
"""
import argparse
import io
import json
import lzma
import os
import random
import tarfile
import unicodedata

import tokenizers
from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "data", "tokenizer")
DEFAULT_QWEN3 = os.path.join(ROOT, "..", "shared", "data", "qwen3-tokenizer", "tokenizer.json")
ARCHIVE_MEMBER = "qwen3_tokenizer.json"


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


# ---- corpus -------------------------------------------------------------------------------

PY_CODE = '''import os
from typing import Optional


class Cache:
    """LRU cache with a size limit."""

    def __init__(self, capacity: int = 128) -> None:
        self.capacity = capacity
        self._data: dict[str, bytes] = {}

    def get(self, key: str) -> Optional[bytes]:
        if key not in self._data:
            return None
        value = self._data.pop(key)
        self._data[key] = value  # move to the end
        return value


if __name__ == "__main__":
\tprint(Cache(4).get("x"))   # tab-indented on purpose
'''

CPP_CODE = '''#include <vector>
#include <cstdint>

template <typename T>
T dot(const std::vector<T>& a, const std::vector<T>& b) {
\tT acc{};
\tfor (size_t i = 0; i < a.size(); ++i) {
\t\tacc += a[i] * b[i];    // fused? no: -ffp-contract=off
\t}
\treturn acc;
}

int main(int argc, char** argv) { return argc > 1 ? 0x7fffffff : -1; }
'''

PROSE = (
    "The quick brown fox jumps over the lazy dog. It's 5:30 p.m. and we're late; "
    "they'll say we'd've made it if you'D hurried. I'M SURE THEY'RE RIGHT.\n\n"
    "In 1969, Apollo 11 landed on the Moon -- a \"giant leap\" (as Armstrong put it)."
)

# Words of several scripts for the long generated line.
POOL = [
    "the", "tokenizer", "encodes", "Hello", "WORLD", "naïve", "café", "Straße", "über",
    "中文", "分词器", "测试", "日本語", "テキスト", "ひらがな", "한국어", "텍스트",
    "مرحبا", "بالعالم", "नमस्ते", "दुनिया", "Привет", "мир", "Γειά", "σου", "שלום",
    "สวัสดี", "Tiếng", "Việt", "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "1234567", "3.14159", "$42",
    "x_i", "f(x)", "->", "==", "{}", "[0]", "#!/bin/sh", "\t", "  ", "\n", "\r\n", "...",
]


def long_line(n_chars, seed):
    rng = random.Random(seed)
    parts, size = [], 0
    while size < n_chars:
        w = rng.choice(POOL)
        if w in ("\n", "\r\n"):
            w = " "  # keep it one line
        sep = rng.choice([" ", " ", " ", ", ", ". ", ""])
        parts.append(w + sep)
        size += len(w) + len(sep)
    return "".join(parts)[:n_chars]


CORPUS = [
    ("empty", ""),
    ("single_space", " "),
    ("prose", PROSE),
    ("contractions", "it's it'S IT'S it\u017f'S we've WE'VE you'll YOU'LL I'd I'D 'tis 's 'S"),
    ("python", PY_CODE),
    ("cpp", CPP_CODE),
    ("chinese", "自然语言处理是人工智能的一个重要分支。我们今天测试分词器，包括标点符号！"),
    ("japanese", "東京は日本の首都です。カタカナとひらがな、そして漢字が混ざっています。"),
    ("korean", "안녕하세요, 세계! 한국어 텍스트를 토큰화합니다."),
    ("korean_jamo_nfd", unicodedata.normalize("NFD", "한국어 텍스트")),
    ("arabic", "مرحبا بالعالم! هذا نص عربي مع أرقام ١٢٣ و 456. مَرْحَبًا"),
    ("hebrew", "שָׁלוֹם עוֹלָם, זה טקסט בעברית."),
    ("hindi", "नमस्ते दुनिया! हिन्दी में संयुक्ताक्षर: क्षत्रिय, श्री, द्वार।"),
    ("thai", "สวัสดีครับ ภาษาไทยไม่มีช่องว่างระหว่างคำ"),
    ("russian_greek", "Привет, мир! Γειά σου Κόσμε! Ελληνικά και Русский."),
    ("vietnamese", "Tiếng Việt có nhiều dấu: ắ ằ ẳ ẵ ặ ố ồ ổ ỗ ộ."),
    ("emoji", "I ❤️ tokens 😀😃😄 👍 👍🏻 👍🏽 👍🏿 🇫🇷🇯🇵 1️⃣ #️⃣"),
    ("emoji_zwj", "👨‍👩‍👧‍👦 👩🏽‍💻 🏳️‍🌈 🧑‍🤝‍🧑 👁️‍🗨️ ❤️‍🔥"),
    ("diacritics_nfc", unicodedata.normalize("NFC", "café naïve résumé Ångström ñandú ǅ")),
    ("diacritics_nfd", unicodedata.normalize("NFD", "café naïve résumé Ångström ñandú ǅ")),
    ("stacked_marks", "e\u0301\u0302\u0323 a\u0308\u0304 Z\u0351\u0352\u0353 \u0301 start"),
    ("singletons", "\u212b \u2126 \u0340\u0341 \u1e9b\u0323 \uf900 \u2000"),
    ("digits", "3141592653589793238462643383279502884197169399375105820974944592307816406286"),
    ("numbers_mixed", "v1.2.3 0x1F 1e-9 -42 3,000,000 ½ ² ⅷ ① ١٢٣ ४५६"),
    ("whitespace_runs", "a  b   c    d\t\te\t \tf     \n    g"),
    ("newlines", "line1\nline2\n\nline4\r\nline5\r\n\r\nline7\rline8\n"),
    ("trailing_spaces", "trailing spaces   \nand tabs\t\t\nend   "),
    ("leading_newlines", "\n\n\n  indented\n"),
    ("only_newlines", "\n\n\n\n"),
    ("unicode_spaces",
     "a\u00a0b\u2000c\u2003d\u3000e\u202ff\u205fg\u1680h\u180ei\u200bj\u2028k\u2029l\u0085m"),
    # Unicode >= 10: NFC must keep HF's Unicode 9.0 view (Telugu nukta, Dives Akuru pair, new
    # marks after U+0301), the regex HF's Unicode 16 letters/digits (CJK Ext. H, Ol Onal).
    ("unicode_versions",
     "x\u0301\u0c3c y\u0301\u0d3b \U00011935\U00011930 \u1df6\u0301 a\U00031350b "
     "\U0001e5d0\U0001e5d1z 1\U0001e5f1\U0001e5f2 a\u0897b x\u180ey \u180e\u180e "
     # the contraction alternative sees whether the char before "'" is a letter/digit/space
     "\u180e's\u180e \U00031350's \U0001e5d0's \U0001e5f1's \u0897's \U00011f41's"),
    ("controls", "bell\x07 nul\x00 esc\x1b[0m del\x7f bom\ufeff zwnj\u200c zwj\u200d"),
    ("punctuation",
     "Hello!!! What?? ... --- ((nested)) [brackets] {braces} <angle> @#$%^&*_+=|\\/~`"),
    ("urls_json", 'See https://example.com/a?b=c&d=e#f or {"key": [1, 2.5, null, true]}.'),
    ("markdown", "# Title\n\n* item **bold** _it_\n\n```py\nx = 1\n```\n| a | b |\n|---|---|"),
    ("chat_plain", "<|im_start|>user\nhi<|im_end|>"),
    ("chat_full",
     "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
     "<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>\n<|endoftext|>"),
    ("specials_adjacent", "<|im_start|><|im_end|><|im_start|>  <|im_end|>x<|endoftext|>"),
    ("specials_partial", "<|im_start <|im_end| |im_start|> <|im_sta rt|> <|IM_START|>"),
    ("tool_call", "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>"),
    ("fim", "<|fim_prefix|>def f():<|fim_suffix|>    return 1<|fim_middle|>"),
    ("vision", "<|vision_start|><|image_pad|><|image_pad|><|vision_end|>describe"),
    ("special_with_spaces", "  <|im_start|>  user  <|im_end|>  "),
    ("long_line_20k", long_line(20000, seed=1234)),
    ("long_word", "a" * 20000),
    ("long_spaces", " " * 20000 + "x"),
    ("long_digits", "9876543210" * 500),
    ("long_newlines", "\n" * 3000 + "end"),
    ("long_mixed_ws", " \t\n\r" * 1000),
]

# Ill-formed UTF-8: the engine replaces it like Python's bytes.decode(errors="replace").
INVALID_UTF8 = [
    ("invalid_lone_continuation", b"ab\x80cd"),
    ("invalid_truncated", b"caf\xc3"),
    ("invalid_overlong", b"\xc0\xafx\xe0\x80\xaf"),
    ("invalid_surrogate", b"\xed\xa0\x80 z"),
    ("invalid_above_max", b"\xf4\x90\x80\x80\xf5!"),
    ("invalid_truncated_4", b"\xf0\x9f\x98 \xf0\x9f hi"),
]


# ---- tiny tokenizers ------------------------------------------------------------------------

def byte_level_map():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BL = byte_level_map()


def bl(s):
    return "".join(BL[b] for b in s.encode("utf-8"))


QWEN35_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Merges as (left, right) in plain text; each creates the token left+right.
TINY_MERGES = [
    ("t", "h"), ("th", "e"), (" ", "the"), ("i", "n"), (" ", "t"), ("e", "r"), ("a", "n"),
    ("o", "r"), ("w", "or"), ("wor", "d"), (" ", "word"), ("c", "a"), ("ca", "f"),
    ("caf", "é"), ("e", "\u0301"), ("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"),
    (" ", "hello"), ("\n", "\n"), (" ", " "), ("  ", "  "), ("1", "2"), ("न", "म"),
    ("स", "\u094d"), ("स्", "त"), ("स्त", "\u0947"), ("a", "a"), ("aa", "aa"), ("<", "|"),
    ("\u2764", "\ufe0f"), ("a", "\u0308"), ("'", "s"), ("'", "S"), ("e", "n"), ("in", "g"),
]


def tiny_vocab_and_merges():
    vocab = {BL[b]: b for b in range(256)}
    merges = []

    def add(a, b):  # byte-level strings
        merges.append((a, b))
        if a + b not in vocab:
            vocab[a + b] = len(vocab)

    def ensure(data):  # builds a multi-byte char left to right, byte by byte
        s = "".join(BL[x] for x in data)
        if s not in vocab:
            ensure(data[:-1])
            add("".join(BL[x] for x in data[:-1]), BL[data[-1]])

    for a, b in TINY_MERGES:
        ensure(a.encode("utf-8"))
        ensure(b.encode("utf-8"))
        add(bl(a), bl(b))
    return vocab, merges


def added(content, id_, special, single_word=False, lstrip=False, rstrip=False, normalized=False):
    return {"id": id_, "content": content, "single_word": single_word, "lstrip": lstrip,
            "rstrip": rstrip, "normalized": normalized, "special": special}


def tiny_tokenizers():
    vocab, merges = tiny_vocab_and_merges()
    next_id = [len(vocab)]

    def new_id(content):  # HF: the vocab id when the content is a token, else the next free id
        if content in vocab:
            return vocab[content]
        next_id[0] += 1
        return next_id[0] - 1

    added_q35 = [
        added("<|endoftext|>", new_id("<|endoftext|>"), True),
        added("<|im_start|>", new_id("<|im_start|>"), True),
        added("<|im_end|>", new_id("<|im_end|>"), True),
        added("<mask>", new_id("<mask>"), True, lstrip=True),
        added("[SEP]", new_id("[SEP]"), True, rstrip=True),
        added("<tool_call>", new_id("<tool_call>"), False),
        # normalized: matched as NFC "café"
        added("cafe\u0301", new_id("cafe\u0301"), False, normalized=True),
        added("words", new_id("words"), False, single_word=True),
        # leftmost-longest: beats <|im_start|>
        added("<|im_start|>assistant", new_id("<|im_start|>assistant"), False),
        added("[NORM]", new_id("[NORM]"), True, normalized=True),
        added("the", new_id("the"), False),  # already in the vocab: keeps its id
        added("word", new_id("word"), False, single_word=True, rstrip=True),  # in the vocab too
    ]
    q35 = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added_q35,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN35_REGEX}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
             "use_regex": False}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                           "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                    "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": False,
                  "byte_fallback": False, "ignore_merges": False, "vocab": vocab,
                  "merges": [[a, b] for a, b in merges]},
    }
    # GPT-2 style: legacy "a b" merges (with a #version line), ignore_merges and a vocab entry
    # that no merge produces.
    g_vocab = dict(vocab)
    g_vocab[bl(" tokenizer")] = len(g_vocab)
    gpt2 = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added("<|endoftext|>", len(g_vocab), True)],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "ignore_merges": True, "vocab": g_vocab,
                  "merges": ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]},
    }
    # Split with a String pattern and with a regex that matches empty strings.
    split = json.loads(json.dumps(q35))
    split["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFC"}]}
    split["added_tokens"] = []
    split["pre_tokenizer"]["pretokenizers"] = [
        {"type": "Split", "pattern": {"String": "--"}, "behavior": "Isolated", "invert": False},
        {"type": "Split", "pattern": {"Regex": r"\d*|x"}, "behavior": "Isolated",
         "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
         "use_regex": False},
    ]
    return {"tiny_qwen35": q35, "tiny_gpt2": gpt2, "tiny_split": split}


TINY_CORPUS = [
    "", " ", "the the  the\tthe\nthe", "hello world, hello WORLD", "Hello there!",
    "it's IT'S it'S we'll",
    "<|endoftext|>", "a<|im_start|>b<|im_end|>c", "<|im_start|>assistant\nhi<|im_end|>",
    "<|im_start|>assistan", "<|im_start|>user", "x   <mask>y", "   <mask>", "<mask>   z",
    "a\t\n <mask> b", "[SEP]   x", "x[SEP]\n\n y", "[SEP]", "a word b", "aword b", "a words",
    "words wordsx xwords", "word  word\t\nwords", "wordword",
    "word", "word.", "_word", "éword", "word\u0301", " word\u00a0", "café", "cafe\u0301",
    "CAFÉ café", "xcafe\u0301y", "[NORM] [norm]", "<tool_call>{}</tool_call>",
    "नमस्ते", "स्ते स्त", "e\u0301\u0301x \u0301abc  \u0301", "a\u0308 \u0308\u0308 ä",
    "मैं हिन्दी", "สวัสดี", "مَرْحَبًا", "❤️ ❤️❤️ 1️⃣ #️⃣ 👍🏽", "12 123 1234", "aaaaaaaaaaa",
    "  leading", "trailing  ", "\n\n\n", "\r\n\r\n x", "a -- b --c----d", "x1x22xx333",
    " tokenizer tokenizers", "a tokenizer", "\u180e \u180e", "a\u00a0\u00a0b",
    "it\u017f'S 'ſ", "Ǆ ǅ ǆ", "\ufeffbom", "\x00\x01\x02\x1f",
    # Unicode-version deltas (see make_unicode_tables.py)
    "a\u0897b c\U00031350d 1\U0001e5f1 x\u180ey e\u0301\u0c3c",
    "\u180e's\u180e \U00031350's \U0001e5f1's \u0897's \U00011f41's \U00010d40's",
]


# ---- generation -----------------------------------------------------------------------------

def plain_tokenizer(tok_json_text):
    """The same tokenizer without added tokens: HF's encode then never matches them."""
    j = json.loads(tok_json_text)
    j["added_tokens"] = []
    return Tokenizer.from_str(json.dumps(j))


def record(full, plain, name, text):
    ids = plain.encode(text).ids
    ids_special = full.encode(text).ids
    return {
        "name": name, "text": text,
        "nfc": full.normalizer.normalize_str(text) if full.normalizer else text,
        "ids": ids, "ids_special": ids_special,
        "decoded": full.decode(ids, skip_special_tokens=False),
        "decoded_special": full.decode(ids_special, skip_special_tokens=False),
        "decoded_special_skip": full.decode(ids_special, skip_special_tokens=True),
        # Every id alone: partial UTF-8 sequences become U+FFFD exactly as HF does it.
        "decoded_each": [full.decode([i], skip_special_tokens=False) for i in ids_special[:300]],
    }


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(rows)} lines)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qwen3", default=DEFAULT_QWEN3, help="Qwen3 tokenizer.json")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)

    raw = open(args.qwen3, "rb").read()
    # Deterministic tar.xz (fixed mtime/owner) so re-running does not change the file.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(ARCHIVE_MEMBER)
        info.size, info.mtime, info.mode = len(raw), 0, 0o644
        tar.addfile(info, io.BytesIO(raw))
    archive = os.path.join(OUT, "qwen3_tokenizer.tar.xz")
    with open(archive, "wb") as f:
        f.write(lzma.compress(buf.getvalue(), preset=9 | lzma.PRESET_EXTREME))
    print(f"wrote {archive} ({os.path.getsize(archive)} bytes)")

    text = raw.decode("utf-8")
    full = Tokenizer.from_str(text)
    plain = plain_tokenizer(text)
    rows = [{"meta": {"tokenizers_version": tokenizers.__version__, "fnv1a64": fnv1a64(raw),
                      "vocab_size": 1 + max(full.get_vocab(with_added_tokens=True).values())}}]
    added_ids = {t for t in full.get_added_tokens_decoder()}
    for name, t in CORPUS:
        r = record(full, plain, name, t)
        assert not (set(r["ids"]) & added_ids), f"{name}: plain encode produced an added token"
        assert r["decoded"] == r["nfc"] == r["decoded_special"], f"{name}: decode != NFC"
        rows.append(r)
    for name, b in INVALID_UTF8:
        r = record(full, plain, name, b.decode("utf-8", errors="replace"))
        r["bytes_hex"] = b.hex()
        rows.append(r)
    write_jsonl(os.path.join(OUT, "expected.jsonl"), rows)

    rows = []
    for name, j in tiny_tokenizers().items():
        path = os.path.join(OUT, f"{name}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(j, f, ensure_ascii=False, indent=1)
            f.write("\n")
        jt = open(path, encoding="utf-8").read()
        full, plain = Tokenizer.from_str(jt), plain_tokenizer(jt)
        for t in TINY_CORPUS:
            r = record(full, plain, name, t)
            r["tokenizer"] = name
            rows.append(r)
    write_jsonl(os.path.join(OUT, "expected_tiny.jsonl"), rows)


if __name__ == "__main__":
    main()
