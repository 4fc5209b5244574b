#!/usr/bin/env bash
# The compatibility suite: the official openai SDKs (Python and JavaScript),
# LangChain and the OpenAI Agents SDK against a real `rbee serve` on the
# fixture model (a base model), SmolLM2-135M-Instruct (structured output),
# Qwen2.5-Coder-1.5B-Instruct (tool calls) and a tiny Nomic BERT (embeddings).
# Usage: e2e/openai/run.sh [RBEE_BINARY]   (default: a debug build)
set -euo pipefail
cd "$(dirname "$0")"
root="$(cd ../.. && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rbee/target}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/rbee"
rbee="$("$root/e2e/rbee-binary.sh" "${1:-}")"
fixture="${RBEE_FIXTURE:-$("$root/e2e/fetch-fixture.sh")}"
chat_model="$("$root/e2e/fetch-fixture.sh" smollm2)"
tool_model="$("$root/e2e/fetch-fixture.sh" qwen-coder)"

# Python SDK in its own venv, pinned.
venv="$cache/openai-venv"
if ! "$venv/bin/python" -c "import openai, pytest, langchain_openai, agents" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r requirements.txt
fi
# JavaScript SDK from the lock file.
if [ ! -d js/node_modules/openai ] || [ js/package-lock.json -nt js/node_modules/.package-lock.json ]; then
  (cd js && npm ci --silent --no-audit --no-fund)
fi

data="$(mktemp -d)"
out="$data/serve.out"
cleanup() {
  if [ -n "${pid:-}" ] && kill -0 "$pid" 2>/dev/null; then kill "$pid"; wait "$pid" || true; fi
  rm -rf "$data"
}
trap cleanup EXIT
RBEE_CONFIG="$data/none.toml" "$rbee" --data-dir "$data" models import "$fixture" >/dev/null
RBEE_CONFIG="$data/none.toml" "$rbee" --data-dir "$data" models import "$chat_model" >/dev/null
RBEE_CONFIG="$data/none.toml" "$rbee" --data-dir "$data" models import "$tool_model" >/dev/null
# Tiny generated embedding models (the engine's test ones; no embedding GGUF
# ships in a package registry).
cargo run --quiet --manifest-path "$root/Cargo.toml" -p rbee-engine --example tiny_embedders -- "$data/embedders" >/dev/null
RBEE_CONFIG="$data/none.toml" "$rbee" --data-dir "$data" models import "$data/embedders/nomic-bert.gguf" >/dev/null
RBEE_CONFIG="$data/none.toml" "$rbee" --data-dir "$data" serve --listen 127.0.0.1:0 >"$out" 2>"$data/serve.log" &
pid=$!
for _ in $(seq 1 200); do
  grep -q "listening on" "$out" 2>/dev/null && break
  kill -0 "$pid" || { cat "$data/serve.log"; exit 1; }
  sleep 0.05
done
base="$(sed -n 's/^rbee listening on //p' "$out")"
export RBEE_BASE_URL="$base" RBEE_MODEL="gemma-3-270m-q4_k_m" RBEE_CHAT_MODEL="smollm2-135m-instruct.q4_1" RBEE_TOOL_MODEL="qwen2.5-coder-1.5b-instruct-q4_k_m" RBEE_EMBED_MODEL="nomic-bert"
echo "openai SDKs against $base"

status=0
"$venv/bin/python" -m pytest -q -p no:cacheprovider test_openai.py test_frameworks.py || status=1
(cd js && node --test test.mjs) || status=1

# SIGTERM: the node exits 0.
kill -TERM "$pid"
if wait "$pid"; then echo "rbee serve exited 0 on SIGTERM"; else echo "rbee serve exited $? on SIGTERM" >&2; status=1; fi
pid=""
[ $status -eq 0 ] || { tail -n 50 "$data/serve.log" >&2; }
exit $status
