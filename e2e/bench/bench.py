#!/usr/bin/env python3
"""Engine benchmark: rbee vs llama.cpp on the same GGUF, in one invocation.

Same 128-token prompt, 128 greedy tokens, 1 and 2 threads. Reports prompt
and decode tokens/s, peak RSS, load time, and rbee/llama.cpp ratios.

Usage: e2e/bench/run.sh  (builds rbee in release, needs llama-cpp-python).
Each measurement runs in its own process so peak RSS is per engine. The
machine is shared, so each pair of runs is repeated (--repeat, alternating
the engines) and every figure is the median of its runs.
"""
import argparse
import atexit
import json
import os
import platform
import resource
import signal
import subprocess
import shutil
import statistics
import sys
import tempfile
import time

import noamx  # beside this file

PROMPT_TOKENS = 128
GEN_TOKENS = 128


def llama_worker(model, threads, prompt_ids, out):
    """Runs inside a child process: load, prefill, greedy decode; timings from llama.cpp's own counters."""
    if os.environ.get("RBEE_BENCH_NO_AMX"):
        noamx.refuse()
    import llama_cpp
    from llama_cpp import Llama
    t0 = time.perf_counter()
    llm = Llama(model_path=model, n_ctx=512, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    load = time.perf_counter() - t0
    llm.reset()
    llama_cpp.llama_perf_context_reset(llm.ctx)
    n = 0
    for _ in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        n += 1
        if n == GEN_TOKENS:
            break
    perf = llama_cpp.llama_perf_context(llm.ctx)
    json.dump({
        "load_secs": load,
        "prompt_tokens_per_sec": perf.n_p_eval / (perf.t_p_eval_ms / 1000),
        "decode_tokens_per_sec": perf.n_eval / (perf.t_eval_ms / 1000),
        "prompt_tokens": perf.n_p_eval,
        "decode_evals": perf.n_eval,
    }, open(out, "w"))


class Crashed(Exception):
    """The command was killed by a signal."""


def peak_rss_mib(cmd, env=None):
    """Runs cmd to completion; returns (stdout, stderr, peak RSS MiB) using wait4."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    if os.WIFSIGNALED(status):
        raise Crashed(signal.Signals(os.WTERMSIG(status)).name, err.decode()[-2000:])
    if status != 0:
        sys.exit(f"{' '.join(cmd[:3])} failed:\n{err.decode()}")
    return out, err, ru.ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--rbee", required=True, help="path to the release rbee binary")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=3, help="runs per engine and thread count; medians are reported")
    ap.add_argument("--worker", nargs=3, metavar=("THREADS", "PROMPT_IDS", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        llama_worker(a.model, int(a.worker[0]), json.loads(a.worker[1]), a.worker[2])
        return

    from llama_cpp import Llama
    tok = Llama(model_path=a.model, vocab_only=True, verbose=False)
    base = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
            "combined movable metal type, oil-based ink and a wooden press adapted from wine making. ") * 8
    # A text of exactly PROMPT_TOKENS tokens that reads back as itself, so both
    # engines see one prompt: cut the token list, turn it back into text, and
    # take the first cut whose text tokenizes to PROMPT_TOKENS tokens again (a
    # cut inside a word can merge differently when the text is re-read, as
    # byte-level BPE vocabularies do).
    special = len(tok.tokenize(b"", add_bos=True))  # the BOS the model adds, if any
    all_ids = tok.tokenize(base.encode(), add_bos=True)
    for cut in range(PROMPT_TOKENS, PROMPT_TOKENS + 16):
        text = tok.detokenize(all_ids[special:cut]).decode(errors="replace")
        ids = tok.tokenize(text.encode(), add_bos=True)
        if len(ids) == PROMPT_TOKENS and tok.detokenize(ids[special:]).decode(errors="replace") == text:
            break
    else:
        sys.exit("no cut of the prompt round-trips through this tokenizer")
    del tok

    # Python + llama_cpp imported, no model: subtracted to compare engines, not interpreters.
    _, _, py_base = peak_rss_mib([sys.executable, "-c", "import llama_cpp, numpy"])

    data = tempfile.mkdtemp(prefix="rbee-bench-")
    # The store holds a copy of the model: removed however the run ends.
    atexit.register(shutil.rmtree, data, ignore_errors=True)
    subprocess.run([a.rbee, "--data-dir", data, "models", "import", a.model], check=True, stdout=subprocess.DEVNULL)
    model_id = os.path.basename(a.model)[: -len(".gguf")].lower()

    def median(runs):
        return {k: statistics.median(run[k] for run in runs) for k in runs[0]}

    # llama.cpp as built; only if it crashes, again with its AMX path refused
    # (the one thing switched off, and the output says so).
    llama_env = dict(os.environ)
    crash_note = None

    def llama_run(threads, out):
        nonlocal crash_note
        cmd = [sys.executable, __file__, "--model", a.model, "--rbee", a.rbee, "--worker", str(threads), json.dumps(ids), out]
        try:
            return peak_rss_mib(cmd, env=llama_env)
        except Crashed as crash:
            if crash_note is not None or not noamx.has_amx():
                sys.exit(f"llama.cpp crashed ({crash.args[0]}):\n{crash.args[1]}")
            crash_note = crash.args[0]
            llama_env["RBEE_BENCH_NO_AMX"] = "1"
            return peak_rss_mib(cmd, env=llama_env)

    rows = []
    for threads in [int(t) for t in a.threads.split(",")]:
        l_runs, r_runs, l_rsss, r_rsss = [], [], [], []
        for _ in range(a.repeat):
            out = os.path.join(data, f"llama-{threads}.json")
            _, _, l_rss = llama_run(threads, out)
            l_runs.append(json.load(open(out)))
            l_rsss.append(l_rss)
            env = dict(os.environ, CANDLE_NUM_THREADS=str(threads), RAYON_NUM_THREADS=str(threads))
            _, err, r_rss = peak_rss_mib([a.rbee, "--data-dir", data, "generate", model_id, text, "--temperature", "0",
                                          "--max-tokens", str(GEN_TOKENS), "--ignore-eos", "--stats-json"], env=env)
            r = json.loads(err.decode().strip().splitlines()[-1])
            assert r["prompt_tokens"] == PROMPT_TOKENS, r
            assert r["completion_tokens"] == GEN_TOKENS, r
            r_runs.append({k: v for k, v in r.items() if isinstance(v, (int, float))})
            r_rsss.append(r_rss)
        l_rss = statistics.median(l_rsss)
        rows.append((threads, median(l_runs), l_rss - py_base, l_rss, median(r_runs), statistics.median(r_rsss)))

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') >> 30} GiB; "
          f"model: {os.path.basename(a.model)}; prompt {PROMPT_TOKENS} tokens, {GEN_TOKENS} greedy tokens; "
          f"median of {a.repeat} runs each")
    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    wanted = ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8"]
    print("cpu flags: " + " ".join(f for f in wanted if f in flags) + " (of " + " ".join(wanted) + ")")
    import llama_cpp
    print(f"llama.cpp: llama-cpp-python {llama_cpp.__version__}, built by pip with its defaults (native to this CPU); "
          f"its system info: {llama_cpp.llama_print_system_info().decode().strip()}")
    if crash_note:
        print(f"llama.cpp CRASHED as built ({crash_note} on the 128-token prompt; it runs once AMX is refused, so it is its AMX "
              "path); its figures below are with AMX refused at run time (e2e/bench/noamx.py), everything else as built")
    print(f"{'threads':>7} | {'engine':<9} | {'prompt tok/s':>12} | {'decode tok/s':>12} | {'peak RSS MiB':>12} | {'load s':>6}")
    print("-" * 75)
    for threads, l, l_rss_net, l_rss, r, r_rss in rows:
        print(f"{threads:>7} | {'llama.cpp':<9} | {l['prompt_tokens_per_sec']:>12.1f} | {l['decode_tokens_per_sec']:>12.1f} | {l_rss_net:>12.0f} | {l['load_secs']:>6.2f}")
        print(f"{threads:>7} | {'rbee':<9} | {r['prompt_tokens_per_sec']:>12.1f} | {r['decode_tokens_per_sec']:>12.1f} | {r_rss:>12.0f} | {r['load_secs']:>6.2f}")
        print(f"{threads:>7} | {'ratio':<9} | {r['prompt_tokens_per_sec'] / l['prompt_tokens_per_sec']:>11.2f}x | "
              f"{r['decode_tokens_per_sec'] / l['decode_tokens_per_sec']:>11.2f}x | {r_rss / l_rss_net:>11.2f}x | {r['load_secs'] / l['load_secs']:>5.2f}x")
    print(f"(llama.cpp RSS is net of the Python interpreter with llama_cpp imported: {py_base:.0f} MiB; raw: "
          + ", ".join(f"{l_rss:.0f}" for *_, l_rss, _, _ in rows) + " MiB)")


if __name__ == "__main__":
    main()
