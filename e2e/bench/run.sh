#!/usr/bin/env bash
# Benchmark rbee's engine against llama.cpp on the fixture (not part of CI).
# Needs llama-cpp-python; installs it into a venv in the cache if missing
# (a source build: several minutes the first time).
set -euo pipefail
cd "$(dirname "$0")/../.."
cache="${XDG_CACHE_HOME:-$HOME/.cache}/rbee"
venv="$cache/oracle-venv"
if ! "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
  python3 -m venv "$venv"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" "$venv/bin/pip" install llama-cpp-python==0.3.36
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
cargo build --release --quiet -p rbee-node
exec "$venv/bin/python" e2e/bench/bench.py --model "$(e2e/fetch-fixture.sh)" --rbee "$CARGO_TARGET_DIR/release/rbee" "$@"
