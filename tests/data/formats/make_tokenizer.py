#!/usr/bin/env python3
# Trains the tiny byte-level BPE fixture tests/data/formats/tokenizer.json (Qwen3 pre-tokenizer,
# 384 BPE tokens, the ChatML/think/tool_response added tokens), deterministic.
import sys
from tokenizers import Tokenizer, models, pre_tokenizers, normalizers, decoders, trainers, Regex, AddedToken

QWEN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
t = Tokenizer(models.BPE())
t.normalizer = normalizers.NFC()
t.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Split(Regex(QWEN), behavior="isolated", invert=False),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
t.decoder = decoders.ByteLevel(add_prefix_space=False, use_regex=False)
corpus = [
    "You are a helpful assistant.", "What is 2+2?", "2+2 = 4.", "And times 3?",
    "12, since 4 x 3 = 12.", "system\nuser\nassistant\n\n", "The quick brown fox jumps over the lazy dog.",
    "Hello world! Hello there, how are you today? I am fine, thanks.",
    "Continued pre-training on plain text documents is simple.",
    "The answer is the completion of the prompt.",
] * 20
trainer = trainers.BpeTrainer(vocab_size=384, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                              show_progress=False, min_frequency=2)
t.train_from_iterator(corpus, trainer)
t.add_special_tokens([AddedToken(s, normalized=False, special=True)
                      for s in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]])
t.add_tokens([AddedToken(s, normalized=False, special=False)
              for s in ["<tool_response>", "</tool_response>", "<think>", "</think>"]])
t.save(sys.argv[1], pretty=False)
print(t.get_vocab_size())
