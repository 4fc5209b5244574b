#!/usr/bin/env python3
"""How far llama.cpp's greedy continuations agree with its own golden file
when only its settings change (batch size, threads, flash attention, KV cache
type): the yardstick for the engine test's "same greedy tokens" check.

Usage: self_agreement.py MODEL.gguf [GOLDEN.json]
Needs: what make_golden.py needs (llama-cpp-python 0.3.36, gguf, numpy).

For each setting, prints per golden prompt how many leading greedy tokens
equal the golden file's (written with n_batch=512, 2 threads, f16 KV cache).
"""
import json
import os
import sys

from llama_cpp import Llama

from make_golden import greedy

SETTINGS = {
    "as the golden file, 1 thread": dict(n_threads=1, n_batch=512),
    "prompt token by token (n_batch=1)": dict(n_threads=2, n_batch=1, n_ubatch=1),
    "n_batch=8": dict(n_threads=2, n_batch=8, n_ubatch=8),
    "flash attention": dict(n_threads=2, n_batch=512, flash_attn=True),
    "f32 KV cache": dict(n_threads=2, n_batch=512, type_k=0, type_v=0),
}


def leading_equal(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main():
    model = sys.argv[1]
    golden = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "golden-gemma3-270m-q4_k_m.json")
    g = json.load(open(golden))["greedy"]
    print(f"prompts of {[len(e['prompt_ids']) for e in g]} tokens; golden continuations of {[len(e['ids']) for e in g]}")
    for name, kw in SETTINGS.items():
        llm = Llama(model_path=model, n_ctx=2048, verbose=False, **kw)
        agree = [leading_equal(greedy(llm, e["prompt_ids"], len(e["ids"])), e["ids"]) for e in g]
        print(f"{name:34s} leading greedy tokens equal to the golden file: {agree}", flush=True)


if __name__ == "__main__":
    main()
