#!/usr/bin/env bash
# Benchmark rbee against llama.cpp on the fixture models (not part of CI):
# the engine (bench.py) and serving concurrent clients (serve.py).
# Needs llama-cpp-python; installs it into a venv in the cache if missing
# (a source build: several minutes the first time). llama.cpp is built as
# its users get it: the default build, native to the CPU it runs on; only
# if it crashes (its AMX path does on Sapphire Rapids-class Xeons) do
# bench.py and serve.py rerun it with AMX refused (noamx.py), and say so.
set -euo pipefail
cd "$(dirname "$0")/../.."
cache="${XDG_CACHE_HOME:-$HOME/.cache}/rbee"
venv="$cache/llama-native-venv"
if ! "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --no-cache-dir llama-cpp-python==0.3.36
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
cargo build --release --quiet -p rbee-node
# The base fixture and the two instruct models (pass --repeat N etc. through).
for model in gemma3 smollm2 qwen-coder; do
  "$venv/bin/python" e2e/bench/bench.py --model "$(e2e/fetch-fixture.sh "$model")" --rbee "$CARGO_TARGET_DIR/release/rbee" "$@"
  echo
done
# Serving: rbee against llama-server -np 4, built from the same sources.
llama_server="$(e2e/bench/llama-server.sh)"
for model in gemma3 qwen-coder; do
  "$venv/bin/python" e2e/bench/serve.py --model "$(e2e/fetch-fixture.sh "$model")" --rbee "$CARGO_TARGET_DIR/release/rbee" --llama-server "$llama_server"
  echo
done
