#!/usr/bin/env python3
"""Writes golden files from llama.cpp (llama-cpp-python) for the engine's tests.

Usage: make_golden.py MODEL.gguf OUT.json
Needs: pip install llama-cpp-python gguf numpy

Records token ids of a multilingual text and greedy continuations of a few
prompts, with llama.cpp's five best logits at every generated step (one longer than Gemma 3's 512-token sliding window, so chunked
prefill and windowed attention are covered). Tests compare against the file;
llama.cpp is not needed at test time. Install: pip install llama-cpp-python.
"""
import hashlib
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
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


class ExactGemma3:
    """Gemma 3 in float64 on dequantized weights: slow, exact, no rounding."""

    def __init__(self, path):
        r = GGUFReader(path)
        self.w = {}
        for t in r.tensors:
            self.w[t.name] = dequantize(t.data, t.tensor_type).astype(np.float64)
        f = {k: v.contents() for k, v in r.fields.items() if k.startswith("gemma3.")}
        self.n_embd = f["gemma3.embedding_length"]
        self.n_layer = f["gemma3.block_count"]
        self.n_head = f["gemma3.attention.head_count"]
        self.n_kv = f["gemma3.attention.head_count_kv"]
        self.hd = f["gemma3.attention.key_length"]
        self.eps = f["gemma3.attention.layer_norm_rms_epsilon"]
        self.window = f["gemma3.attention.sliding_window"]
        self.base = f["gemma3.rope.freq_base"]

    def rms(self, x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos, base):
        half = self.hd // 2
        ang = np.outer(pos, 1.0 / base ** (np.arange(half) * 2 / self.hd))
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        a, b = x[..., :half], x[..., half:]
        return np.concatenate([a * c - b * s, a * s + b * c], -1)

    def logits(self, toks, positions):
        """Logits after each position in `positions` (indices into toks)."""
        w, T, hd = self.w, len(toks), self.hd
        pos = np.arange(T)
        gelu = lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
        x = w["token_embd.weight"][toks] * np.sqrt(self.n_embd)
        causal = np.triu(np.full((T, T), -np.inf), 1)
        local = causal + np.tril(np.full((T, T), -np.inf), -self.window)
        for i in range(self.n_layer):
            p = f"blk.{i}."
            is_global = (i + 1) % 6 == 0
            h = self.rms(x, w[p + "attn_norm.weight"])
            q = self.rms((h @ w[p + "attn_q.weight"].T).reshape(T, self.n_head, hd), w[p + "attn_q_norm.weight"])
            k = self.rms((h @ w[p + "attn_k.weight"].T).reshape(T, self.n_kv, hd), w[p + "attn_k_norm.weight"])
            v = (h @ w[p + "attn_v.weight"].T).reshape(T, self.n_kv, hd)
            base = self.base if is_global else 10000.0
            q, k = self.rope(q, pos, base) / np.sqrt(hd), self.rope(k, pos, base)
            out = np.zeros((T, self.n_head, hd))
            for hh in range(self.n_head):
                kv = hh // (self.n_head // self.n_kv)
                sc = q[:, hh] @ k[:, kv].T + (causal if is_global else local)
                sc = np.exp(sc - sc.max(-1, keepdims=True))
                out[:, hh] = (sc / sc.sum(-1, keepdims=True)) @ v[:, kv]
            o = out.reshape(T, -1) @ w[p + "attn_output.weight"].T
            x = x + self.rms(o, w[p + "post_attention_norm.weight"])
            h = self.rms(x, w[p + "ffn_norm.weight"])
            f = (gelu(h @ w[p + "ffn_gate.weight"].T) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
            x = x + self.rms(f, w[p + "post_ffw_norm.weight"])
        x = self.rms(x[positions], w["output_norm.weight"])
        return x @ w["token_embd.weight"].T


def greedy(llm, prompt_ids, n):
    """llama.cpp's greedy continuation of `prompt_ids`: up to `n` tokens, or to EOS."""
    llm.reset()
    ids = []
    for tok in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        if tok == llm.token_eos() or len(ids) == n:
            break
        ids.append(tok)
    return ids


def top5(llm, prompt_ids, ids):
    """llama.cpp's five best (token, logit) at each generated step of the
    last `greedy` run: where two nearly tie, implementations that round
    differently may part ways."""
    top = []
    for i in range(len(ids)):
        scores = llm.scores[len(prompt_ids) - 1 + i]
        best = sorted(range(len(scores)), key=lambda t: -scores[t])[:5]
        top.append([[int(t), round(float(scores[t]), 4)] for t in best])
    return top


def main():
    model, out = sys.argv[1], sys.argv[2]
    sha = hashlib.sha256(open(model, "rb").read()).hexdigest()
    exact = ExactGemma3(model)
    llm = Llama(model_path=model, n_ctx=2048, n_threads=2, n_batch=512, logits_all=True, verbose=False)
    tokenize = []
    for t in TEXTS:
        ids = llm.tokenize(t.encode("utf-8"), add_bos=False, special=False)
        tokenize.append({"text": t, "ids": ids})
    greedy = []
    for p in PROMPTS + [long_prompt()]:
        prompt_ids = llm.tokenize(p.encode("utf-8"), add_bos=True, special=False)
        ids = greedy(llm, prompt_ids, 32)
        text = llm.detokenize(ids).decode("utf-8", errors="replace")
        top = top5(llm, prompt_ids, ids)
        steps = [len(prompt_ids) - 1 + i for i in range(len(ids))]
        ex = exact.logits(np.array(prompt_ids + ids), steps)
        exact_top = []
        for row in ex:
            best = np.argsort(-row)[:8]
            exact_top.append([[int(t), round(float(row[t]), 4)] for t in best])
        greedy.append({"prompt": p, "prompt_ids": prompt_ids, "ids": ids, "text": text, "top": top, "exact_top": exact_top})
        print(f"{len(prompt_ids):4d} prompt tokens -> {text!r}", file=sys.stderr)
    with open(out, "w") as f:
        json.dump({"model_sha256": sha, "llama_cpp_python": __import__("llama_cpp").__version__,
                   "tokenize": tokenize, "greedy": greedy}, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
