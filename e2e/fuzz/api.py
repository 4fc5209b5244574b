#!/usr/bin/env python3
"""Fuzzes a running node's HTTP API with malformed and hostile requests.

Not part of the test command (it takes minutes): run it by hand against a
node, e.g.

    rbee serve --listen 127.0.0.1:7899 --max-context 32 &
    python3 e2e/fuzz/api.py http://127.0.0.1:7899 --requests 10000

Every request is built from a valid one by a random mutation (wrong types,
huge or negative numbers, broken JSON, bad UTF-8 in paths and bodies, hostile
headers, truncated bodies, unknown methods) and sent over a raw socket. It
stays valid HTTP/1.1 (no control bytes in header values): what HTTP itself
forbids, hyper refuses with a bare 400 before any route sees it. It
counts answers by status and fails (exit 1) on any 5xx, any connection the
node drops without answering a complete request, any `/v1` error that is
not OpenAI's error object, or a node that stops answering `/health`. The
random seed is printed so that a failure can be replayed.
"""

import argparse
import json
import random
import socket
import sys
import time
from collections import Counter
from urllib.parse import urlparse

MODEL = "gemma-3-270m-q4_k_m"

VALID = [
    ("POST", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 2}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "Bees", "max_tokens": 2, "stream": True}),
    ("GET", "/v1/models", None),
    ("GET", f"/v1/models/{MODEL}", None),
    ("POST", "/api/conversations", {"title": "fuzz"}),
    ("GET", "/api/conversations?q=fuzz", None),
    ("POST", "/api/models/pull", {"repo": "a/b", "file": "c.gguf"}),
    ("GET", "/api/models/pulls", None),
    ("GET", "/api/swarm", None),
    ("GET", "/api/settings", None),
    ("GET", "/health", None),
    ("GET", "/metrics", None),
]

WEIRD_VALUES = [None, True, -1, 0, 2**63, -(2**63), 1e308, -1e308, "", "x" * 5000, [], {}, [1, "a", None], {"a": {"b": []}}, "\u0000", "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"), "😀" * 100, 3.5]
FIELDS = ["model", "messages", "prompt", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "stream", "n", "logprobs", "presence_penalty", "frequency_penalty", "stream_options", "min_p", "repeat_penalty", "title", "repo", "file", "revision", "role", "content"]
PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/%FF%FE", "/v1/models/../../etc/passwd", "/v1/%00", "/v1/models/" + "a" * 3000, "/v1/completions?x=%ZZ", "/api/conversations/%FF", "/api/conversations/nope/messages/abc", "/api/models/pulls/-1", "/api/models/import?filename=%00.gguf", "/nope", "//", "/v1/embeddings", "/assets/../../Cargo.toml"]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE", "FOO"]


def mutate(rng, body):
    body = json.loads(json.dumps(body)) if body is not None else {}
    for _ in range(rng.randint(1, 3)):
        k = rng.choice(FIELDS)
        op = rng.random()
        if op < 0.5:
            body[k] = rng.choice(WEIRD_VALUES)
        elif op < 0.7 and k in body:
            del body[k]
        elif op < 0.85:
            body[k] = [rng.choice(WEIRD_VALUES) for _ in range(rng.randint(0, 20))]
        else:
            body = rng.choice(WEIRD_VALUES)
            break
    # Generations stay short whatever else changed.
    if isinstance(body, dict) and ("prompt" in body or "messages" in body):
        if not isinstance(body.get("max_tokens"), int) or not (0 <= body.get("max_tokens", 0) <= 4):
            body["max_tokens"] = rng.choice([1, 2, 3])
    return body


def request(rng):
    method, path, body = rng.choice(VALID)
    headers = {"host": "127.0.0.1"}
    raw_body = b""
    r = rng.random()
    if r < 0.35:
        body = mutate(rng, body)
        raw_body = json.dumps(body).encode()
        method = method if method != "GET" else "POST"
    elif r < 0.45:
        raw_body = json.dumps(body or {}).encode()
        cut = rng.randint(0, max(0, len(raw_body) - 1))
        raw_body = raw_body[:cut] + bytes(rng.randrange(256) for _ in range(rng.randint(0, 8)))
        method = "POST"
    elif r < 0.55:
        path = rng.choice(PATHS)
        method = rng.choice(METHODS)
        raw_body = rng.choice([b"", b"{}", b"\xff\xfe", b"null", b"[]", b'{"model": 1}'])
    elif r < 0.65:
        headers["host"] = rng.choice(["evil.example", "127.0.0.1.nip.io", "", "localhost:1", "[::1]", "a" * 300])
        raw_body = json.dumps(body).encode() if body is not None else b""
    elif r < 0.75:
        headers["origin"] = rng.choice(["https://evil.example", "null", "http://127.0.0.1:1", "http://\u00e9vil.example"])
        headers["content-type"] = rng.choice(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
        raw_body = json.dumps(body).encode() if body is not None else b"a=b"
        method = "POST"
    elif r < 0.8:
        headers["authorization"] = rng.choice(["Bearer", "Bearer " + "x" * 10000, "Basic Zm9vOmJhcg==", "\u00ff"])
        raw_body = json.dumps(body).encode() if body is not None else b""
    elif r < 0.85:
        headers["content-type"] = "application/json"
        raw_body = b"[" * rng.randint(1, 100000)
        method = "POST"
    else:
        raw_body = json.dumps(body).encode() if body is not None else b""
    if method in ("GET", "HEAD") and rng.random() < 0.8:
        raw_body = b""
    return method, path, headers, raw_body


def send(addr, method, path, headers, body, timeout=120):
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(head.encode("utf-8", "surrogateescape") + body)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    return out


def parse(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        hdrs[k.strip().lower().decode()] = v.strip().decode("latin-1")
    if hdrs.get("transfer-encoding") == "chunked":
        data, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            data, rest = data + rest[:size], rest[size + 2:]
        body = data
    return status, hdrs, body


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    u = urlparse(a.url)
    addr = (u.hostname, u.port)
    print(f"fuzzing {a.url} with {a.requests} requests, seed {seed}", flush=True)
    statuses, problems = Counter(), []
    started = time.time()
    for i in range(a.requests):
        method, path, headers, body = request(rng)
        try:
            raw = send(addr, method, path, headers, body)
        except OSError as e:
            problems.append(f"#{i} {method} {path}: {e}")
            continue
        if not raw:
            problems.append(f"#{i} {method} {path}: closed without an answer")
            continue
        status, hdrs, resp = parse(raw)
        statuses[status] += 1
        if status >= 500:
            problems.append(f"#{i} {method} {path}: {status} {resp[:200]!r}")
        if status >= 400 and path.startswith("/v1") and method != "HEAD":
            try:
                err = json.loads(resp)["error"]
                assert isinstance(err["message"], str) and isinstance(err["type"], str) and "param" in err and "code" in err
            except Exception:  # noqa: BLE001
                problems.append(f"#{i} {method} {path}: {status} not OpenAI's error object: {resp[:200]!r}")
        if i % 500 == 499:
            st, _, _ = parse(send(addr, "GET", "/health", {"host": "127.0.0.1"}, b"", timeout=10))
            if st != 200:
                problems.append(f"after #{i}: /health answered {st}")
            print(f"  {i + 1} requests, {time.time() - started:.0f} s, statuses {dict(sorted(statuses.items()))}", flush=True)
    print(f"{sum(statuses.values())} answered in {time.time() - started:.0f} s: {dict(sorted(statuses.items()))}")
    print(f"{len(problems)} problems")
    for p in problems[:50]:
        print("  " + p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
