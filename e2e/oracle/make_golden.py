#!/usr/bin/env python3
"""Writes golden files from llama.cpp (llama-cpp-python) for the engine's tests.

Usage: make_golden.py MODEL.gguf OUT.json

Records token ids of a multilingual text and greedy continuations of a few
prompts (one longer than Gemma 3's 512-token sliding window, so chunked
prefill and windowed attention are covered). Tests compare against the file;
llama.cpp is not needed at test time. Install: pip install llama-cpp-python.
"""
import hashlib
import json
import sys

from llama_cpp import Llama

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "Le café est délicieux à Paris; les élèves étudient l'économie.",
    "Größe, Übermut und Straße – ein schöner Tag in München.",
    "東京は日本の首都です。今日はいい天気ですね。",
    "北京欢迎你！人工智能正在改变世界。",
    "Привет, мир! Как дела? Всё хорошо.",
    "مرحبا بالعالم، كيف حالك؟",
    "नमस्ते दुनिया, आप कैसे हैं?",
    "Emoji: 🐝🍯🚀 and symbols ∑∫√ ≠ ≤ → €£¥",
    "def add(a, b):\n    return a + b  # two  spaces\n\n\tindent\r\nend",
    "Numbers 1234567890 3.14159 -42 1e-9 0x1F",
    "   leading spaces and trailing   ",
    "",
]

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
    "Die Hauptstadt von Deutschland ist",
    "Here is a list of fruits: apple, banana,",
]


def long_prompt():
    items = ["apple", "river", "cloud", "stone", "candle", "garden", "window", "silver"]
    lines = [f"{i}. {items[i % len(items)]} number {i}" for i in range(1, 80)]
    return "Inventory log:\n" + "\n".join(lines) + "\n80."


def main():
    model, out = sys.argv[1], sys.argv[2]
    sha = hashlib.sha256(open(model, "rb").read()).hexdigest()
    llm = Llama(model_path=model, n_ctx=2048, n_threads=2, n_batch=512, verbose=False)
    tokenize = []
    for t in TEXTS:
        ids = llm.tokenize(t.encode("utf-8"), add_bos=False, special=False)
        tokenize.append({"text": t, "ids": ids})
    greedy = []
    for p in PROMPTS + [long_prompt()]:
        prompt_ids = llm.tokenize(p.encode("utf-8"), add_bos=True, special=False)
        llm.reset()
        ids = []
        for tok in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            if tok == llm.token_eos():
                break
            ids.append(tok)
            if len(ids) == 32:
                break
        text = llm.detokenize(ids).decode("utf-8", errors="replace")
        greedy.append({"prompt": p, "prompt_ids": prompt_ids, "ids": ids, "text": text})
        print(f"{len(prompt_ids):4d} prompt tokens -> {text!r}", file=sys.stderr)
    with open(out, "w") as f:
        json.dump({"model_sha256": sha, "llama_cpp_python": __import__("llama_cpp").__version__,
                   "tokenize": tokenize, "greedy": greedy}, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
