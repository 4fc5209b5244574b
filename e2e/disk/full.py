#!/usr/bin/env python3
"""A node whose disk fills up: the upload that filled it is answered 507
saying so, nothing already stored is lost, and the node keeps serving.

Usage (as root, to mount a small tmpfs): full.py RBEE_BINARY FIXTURE.gguf

The data dir is a 400 MiB tmpfs holding the fixture (241 MiB); a second,
different copy uploaded through the API cannot fit. Everything is unmounted
and removed at the end, also on failure.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

RBEE, FIXTURE = sys.argv[1], sys.argv[2]


def call(base, method, path, body=None, timeout=120):
    req = urllib.request.Request(base + path, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def main():
    work = tempfile.mkdtemp(prefix="rbee-disk-")
    data = os.path.join(work, "data")
    os.makedirs(data)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400m", "tmpfs", data], check=True)
    proc = None
    try:
        env = dict(os.environ, RBEE_CONFIG=os.path.join(work, "none.toml"), RUST_LOG="warn")
        subprocess.run([RBEE, "--data-dir", data, "models", "import", FIXTURE], env=env, check=True, capture_output=True)
        proc = subprocess.Popen([RBEE, "--data-dir", data, "serve", "--listen", "127.0.0.1:0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = proc.stdout.readline()
        m = re.search(r"http://(127\.0\.0\.1:\d+)", line)
        assert m, f"no address in {line!r}"
        base = f"http://{m.group(1)}"
        status, conv = call(base, "POST", "/api/conversations", json.dumps({"title": "kept"}).encode())
        assert status == 201, conv
        with open(FIXTURE, "rb") as f:
            copy = f.read() + b"\1" * 64
        t0 = time.time()
        status, err = call(base, "POST", "/api/models/import?filename=second.gguf", copy)
        assert status == 507, (status, err)
        assert err["error"]["code"] == "insufficient_storage" and "disk" in err["error"]["message"], err
        print(f"ok   an upload that fills the disk: 507 {err['error']['message']!r} ({time.time() - t0:.1f} s)")
        status, health = call(base, "GET", "/health")
        assert status == 200, health
        status, models = call(base, "GET", "/v1/models")
        assert [m["id"] for m in models["data"]] == ["gemma-3-270m-q4_k_m"], models
        status, convs = call(base, "GET", "/api/conversations")
        assert [c["title"] for c in convs["data"]] == ["kept"], convs
        left = [n for n in os.listdir(os.path.join(data, "models")) if n.startswith(".")]
        assert not left, f"the failed upload left {left}"
        status, answer = call(base, "POST", "/v1/completions", json.dumps({"model": "gemma-3-270m-q4_k_m", "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}).encode())
        assert status == 200, answer
        print("ok   then: the model, the conversation and the answers are all still there; the partial upload is gone")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=40)
        subprocess.run(["umount", data], check=False)
        subprocess.run(["rm", "-rf", work], check=False)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAIL {e}")
        sys.exit(1)
