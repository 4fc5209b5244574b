"""Embeddings per second on the tiny embedding models, rbee against llama.cpp
on the same files in the same invocation (not part of CI).

rbee: the engine called directly (engine/examples/embed_bench.rs, release
build), one input per request and all N in one request. llama.cpp:
llama-cpp-python's `embed` on the files that example wrote, one input per
call and all N in one call. Same thread count for both.

Usage: python embeddings.py [--n 500] [--threads 2]
Needs: llama-cpp-python (the README's bench venv), cargo.
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

from llama_cpp import Llama


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, CANDLE_NUM_THREADS=str(args.threads))
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run(
            ["cargo", "run", "--release", "--quiet", "-p", "rbee-engine", "--example", "embed_bench", "--", d, str(args.n)],
            cwd=root, env=env, check=True, capture_output=True, text=True,
        ).stdout
        sentences = [f"the bee {i} flew to the hive, the sea and the world; hello honey {i * 7}" for i in range(args.n)]
        print(f"{'model':<12} {'rbee 1-by-1':>12} {'llama.cpp':>10} {'ratio':>6}   {'rbee batch':>11} {'llama.cpp':>10} {'ratio':>6}   (embeddings/s, {args.threads} threads)")
        for line in out.splitlines():
            r = json.loads(line)
            llm = Llama(model_path=r["file"], embedding=True, n_ctx=512, n_batch=512, n_ubatch=512, n_threads=args.threads, verbose=False)
            llm.embed("warm up")
            t = time.perf_counter()
            for s in sentences:
                llm.embed(s)
            one = args.n / (time.perf_counter() - t)
            t = time.perf_counter()
            llm.embed(sentences)
            batch = args.n / (time.perf_counter() - t)
            print(
                f"{r['model']:<12} {r['per_sec_one_by_one']:>12.0f} {one:>10.0f} {r['per_sec_one_by_one'] / one:>6.2f}   "
                f"{r['per_sec_one_request']:>11.0f} {batch:>10.0f} {r['per_sec_one_request'] / batch:>6.2f}"
            )
            del llm


if __name__ == "__main__":
    main()
