#!/usr/bin/env python3
"""The swarm on a real (virtual) LAN: network namespaces on a bridge, one
`rbee serve` per namespace, real mDNS and TCP.

Usage (as root): lan.py RBEE_BINARY FIXTURE.gguf [--bench [copy]]

With --bench it runs the swarm benchmark instead of the tests (see
e2e/bench/swarm.sh): routed against local time to first token, how long a
new node takes to appear in every registry, how long a crashed or a
silent one takes to be marked down, and a model copied between nodes
against a plain HTTP download (only that with `copy`).

Each node lives in its own namespace with a veth into a bridge that lives in
a namespace of its own, so nothing touches the host's network. Everything is
torn down at the end, also on failure or interrupt. Prints the measured
times; exits non-zero when a check fails.
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

RBEE, FIXTURE = sys.argv[1], sys.argv[2]
MODEL = "gemma-3-270m-q4_k_m"
# The instruct model for tool calls, from the same fixture cache.
TOOL_MODEL = "qwen2.5-coder-1.5b-instruct-q4_k_m"
TOOL_FIXTURE = subprocess.run([os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fetch-fixture.sh"), "qwen-coder"],
                              capture_output=True, text=True, check=True).stdout.strip() if "--bench" not in sys.argv else None
TAG = f"rb{os.getpid() % 100000}"
BRIDGE_NS = f"{TAG}-br"
SUBNET = "10.77.{}.{}"
procs = {}
namespaces = []
workdir = tempfile.mkdtemp(prefix="rbee-lan-")
failures = []


def sh(*args, check=True):
    r = subprocess.run(args, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def ns_exec(ns, *args, check=True):
    return sh("ip", "netns", "exec", ns, *args, check=check)


def setup_bridge():
    sh("ip", "netns", "add", BRIDGE_NS)
    namespaces.append(BRIDGE_NS)
    ns_exec(BRIDGE_NS, "ip", "link", "add", "br0", "type", "bridge")
    ns_exec(BRIDGE_NS, "ip", "link", "set", "br0", "up")
    ns_exec(BRIDGE_NS, "ip", "link", "set", "lo", "up")


def add_host(i, subnet=1):
    """Namespace n<i> with 10.77.<subnet>.<i> on a veth into the bridge."""
    ns = f"{TAG}-n{i}"
    sh("ip", "netns", "add", ns)
    namespaces.append(ns)
    inside, outside = f"{TAG}v{i}", f"{TAG}h{i}"
    sh("ip", "link", "add", inside, "netns", ns, "type", "veth", "peer", "name", outside, "netns", BRIDGE_NS)
    ns_exec(BRIDGE_NS, "ip", "link", "set", outside, "master", "br0")
    ns_exec(BRIDGE_NS, "ip", "link", "set", outside, "up")
    ns_exec(ns, "ip", "addr", "add", SUBNET.format(subnet, i) + "/16", "dev", inside)
    ns_exec(ns, "ip", "link", "set", inside, "up")
    ns_exec(ns, "ip", "link", "set", "lo", "up")
    ns_exec(ns, "ip", "route", "add", "224.0.0.0/4", "dev", inside)
    return ns


def start(name, ns, key, extra=(), model=False, data=None, also=(), hub=None):
    data = data or os.path.join(workdir, name)
    os.makedirs(data, exist_ok=True)
    # RBEE_LAN_LOG: the nodes' RUST_LOG (their logs are in the work dir).
    env = dict(os.environ, RBEE_CONFIG=os.path.join(workdir, "none.toml"), RUST_LOG=os.environ.get("RBEE_LAN_LOG", "warn"))
    if hub:
        env["HF_ENDPOINT"] = hub
    if model and not os.path.exists(os.path.join(data, "models")):
        for f in (FIXTURE, *also):
            subprocess.run([RBEE, "--data-dir", data, "models", "import", f], env=env, check=True, capture_output=True)
    log = open(os.path.join(workdir, f"{name}.log"), "a")
    p = subprocess.Popen(
        ["ip", "netns", "exec", ns, RBEE, "--data-dir", data, "serve", "--listen", "127.0.0.1:7833",
         "--swarm-key", key, "--swarm-listen", "/ip4/0.0.0.0/tcp/7834", *extra],
        stdout=log, stderr=log, env=env)
    procs[name] = (p, ns, data)
    wait_for(lambda: api(ns, "/health") is not None, 10, f"{name}'s API")
    return p


def stop(name, sig=signal.SIGTERM):
    p, _, _ = procs.pop(name)
    p.send_signal(sig)
    p.wait(timeout=40)


HUB_PORT = 8088


def start_hub(name, ns, files):
    """The hub stand-in (e2e/lan/hub.py) in namespace `ns`, serving
    {"owner/repo/file": path}; returns its endpoint as seen from the LAN
    and the file it logs each request's range to."""
    log = os.path.join(workdir, f"{name}.requests")
    open(log, "w").close()
    p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "hub.py"),
                          str(HUB_PORT), log, *[f"{k}={v}" for k, v in files.items()]], stderr=subprocess.DEVNULL)
    procs[name] = (p, ns, None)
    ip = ns_exec(ns, "ip", "-4", "-o", "addr", "show", "scope", "global").split()[3].split("/")[0]
    endpoint = f"http://{ip}:{HUB_PORT}"
    wait_for(lambda: ns_exec(ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{endpoint}/x", check=False) == "404", 60, f"{name} serving")
    return endpoint, log


def hub_data_requests(log):
    """The requests for a file that the hub stand-in answered with content
    (not the one-byte probe a pull starts with)."""
    with open(log) as f:
        lines = [line.strip() for line in f]
    return [r for r in lines if r and r.split(" ")[0] != "None" and not r.endswith("bytes=0-0")]


def pull(ns, repo, file, timeout=300):
    """Pulls `repo`/`file` at the node in `ns` and waits for it to end; the pull's last state."""
    out = ns_exec(ns, "curl", "-s", "--max-time", "5", "-H", "content-type: application/json",
                  "-d", json.dumps({"repo": repo, "file": file}), "http://127.0.0.1:7833/api/models/pull")
    pid = json.loads(out)["id"]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        p = [p for p in api(ns, "/api/models/pulls")["data"] if p["id"] == pid][0]
        if p["state"] != "running":
            return p
        time.sleep(0.05)
    raise AssertionError(f"pull of {repo}/{file} still running after {timeout} s")


def api(ns, path):
    out = ns_exec(ns, "curl", "-s", "--max-time", "2", f"http://127.0.0.1:7833{path}", check=False)
    try:
        return json.loads(out)
    except ValueError:
        return None


def complete(ns, body):
    out = ns_exec(ns, "curl", "-s", "--max-time", "120", "-H", "content-type: application/json", "-d", json.dumps(body),
                  "http://127.0.0.1:7833/v1/completions", check=False)
    return json.loads(out)


def chat(ns, body):
    out = ns_exec(ns, "curl", "-s", "--max-time", "300", "-H", "content-type: application/json", "-d", json.dumps(body),
                  "http://127.0.0.1:7833/v1/chat/completions", check=False)
    return json.loads(out)


def chat_chunks(ns, body):
    """A streamed chat answer from inside `ns`: its chunks, then "[DONE]"."""
    out = ns_exec(ns, "curl", "-sN", "--max-time", "300", "-H", "content-type: application/json", "-d", json.dumps(dict(body, stream=True)),
                  "http://127.0.0.1:7833/v1/chat/completions", check=False)
    data = [line[6:] for line in out.splitlines() if line.startswith("data: ")]
    assert data and data[-1] == "[DONE]", out[-500:]
    return [json.loads(d) for d in data[:-1]]


def stream(ns, body):
    """A streamed completion from inside `ns`: a Popen whose stdout carries the SSE lines."""
    return subprocess.Popen(["ip", "netns", "exec", ns, "curl", "-sN", "--max-time", "120", "-H", "content-type: application/json",
                             "-d", json.dumps(dict(body, stream=True, stream_options={"include_usage": True})),
                             "http://127.0.0.1:7833/v1/completions"], stdout=subprocess.PIPE, text=True)


def busy_on(name, model):
    """Node ids whose slots for `model` are busy, as `name`'s registry says."""
    return [p["node_id"] for p in swarm(name)["peers"] for m in p["record"]["models_loaded"] if m["id"] == model and m["busy"] > 0]


def metric(ns, sample):
    """One sample of the /metrics of the node in `ns` (0 when absent)."""
    out = ns_exec(ns, "curl", "-s", "--max-time", "2", "http://127.0.0.1:7833/metrics", check=False)
    return next((float(line[len(sample) + 1:]) for line in out.splitlines() if line.startswith(sample + " ")), 0.0)


def slots_busy(ns, model):
    """The busy slots of `model` on the node in `ns`, from its /metrics."""
    return metric(ns, f'rbee_slots_busy{{model="{model}"}}')


def swarm(name):
    return api(procs[name][1], "/api/swarm") or {"peers": []}


def up_hosts(name):
    return sorted(p["node_id"] for p in swarm(name)["peers"] if p["up"])


def node_id(name):
    return swarm(name).get("node_id")


def wait_for(pred, timeout, what):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.01)
    raise AssertionError(f"{what}: not within {timeout} s")


def check(name, fn):
    t0 = time.monotonic()
    try:
        fn()
        print(f"ok   {name} ({time.monotonic() - t0:.1f} s)")
    except Exception as e:  # noqa: BLE001 - every failure is reported, then the rest run
        failures.append(name)
        print(f"FAIL {name}: {e}")
        for n, (_, _, data) in procs.items():
            log = os.path.join(workdir, f"{n}.log")
            if os.path.exists(log):
                print(f"--- {n} log (tail)\n" + "".join(open(log).readlines()[-15:]))


LAN_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "add", "description": "Adds two numbers", "parameters": {
        "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"], "additionalProperties": False}}},
]


def check_tool_call(name, arguments):
    """A call's arguments against its tool's schema (LAN_TOOLS)."""
    args = json.loads(arguments)
    assert isinstance(args, dict), arguments
    if name == "get_weather":
        assert isinstance(args.get("city"), str) and set(args) <= {"city", "unit"}, arguments
        assert args.get("unit", "celsius") in ("celsius", "fahrenheit"), arguments
    elif name == "add":
        assert set(args) == {"a", "b"} and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in args.values()), arguments
    else:
        raise AssertionError(f"{name} was not offered")


def key():
    return subprocess.run([RBEE, "swarm", "init"], capture_output=True, text=True, check=True).stdout.strip()


def teardown(*_):
    for name in list(procs):
        p = procs.pop(name)[0]
        p.kill()
        p.wait()
    for ns in reversed(namespaces):
        sh("ip", "netns", "del", ns, check=False)
    namespaces.clear()
    shutil.rmtree(workdir, ignore_errors=True)


def main():
    setup_bridge()
    hosts = {i: add_host(i) for i in (1, 2, 3, 4, 5)}
    k = key()

    def discovery():
        t0 = time.monotonic()
        start("a", hosts[1], k)
        start("b", hosts[2], k, ["--slots", "1", "--queue-depth", "0"])
        start("c", hosts[3], k, ["--slots", "1"], model=True, also=[TOOL_FIXTURE])
        ids = sorted(node_id(n) for n in "abc")
        for n in "abc":
            wait_for(lambda n=n: up_hosts(n) == ids, 15, f"{n} lists all three")
        print(f"     all three registries list all three {time.monotonic() - t0:.2f} s after the first start")
        # A model only C has is listed by A, with where it is.
        models = api(hosts[1], "/v1/models")["data"]
        m = [m for m in models if m["id"] == "gemma-3-270m-q4_k_m"]
        assert m and [n["node_id"] for n in m[0]["rbee"]["nodes"]] == [node_id("c")], models

    def routed_to_the_only_holder():
        r = complete(hosts[1], {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0})
        assert r["timings"]["node_id"] == node_id("c"), r
        assert r["choices"][0]["text"].startswith(" the capital of"), r
        assert r["usage"]["completion_tokens"] == 8, r
        print(f"     answered by C through A: {r['choices'][0]['text']!r}")

    def a_client_that_goes_away_stops_the_remote_answer():
        c = node_id("c")
        s = stream(hosts[1], {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 2000, "ignore_eos": True})
        wait_for(lambda: slots_busy(hosts[3], MODEL) > 0, 10, "the answer running on c")
        s.kill()
        s.wait()
        # 2000 tokens would keep C's slot busy for most of a minute.
        t = wait_for(lambda: slots_busy(hosts[3], MODEL) == 0, 5, "c's slot free once the client at A is gone")
        print(f"     the client at A went away; C's slot free {t:.2f} s later")

    def tool_calls_through_a_peer():
        # The matrix of tool_choice × streamed/whole × parallel, asked at A
        # and run by C (the only node with the model): every call names an
        # offered tool with arguments that hold to its schema, and the
        # streamed deltas assemble to the whole answer.
        c = node_id("c")
        question = "What is the weather like in Paris and in Berlin today?"
        counts = {}
        for choice in ["auto", "required", {"type": "function", "function": {"name": "add"}}, "none"]:
            for parallel in (True, False):
                body = {"model": TOOL_MODEL, "messages": [{"role": "user", "content": question}], "tools": LAN_TOOLS,
                        "tool_choice": choice, "parallel_tool_calls": parallel, "temperature": 0, "max_tokens": 100}
                whole = chat(hosts[1], body)
                assert whole.get("timings", {}).get("node_id") == c, whole
                msg = whole["choices"][0]["message"]
                calls = [(t["function"]["name"], t["function"]["arguments"]) for t in msg.get("tool_calls") or []]
                for name, arguments in calls:
                    check_tool_call(name, arguments)
                what = f"{choice} parallel={parallel}: {whole}"
                if choice == "none":
                    assert not calls and msg["content"], what
                else:
                    assert calls and whole["choices"][0]["finish_reason"] == "tool_calls", what
                if isinstance(choice, dict):
                    assert [n for n, _ in calls] == ["add"], what
                if not parallel:
                    assert len(calls) <= 1, what
                streamed, content = {}, ""
                for chunk in chat_chunks(hosts[1], body):
                    if not chunk.get("choices"):
                        continue
                    delta = chunk["choices"][0]["delta"]
                    content += delta.get("content") or ""
                    for d in delta.get("tool_calls") or []:
                        entry = streamed.setdefault(d["index"], ["", ""])
                        entry[0] += d["function"].get("name") or ""
                        entry[1] += d["function"].get("arguments") or ""
                assert [tuple(streamed[i]) for i in sorted(streamed)] == calls, (what, streamed)
                assert content == (msg["content"] or ""), (what, content)
                counts[json.dumps(choice)] = counts.get(json.dumps(choice), 0) + len(calls)
        print(f"     16 answers by C through A, calls per tool_choice: {counts}")

    def busy_holder_is_passed_over():
        # B gets the model too (one slot, no queue).
        subprocess.run([RBEE, "--data-dir", procs["b"][2], "models", "import", FIXTURE], check=True, capture_output=True,
                       env=dict(os.environ, RBEE_CONFIG=os.path.join(workdir, "none.toml")))
        b, c = node_id("b"), node_id("c")
        has = lambda n: any(p["node_id"] == n and any(m["id"] == MODEL for m in p["record"]["models_on_disk"]) for p in swarm("a")["peers"])  # noqa: E731
        wait_for(lambda: has(b), 10, "b's model in a's registry")
        long = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 2000, "ignore_eos": True}
        # Occupy C, so that a long answer asked of B runs on B itself; then free C.
        hog_c = stream(hosts[3], long)
        wait_for(lambda: c in busy_on("a", MODEL), 10, "a sees c busy")
        hog_b = stream(hosts[2], long)
        wait_for(lambda: b in busy_on("a", MODEL), 10, "a sees b busy")
        hog_c.kill()
        hog_c.wait()
        wait_for(lambda: c not in busy_on("a", MODEL), 10, "c free again")
        # B's slot is busy: requests made at B itself, and at A, run on C.
        for ns in (hosts[2], hosts[1], hosts[2]):
            r = complete(ns, {"model": MODEL, "prompt": "Bees make", "max_tokens": 4})
            assert r["timings"]["node_id"] == c, r
        hog_b.kill()
        hog_b.wait()
        wait_for(lambda: b not in busy_on("a", MODEL), 10, "b free again")

    def crash_mid_stream_continues_elsewhere():
        body = {"model": MODEL, "prompt": "The history of bees", "max_tokens": 200, "temperature": 0, "ignore_eos": True}
        s = stream(hosts[1], body)
        chunks, victim = [], None
        for line in s.stdout:
            if not line.startswith("data: "):
                continue
            data = line[6:].strip()
            chunks.append(data)
            if victim is None and len(chunks) == 8:
                # Which node runs it, from the nodes' own metrics.
                wait_for(lambda: any(slots_busy(procs[n][1], MODEL) > 0 for n in "bc"), 5, "a node busy with the answer")
                victim = [n for n in "bc" if slots_busy(procs[n][1], MODEL) > 0][0]
                procs[victim][0].kill()
                print(f"     SIGKILLed {victim} after 8 chunks")
        s.wait()
        assert victim, "the stream ended before the crash"
        assert chunks[-1] == "[DONE]", chunks[-3:]
        events = [json.loads(c) for c in chunks[:-1]]
        assert not any("error" in e for e in events), [e for e in events if "error" in e]
        finishes = [e["choices"][0]["finish_reason"] for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
        assert finishes == ["length"], finishes
        usage = events[-1]["usage"]
        assert usage["completion_tokens"] == 200, usage
        text = "".join(e["choices"][0]["text"] for e in events if e["choices"])
        print(f"     one answer of {usage['completion_tokens']} tokens, finished by {events[-1]['timings']['node_id'][-6:]}: {text[:120]!r}")
        _, ns, data = procs.pop(victim)
        start(victim, ns, k, ["--slots", "1", "--queue-depth", "0"] if victim == "b" else ["--slots", "1"], data=data)
        ids = sorted(node_id(n) for n in "abc")
        wait_for(lambda: up_hosts("a") == ids, 15, "the restarted node is back")

    def wrong_key():
        start("stranger", hosts[4], key())
        time.sleep(4)
        me = node_id("stranger")
        for n in "abc":
            assert me not in [p["node_id"] for p in swarm(n)["peers"]], f"{n} lists the stranger"
        assert up_hosts("stranger") == [me], swarm("stranger")
        stop("stranger")

    def crash_is_seen_at_once():
        c = node_id("c")
        procs["c"][0].kill()
        t = wait_for(lambda: c not in up_hosts("a") and c not in up_hosts("b"), 5, "c marked down")
        print(f"     SIGKILLed node marked down by both others in {t * 1000:.0f} ms")

    def a_node_that_shuts_down_is_shown_as_left_everywhere():
        start("d", hosts[4], k)
        d = node_id("d")
        wait_for(lambda: all(d in up_hosts(n) for n in "abc"), 15, "d in every registry")
        watch = RegistryWatch("abc")
        p = procs["d"][0]
        t0 = time.monotonic()
        stop("d")
        took = watch.when(lambda left: d in left, "left")
        assert took is not None, "d not shown as left everywhere"
        took -= t0
        assert took < 0.1, f"left everywhere after {took * 1e3:.0f} ms"
        print(f"     SIGTERM to d; shown as left (not down) by a, b and c after {took * 1e3:.1f} ms")
        assert p.returncode == 0, p.returncode

    def two_percent_packet_loss_marks_no_live_node_down():
        ids = sorted(node_id(n) for n in "abc")
        wait_for(lambda: all(up_hosts(n) == ids for n in "abc"), 15, "all three up")
        # Every packet that reaches a node's namespace is dropped with
        # probability 2 % (nftables: netem is not in every kernel).
        for i in (1, 2, 3):
            ns_exec(hosts[i], "nft", "add", "table", "inet", "loss")
            ns_exec(hosts[i], "nft", "add", "chain", "inet", "loss", "in", "{ type filter hook input priority 0; }")
            ns_exec(hosts[i], "nft", "add", "rule", "inet", "loss", "in", "numgen", "random", "mod", "100", "<", "2", "drop")
        watch = RegistryWatch("abc")
        try:
            time.sleep(60)
        finally:
            for i in (1, 2, 3):
                ns_exec(hosts[i], "nft", "delete", "table", "inet", "loss", check=False)
        changes = watch.events()
        suspected = sum(len(e["suspect"]) > 0 for c in changes for e in c)
        wrong = [(n, e) for n, c in zip("abc", changes) for e in c if e["up"] != ids]
        assert not wrong, f"a live node was marked down under 2 % loss: {wrong[:3]}"
        print(f"     60 s at 2 % loss: no node marked down; {suspected} suspicions, all refuted")

    def restart_same_identity():
        old = {p["node_id"]: p["record"]["incarnation"] for p in swarm("a")["peers"]}
        _, ns, data = procs.pop("c")
        start("c", ns, k, data=data)
        c = node_id("c")
        newer = lambda: [p for p in swarm("a")["peers"] if p["node_id"] == c and p["up"] and p["record"]["incarnation"] > old[c]]  # noqa: E731
        wait_for(newer, 10, "restarted c back in a's registry with its new record")
        peers = swarm("a")["peers"]
        assert len(peers) == 3 and len({p["node_id"] for p in peers}) == 3, peers
        new = [p for p in peers if p["node_id"] == c][0]["record"]["incarnation"]
        assert new > old[c], (old, new)

    def partition_and_heal():
        c = node_id("c")
        others = sorted(node_id(n) for n in "ab")
        ns_exec(BRIDGE_NS, "ip", "link", "set", f"{TAG}h3", "down")
        t = wait_for(lambda: c not in up_hosts("a") and c not in up_hosts("b") and up_hosts("c") == [c], 10, "both sides drop the other")
        print(f"     partition: each side marked the other down in {t:.2f} s")
        ns_exec(BRIDGE_NS, "ip", "link", "set", f"{TAG}h3", "up")
        ids = sorted(others + [c])
        t = wait_for(lambda: all(up_hosts(n) == ids for n in "abc"), 15, "converged after healing")
        print(f"     healed: all three converge again in {t:.2f} s")

    def a_node_that_fails_before_the_first_token_is_passed_over():
        # A copy of the fixture, "twin", on C and on a new node D,
        # loaded on neither. Asked at D, D comes first (the local node wins
        # the tie), but its copy is cut short: it fails to load, before the
        # first token, and the request moves on to C.
        twin = os.path.join(workdir, "twin.gguf")
        shutil.copyfile(FIXTURE, twin)
        with open(twin, "ab") as f:
            f.write(b"\0" * 64)  # other bytes: models are told apart by their hash
        out = ns_exec(hosts[3], "curl", "-s", "--max-time", "120", "--data-binary", f"@{twin}",
                      "http://127.0.0.1:7833/api/models/import?filename=twin.gguf", check=False)
        assert json.loads(out).get("id") == "twin", out
        data = os.path.join(workdir, "d")
        subprocess.run([RBEE, "--data-dir", data, "models", "import", twin], check=True, capture_output=True,
                       env=dict(os.environ, RBEE_CONFIG=os.path.join(workdir, "none.toml")))
        os.remove(twin)
        cut = os.path.join(data, "models", "twin.gguf")
        os.truncate(cut, os.path.getsize(cut) // 2)
        start("d", hosts[4], k, data=data)
        c, d = node_id("c"), node_id("d")
        holders = lambda: sorted(p["node_id"] for p in swarm("d")["peers"] if p["up"] and any(m["id"] == "twin" for m in p["record"]["models_on_disk"]))  # noqa: E731
        wait_for(lambda: holders() == sorted([c, d]), 15, "d sees twin on c and on itself")
        r = complete(hosts[4], {"model": "twin", "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0})
        assert r.get("timings", {}).get("node_id") == c, r
        assert r["choices"][0]["text"].startswith(" the capital of"), r
        with open(os.path.join(workdir, "d.log")) as f:
            log = f.read()
        assert "model failed to load" in log, f"d did not try its own copy first: {log[-2000:]}"
        print(f"     d's own copy failed to load; answered by C: {r['choices'][0]['text']!r}")
        stop("d")

    copy = {}

    def a_pulled_model_is_copied_from_the_peers_that_hold_it():
        # The hub stand-in serves the fixture (B and C hold it) and "twin2",
        # which only D holds: a copy whose file went bad on D's disk after it
        # was catalogued (a byte flipped in every chunk).
        twin2 = os.path.join(workdir, "twin2.gguf")
        shutil.copyfile(FIXTURE, twin2)
        with open(twin2, "ab") as f:
            f.write(b"\0" * 128)
        copy["hub"], copy["log"] = start_hub("hub", hosts[1], {"unsloth/gemma-3-270m-it-GGUF/gemma-3-270m-it-Q4_K_M.gguf": FIXTURE,
                                                                "acme/twin-GGUF/twin2.gguf": twin2})
        data = os.path.join(workdir, "d-copy")
        subprocess.run([RBEE, "--data-dir", data, "models", "import", twin2], check=True, capture_output=True,
                       env=dict(os.environ, RBEE_CONFIG=os.path.join(workdir, "none.toml")))
        bad = os.path.join(data, "models", "twin2.gguf")
        with open(bad, "r+b") as f:
            for at in range(8 << 20, os.path.getsize(bad), 8 << 20):
                f.seek(at - 1)
                byte = f.read(1)
                f.seek(at - 1)
                f.write(bytes([byte[0] ^ 0xFF]))
        start("d", hosts[4], k, data=data, hub=copy["hub"])
        holders = lambda: [p["node_id"] for p in swarm("d")["peers"] if p["up"] and not p["local"]  # noqa: E731
                           and any(m["id"] == MODEL for m in p["record"]["models_on_disk"])]
        wait_for(lambda: len(holders()) == 2, 15, "d sees the fixture on b and c")
        t0 = time.monotonic()
        p = pull(hosts[4], "unsloth/gemma-3-270m-it-GGUF", "gemma-3-270m-it-Q4_K_M.gguf")
        took = time.monotonic() - t0
        assert p["state"] == "done", p
        assert len(p["from_peers"]) == 2, f"copied from b and c: {p}"
        assert not hub_data_requests(copy["log"]), f"the hub sent content: {hub_data_requests(copy['log'])}"
        sent = {n: metric(procs[n][1], "rbee_copy_sent_bytes_total") for n in "bc"}
        assert all(v > 0 for v in sent.values()), sent
        assert sum(sent.values()) == os.path.getsize(FIXTURE), (sent, os.path.getsize(FIXTURE))
        m = [m for m in api(hosts[4], "/v1/models")["data"] if m["id"] == p["model"]][0]
        assert "copied from" in m["rbee"]["source"], m
        print(f"     {os.path.getsize(FIXTURE) / 1e6:.0f} MB copied from b ({sent['b'] / 1e6:.0f} MB) and c ({sent['c'] / 1e6:.0f} MB) "
              f"at {p['bytes_per_s'] / 1e6:.0f} MB/s; pulled and checked in {took:.2f} s; Models page: {m['rbee']['source']!r}")

    def a_corrupted_copy_is_refused_and_fetched_again():
        twin2 = os.path.join(workdir, "twin2.gguf")
        start("e", hosts[5], k, hub=copy["hub"])
        d = node_id("d")
        wait_for(lambda: any(p["node_id"] == d and p["up"] and any(m["id"] == "twin2" for m in p["record"]["models_on_disk"])
                             for p in swarm("e")["peers"]), 15, "e sees twin2 on d")
        p = pull(hosts[5], "acme/twin-GGUF", "twin2.gguf")
        assert p["state"] == "done", p
        assert "refused" in (p["note"] or "") and not p["from_peers"], p
        assert any(r.startswith("acme/twin-GGUF/twin2.gguf bytes=") for r in hub_data_requests(copy["log"])), "fetched from the hub"
        with open(twin2, "rb") as f:
            good = hashlib.sha256(f.read()).hexdigest()
        out = ns_exec(hosts[5], "curl", "-s", "http://127.0.0.1:7833/v1/models")
        assert p["model"] in [m["id"] for m in json.loads(out)["data"]], out
        got = subprocess.run([RBEE, "--data-dir", procs["e"][2], "models", "ls"], capture_output=True, text=True,
                             env=dict(os.environ, RBEE_CONFIG=os.path.join(workdir, "none.toml"))).stdout
        assert good[:12] in got, f"e's copy is the hub's file ({good[:12]}): {got}"
        print(f"     d sent twin2 with a flipped byte per chunk; e refused it ({p['note'][:90]}…) and pulled it from the hub")
        for n in ("e", "d", "hub"):
            stop(n)
        os.remove(twin2)

    def bootstrap_only():
        for n in list(procs):
            stop(n)
        k2 = key()
        first = SUBNET.format(1, 1)
        start("a", hosts[1], k2, ["--no-mdns"])
        start("b", hosts[2], k2, ["--no-mdns", "--peer", f"/ip4/{first}/tcp/7834"])
        start("c", hosts[3], k2, ["--no-mdns", "--peer", f"/ip4/{first}/tcp/7834"])
        ids = sorted(node_id(n) for n in "abc")
        for n in "abc":
            wait_for(lambda n=n: up_hosts(n) == ids, 15, f"{n} lists all three without mDNS")

    check("three nodes discover each other; a model only C has is listed at A", discovery)
    check("a request to A for a model only C has is answered by C", routed_to_the_only_holder)
    check("tool calls asked at A and run on C hold to their schemas, whole and streamed alike", tool_calls_through_a_peer)
    check("a client that goes away mid-answer stops the answer on the node running it", a_client_that_goes_away_stops_the_remote_answer)
    check("with the model on B and C and B's slot busy, requests go to C", busy_holder_is_passed_over)
    check("SIGKILL of the serving node mid-stream: the answer completes on another node", crash_mid_stream_continues_elsewhere)
    check("a node with another swarm key is in no registry", wrong_key)
    check("a SIGKILLed node is marked down at once", crash_is_seen_at_once)
    check("a restart with the same identity rejoins with a higher incarnation, no duplicate", restart_same_identity)
    check("a node that shuts down is shown as left, not down, everywhere within 100 ms", a_node_that_shuts_down_is_shown_as_left_everywhere)
    check("60 s of 2 % packet loss: no live node is marked down", two_percent_packet_loss_marks_no_live_node_down)
    check("a partition: each side marks the other down, and they converge when it heals", partition_and_heal)
    check("a node that fails before the first token is passed over for the next", a_node_that_fails_before_the_first_token_is_passed_over)
    check("a model pulled at a new node is copied from the two peers that hold it, not the hub", a_pulled_model_is_copied_from_the_peers_that_hold_it)
    check("a copy that is not the hub's file is refused, and the file is fetched from the hub", a_corrupted_copy_is_refused_and_fetched_again)
    check("bootstrap peers alone (mDNS off) form the same swarm", bootstrap_only)


# Runs inside a namespace: `runs` streamed completions over one kept-alive
# connection to the node there; for each, the client's time to the first
# text and the prompt time of the engine that ran it (from `timings`).
TTFT_CLIENT = r"""
import http.client, json, sys, time
body, runs = json.loads(sys.argv[1]), int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", 7833)
out = []
for _ in range(runs):
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"content-type": "application/json"})
    r = conn.getresponse()
    first, timings = None, None
    while True:
        line = r.readline()
        if not line or line.startswith(b"data: [DONE]"):
            break
        if not line.startswith(b"data: {"):
            continue
        ev = json.loads(line[6:])
        if first is None and any(c.get("text") for c in ev.get("choices", [])):
            first = time.perf_counter() - t0
        timings = ev.get("timings") or timings
    r.read()
    out.append({"ttft_ms": first * 1e3, "engine_prompt_ms": timings["prompt_ms"], "node": timings["node_id"]})
print(json.dumps(out))
"""


# Runs inside a namespace: follows the node's registry as it changes
# (`/api/swarm/events`) and prints, at each change of which nodes are up,
# the time (CLOCK_MONOTONIC, which every namespace shares) and those nodes.
REGISTRY_WATCHER = r"""
import http.client, json, time
conn = http.client.HTTPConnection("127.0.0.1", 7833)
conn.request("GET", "/api/swarm/events")
r = conn.getresponse()
last = None
while line := r.readline():
    if line.startswith(b"data:"):
        peers = json.loads(line[5:])["peers"]
        now = {s: sorted(p["node_id"] for p in peers if p.get("status", "up" if p["up"] else "down") == s) for s in ("up", "suspect", "down", "left")}
        now["up"] = sorted(now["up"] + now["suspect"])
        if now != last:
            print(json.dumps(dict(now, t=time.monotonic())), flush=True)
            last = now
"""


class RegistryWatch:
    """The registries of some nodes, followed as they change: when something
    happened is read from the nodes' own event streams, not from polling."""

    def __init__(self, names):
        self.procs = [subprocess.Popen(["ip", "netns", "exec", procs[n][1], sys.executable, "-c", REGISTRY_WATCHER],
                                       stdout=subprocess.PIPE, text=True) for n in names]
        for p in self.procs:
            p.stdout.readline()  # the registry as it is now: following

    def events(self):
        """Stops following; every registry's changes, in order: one list
        per node followed, each change {"t", "up", "suspect", "down", "left"}
        (node ids; suspects are also in "up")."""
        out = []
        for p in self.procs:
            p.terminate()
            out.append([json.loads(line) for line in p.stdout])
            p.wait()
        return out

    def when(self, pred, field="up"):
        """Stops following; the time by which `pred(node ids in field)` held
        in every registry followed (None if it never did in one)."""
        times = []
        for changes in self.events():
            t = next((e["t"] for e in changes if pred(e[field])), None)
            if t is None:
                return None
            times.append(t)
        return max(times)


def ttft_runs(ns, body, runs):
    b = dict(body, stream=True, stream_options={"include_usage": True})
    return json.loads(ns_exec(ns, sys.executable, "-c", TTFT_CLIENT, json.dumps(b), str(runs)))


def bench():
    import statistics
    setup_bridge()
    hosts = {i: add_host(i) for i in (1, 2, 3)}
    k = key()
    start("a", hosts[1], k)
    start("c", hosts[3], k, model=True)
    ids = sorted(node_id(n) for n in "ac")
    wait_for(lambda: up_hosts("a") == ids and up_hosts("c") == ids, 15, "a and c")
    if "copy" in sys.argv:
        copy_bench(hosts, k)
        return
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 2, "temperature": 0}
    ttft_runs(hosts[3], body, 2)
    ttft_runs(hosts[1], body, 2)
    local, routed = [], []
    for _ in range(6):
        local += ttft_runs(hosts[3], body, 5)
        routed += ttft_runs(hosts[1], body, 5)
    c = node_id("c")
    assert all(r["node"] == c for r in local + routed), "every run should have run on C"
    med = lambda xs: statistics.median(xs)  # noqa: E731
    over = lambda rs: [r["ttft_ms"] - r["engine_prompt_ms"] for r in rs]  # noqa: E731
    print(f"time to first token, {len(local)} runs each (medians): local at C {med([r['ttft_ms'] for r in local]):.1f} ms, "
          f"routed at A to C {med([r['ttft_ms'] for r in routed]):.1f} ms")
    ol, orr = over(local), over(routed)
    print(f"  beyond C's own prompt time, per request: local {med(ol):.2f} ms (worst {max(ol):.2f}), routed {med(orr):.2f} ms "
          f"(worst {max(orr):.2f}): routing adds {med(orr) - med(ol):.2f} ms")
    # A new node: from its process start to being listed by both others;
    # then from its end to being down in both: SIGKILL (its connections
    # close), SIGSTOP (silent: connections open, nothing sent), its link cut
    # (a partition), or to being shown as left: SIGTERM (it shuts down).
    # Times come from A's and C's own event streams, not from polling them.
    joins, downs = [], {"SIGKILL": [], "SIGSTOP": [], "partition": [], "SIGTERM": []}
    for run, how in enumerate(["SIGKILL"] * 5 + ["SIGSTOP"] * 5 + ["partition"] * 3 + ["SIGTERM"] * 5):
        watch = RegistryWatch("ac")
        t0 = time.monotonic()
        start("b", hosts[2], k, data=os.path.join(workdir, f"b{run}"))
        b = node_id("b")
        wait_for(lambda: b in up_hosts("a") and b in up_hosts("c"), 15, "b everywhere")
        time.sleep(0.2)
        joins.append(watch.when(lambda up: b in up) - t0)
        watch = RegistryWatch("ac")
        p = procs.pop("b")[0]
        t0 = time.monotonic()
        if how == "partition":
            ns_exec(BRIDGE_NS, "ip", "link", "set", f"{TAG}h2", "down")
        else:
            p.send_signal(getattr(signal, how))
        wait_for(lambda: b not in up_hosts("a") and b not in up_hosts("c"), 10, "b down")
        time.sleep(0.2)
        if how == "SIGTERM":
            downs[how].append(watch.when(lambda left: b in left, "left") - t0)
        else:
            downs[how].append(watch.when(lambda up: b not in up) - t0)
        p.kill()
        p.wait()
        if how == "partition":
            ns_exec(BRIDGE_NS, "ip", "link", "set", f"{TAG}h2", "up")
            # The next "new node" gets the same address: A and C forget the
            # neighbour state the cut left (a packet to it could wait a
            # second for ARP), as they would not have met a new machine.
            for i in (1, 3):
                ns_exec(hosts[i], "ip", "neigh", "flush", "all")
    ms = lambda xs: ", ".join(f"{x * 1e3:.1f}" for x in xs)  # noqa: E731
    print(f"new node in every registry after its process started ({len(joins)} runs, a new identity each): "
          f"median {med(joins) * 1e3:.1f} ms ({ms(joins)})")
    print(f"SIGKILLed node marked down by both others: median {med(downs['SIGKILL']) * 1e3:.1f} ms ({ms(downs['SIGKILL'])})")
    print(f"silent node (SIGSTOP) marked down by both others: median {med(downs['SIGSTOP']) * 1e3:.0f} ms ({ms(downs['SIGSTOP'])})")
    print(f"node cut off (its link down) marked down by both others: median {med(downs['partition']) * 1e3:.0f} ms ({ms(downs['partition'])})")
    print(f"node shut down (SIGTERM) shown as left by both others: median {med(downs['SIGTERM']) * 1e3:.1f} ms ({ms(downs['SIGTERM'])})")
    copy_bench(hosts, k)


def copy_bench(hosts, k):
    """A model copied from C to a new node B against a plain HTTP download
    of the same file from C's namespace (hub.py: sendfile) by curl in B's,
    written to B's disk: on the bare veth, then with B's link shaped to
    1 Gbit/s (tbf on the bridge's port towards B), as an office's wired LAN."""
    import statistics
    repo, file = "unsloth/gemma-3-270m-it-GGUF", "gemma-3-270m-it-Q4_K_M.gguf"
    hub, _ = start_hub("hub", hosts[3], {f"{repo}/{file}": FIXTURE})
    size = os.path.getsize(FIXTURE)
    c = node_id("c")
    for shaped in (False, True):
        if shaped:
            ns_exec(BRIDGE_NS, "tc", "qdisc", "add", "dev", f"{TAG}h2", "root", "tbf", "rate", "1gbit", "burst", "256kb", "latency", "20ms")
        http, copied, pulled = [], [], []
        for run in range(3):
            target = os.path.join(workdir, "http-download")
            out = ns_exec(hosts[2], "curl", "-s", "-o", target, "-w", "%{time_total}", f"{hub}/{repo}/resolve/main/{file}")
            assert os.path.getsize(target) == size
            http.append(size / float(out))
            os.remove(target)
            data = os.path.join(workdir, f"copy{shaped}{run}")
            start("b", hosts[2], k, data=data, hub=hub)
            wait_for(lambda: any(p["node_id"] == c and p["up"] and p["record"]["models_on_disk"] for p in swarm("b")["peers"]), 15, "b sees c's model")
            t0 = time.monotonic()
            p = pull(hosts[2], repo, file)
            took = time.monotonic() - t0
            assert p["state"] == "done" and p["from_peers"], p
            copied.append(p["bytes_per_s"])
            pulled.append(size / took)
            stop("b")
            shutil.rmtree(data)
        med = statistics.median
        link = "B's link shaped to 1 Gbit/s" if shaped else "bare veth (no shaping: bound by the two cores)"
        print(f"model copy of {size / 1e6:.0f} MB from C to B, {link}, 3 runs each (medians): plain HTTP {med(http) / 1e6:.0f} MB/s; "
              f"LAN copy {med(copied) / 1e6:.0f} MB/s ({med(copied) / med(http) * 100:.0f} % of HTTP); whole pull incl. sha256 check "
              f"and cataloguing {med(pulled) / 1e6:.0f} MB/s ({med(pulled) / med(http) * 100:.0f} %)")
        if shaped:
            ns_exec(BRIDGE_NS, "tc", "qdisc", "del", "dev", f"{TAG}h2", "root")
    stop("hub")


if __name__ == "__main__":
    if "--bench" in sys.argv:
        if os.geteuid() != 0:
            sys.exit("the swarm benchmark needs root (it creates network namespaces)")
        try:
            bench()
        finally:
            teardown()
        sys.exit(0)
    if os.geteuid() != 0:
        sys.exit("e2e/lan needs root (it creates network namespaces)")
    signal.signal(signal.SIGTERM, lambda *_: (teardown(), sys.exit(1)))
    try:
        main()
    except KeyboardInterrupt:
        failures.append("interrupted")
    except Exception as e:  # noqa: BLE001
        failures.append(f"setup: {e}")
        print(f"FAIL setup: {e}")
    finally:
        teardown()
    sys.exit(1 if failures else 0)
