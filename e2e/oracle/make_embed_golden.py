#!/usr/bin/env python3
"""Writes e2e/oracle/golden-embeddings.json from llama.cpp (llama-cpp-python).

Usage: make_embed_golden.py DIR OUT.json
where DIR holds the tiny embedding models the engine's tests generate:
  cargo run -p rbee-engine --example tiny_embedders -- DIR
Needs: pip install llama-cpp-python

For each model and text: llama.cpp's token ids (with its special tokens) and
its pooled, L2-normalised embedding. The engine's tests compare against the
file; llama.cpp is not needed at test time.
"""
import json
import os
import sys

from llama_cpp import Llama

TEXTS = [
    "hello world",
    "The bees' honey, the hive!",
    "HELLO, Sea-Bees? 12",
    "a quick zebra jumped",
    "the sea the sea the sea the sea the sea the sea the sea the sea the sea the sea",
]


def main():
    src, out = sys.argv[1], sys.argv[2]
    golden = {}
    for name in sorted(os.listdir(src)):
        if not name.endswith(".gguf"):
            continue
        llm = Llama(model_path=os.path.join(src, name), embedding=True, n_ctx=128, n_batch=128, n_ubatch=128, verbose=False)
        cases = []
        for text in TEXTS:
            ids = llm.tokenize(text.encode(), add_bos=True, special=False)
            vec = llm.embed(text, normalize=True)
            cases.append({"text": text, "ids": ids, "embedding": [round(float(x), 6) for x in vec]})
        golden[name[: -len(".gguf")]] = cases
        del llm
    with open(out, "w") as f:
        json.dump({"source": "llama-cpp-python " + __import__("llama_cpp").__version__, "models": golden}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
