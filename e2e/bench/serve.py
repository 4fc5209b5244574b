#!/usr/bin/env python3
"""Serving benchmark: `rbee serve` against llama.cpp's `llama-server -np 4`
(continuous batching), one after the other on the same GGUF and threads.

For each server: total completion tokens/s with 1, 2, 4 and 8 concurrent
clients through `/v1/completions` (greedy, `ignore_eos`, so every request
generates the same number of tokens), and the time to first token of turns
1-3 of a conversation with a long system prompt through streamed
`/v1/chat/completions` (each turn resends the whole conversation, as chat
clients do; a server that keeps the last turn's cache only computes the new
part). Not part of CI; run by e2e/bench/run.sh.

Usage: serve.py --model M.gguf --rbee RBEE --llama-server LLAMA_SERVER [--threads 2] [--repeat 2]
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import noamx  # beside this file

GEN_TOKENS = 64
PROMPT = ("The history of the honey bee begins long before people kept hives. Wild colonies nested in hollow trees "
          "and rock crevices, and the first beekeepers")
SYSTEM = " ".join([
    "You are the office assistant of a small architecture firm.",
    "You answer questions about the firm's projects, its drawing standards, its meeting rooms and its printers.",
    "Keep answers short and concrete, name the person responsible where you know it, and say so when you do not know.",
    "The firm has twelve people in two rooms on the third floor; the large printer is in the north room and jams with heavy paper.",
] * 8)
TURNS = ["Who should I ask about the printer?", "And if it jams with heavy paper?", "Summarise both answers in one line."]
SLOTS = 4


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body, stream=False):
    """Sends one request; returns (response JSON or None, seconds to the first streamed content, total seconds)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        sys.exit(f"{path} -> {r.status}: {r.read()[:500]!r}")
    if not stream:
        out = json.loads(r.read())
        return out, None, time.perf_counter() - start
    first, text = None, []
    for line in r:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        for c in chunk.get("choices", []):
            piece = (c.get("delta") or {}).get("content") or ""
            if piece:
                if first is None:
                    first = time.perf_counter() - start
                text.append(piece)
    conn.close()
    return "".join(text), first, time.perf_counter() - start


class Crashed(Exception):
    """The server was killed by a signal (args: its name, the log's tail)."""


class Server:
    def __init__(self, name, cmd, port, model_id, env=None):
        self.name, self.port, self.model_id = name, port, model_id
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                log = self.log.read()[-3000:].decode(errors="replace")
                if self.proc.returncode < 0:
                    raise Crashed(signal.Signals(-self.proc.returncode).name, log)
                sys.exit(f"{name} exited:\n{log}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/v1/models")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            sys.exit(f"{name} did not start")
        # Load the model and warm up before anything is timed.
        self.complete(8)

    def complete(self, tokens):
        out, _, secs = post(self.port, "/v1/completions", {"model": self.model_id, "prompt": PROMPT, "max_tokens": tokens,
                                                            "temperature": 0, "ignore_eos": True})
        return out["usage"]["completion_tokens"], secs

    def throughput(self, clients):
        """Total completion tokens/s with `clients` clients, each sending two requests in turn."""
        counts, errors = [], []

        def client():
            try:
                for _ in range(2):
                    counts.append(self.complete(GEN_TOKENS)[0])
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
        threads = [threading.Thread(target=client) for _ in range(clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        if errors:
            raise errors[0]
        assert all(c == GEN_TOKENS for c in counts), counts
        return sum(counts) / wall

    def conversation(self):
        """Time to first token of each turn of one conversation."""
        messages = [{"role": "system", "content": SYSTEM}]
        ttfts = []
        for turn in TURNS:
            messages.append({"role": "user", "content": turn})
            text, first, _ = post(self.port, "/v1/chat/completions", {"model": self.model_id, "messages": messages, "max_tokens": 24,
                                                                      "temperature": 0, "stream": True}, stream=True)
            ttfts.append(first)
            messages.append({"role": "assistant", "content": text})
        return ttfts

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--rbee", required=True)
    ap.add_argument("--llama-server", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each measurement per server; medians are reported")
    ap.add_argument("--clients", default="1,2,4,8")
    a = ap.parse_args()
    clients = [int(c) for c in a.clients.split(",")]

    data = tempfile.mkdtemp(prefix="rbee-serve-bench-")
    try:
        subprocess.run([a.rbee, "--data-dir", data, "models", "import", a.model], check=True, stdout=subprocess.DEVNULL)
        model_id = os.path.basename(a.model)[: -len(".gguf")].lower()
        ctx = 2048

        def rbee():
            port = free_port()
            env = dict(os.environ, CANDLE_NUM_THREADS=str(a.threads), RAYON_NUM_THREADS=str(a.threads),
                       RBEE_CONFIG=os.path.join(data, "none.toml"))
            return Server("rbee", [a.rbee, "--data-dir", data, "serve", "--listen", f"127.0.0.1:{port}", "--slots", str(SLOTS),
                                   "--max-context", str(ctx), "--no-mdns"], port, model_id, env)

        no_amx = False

        def llama():
            port = free_port()
            # -np 4 slots of `ctx` tokens each; continuous batching is on by default.
            cmd = [a.llama_server, "-m", a.model, "--host", "127.0.0.1", "--port", str(port), "-np", str(SLOTS),
                   "-c", str(SLOTS * ctx), "-t", str(a.threads), "-tb", str(a.threads), "--alias", model_id, "--no-webui"]
            if no_amx:
                cmd = noamx.command(cmd)
            return Server("llama-server", cmd, port, model_id)

        # llama-server as built; only if a long prompt crashes it, with its
        # AMX path refused (as bench.py does), and the output says so.
        crash_note = None
        try:
            s = llama()
            try:
                s.conversation()
            except (OSError, http.client.HTTPException):
                code = s.proc.wait(10)
                if code >= 0:
                    raise
                raise Crashed(signal.Signals(-code).name, "") from None
            finally:
                s.stop()
        except Crashed as crash:
            if not noamx.has_amx():
                sys.exit(f"llama-server crashed ({crash.args[0]}):\n{crash.args[1]}")
            crash_note, no_amx = crash.args[0], True

        results = {}
        for _ in range(a.repeat):
            for name, start in [("llama-server", llama), ("rbee", rbee)]:
                s = start()
                try:
                    r = results.setdefault(name, {"tps": {c: [] for c in clients}, "ttft": [[] for _ in TURNS]})
                    for c in clients:
                        r["tps"][c].append(s.throughput(c))
                    for i, t in enumerate(s.conversation()):
                        r["ttft"][i].append(t)
                finally:
                    s.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"serving: {cpu}, {a.threads} threads per server, {SLOTS} slots each; model {os.path.basename(a.model)}; "
          f"{GEN_TOKENS} tokens per request (greedy, ignore_eos), each client sends 2 requests; median of {a.repeat} runs")
    if crash_note:
        print(f"llama-server CRASHED as built ({crash_note} at its start-up warm-up or first long prompt); its figures are with AMX refused "
              "at run time (e2e/bench/noamx.py), everything else as built")
    print(f"{'server':<13} | " + " | ".join(f"{c} client{'s' if c > 1 else ' '} tok/s" for c in clients)
          + " | " + " | ".join(f"turn {i + 1} TTFT ms" for i in range(len(TURNS))))
    med = {n: ({c: statistics.median(v) for c, v in r["tps"].items()}, [statistics.median(t) * 1000 for t in r["ttft"]]) for n, r in results.items()}
    for name in ["llama-server", "rbee"]:
        tps, ttft = med[name]
        print(f"{name:<13} | " + " | ".join(f"{tps[c]:>16.1f}" for c in clients) + " | " + " | ".join(f"{t:>14.0f}" for t in ttft))
    (lt, lf), (rt, rf) = med["llama-server"], med["rbee"]
    print(f"{'rbee/llama':<13} | " + " | ".join(f"{rt[c] / lt[c]:>15.2f}x" for c in clients) + " | "
          + " | ".join(f"{r / l:>13.2f}x" for r, l in zip(rf, lf)))
    if 1 in clients and 4 in clients:
        print(f"4 clients over 1: rbee {rt[4] / rt[1]:.2f}x, llama-server {lt[4] / lt[1]:.2f}x")


if __name__ == "__main__":
    main()
