#!/usr/bin/env bash
# The engine's tests and the engine bench on an NVIDIA GPU (not part of CI):
# builds with `--features cuda` against the toolkit e2e/gpu/setup.sh installs
# (or the machine's own, when nvcc is on PATH), then runs every engine test
# with RBEE_DEVICE=cuda:0 and bench.py with the model on the GPU.
# Usage: e2e/gpu/run.sh [--build-only]
set -euo pipefail
cd "$(dirname "$0")/../.."
cache="${XDG_CACHE_HOME:-$HOME/.cache}/rbee"
if command -v nvcc >/dev/null; then
  export CUDA_HOME="${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}"
else
  export CUDA_HOME="$(e2e/gpu/setup.sh)"
  export PATH="$CUDA_HOME/bin:$PATH"
fi
export LD_LIBRARY_PATH="$CUDA_HOME/lib:$CUDA_HOME/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# candle's kernels are compiled for one GPU generation: the one here, or
# (building where there is none) CUDA_COMPUTE_CAP, 90 (Hopper) by default.
if command -v nvidia-smi >/dev/null; then
  CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)}"
fi
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
# Its own target directory: the CPU build's stays as it is.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target-cuda}"
nvcc --version | tail -2
cargo build --release -p rbee-node --features cuda
# The test binaries, built without running them (nextest would list their
# tests, which loads the driver's libcuda.so.1: absent where there is no GPU).
cargo test --release -p rbee-engine --features cuda --no-run
if [ "${1:-}" = "--build-only" ]; then exit 0; fi

export RBEE_DEVICE=cuda:0
export RBEE_FIXTURE="$(e2e/fetch-fixture.sh)"
e2e/fetch-fixture.sh smollm2 >/dev/null
e2e/fetch-fixture.sh qwen-coder >/dev/null
"$CARGO_TARGET_DIR/release/rbee" hw
status=0
cargo nextest run --release -p rbee-engine --features cuda --no-fail-fast || status=1
# The bench: rbee on the GPU against llama.cpp on this machine's CPU (the
# CPU build: a CUDA llama.cpp needs the same toolkit and a long build).
venv="$cache/llama-native-venv"
if "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
  for model in gemma3 qwen-coder; do
    "$venv/bin/python" e2e/bench/bench.py --model "$(e2e/fetch-fixture.sh "$model")" --rbee "$CARGO_TARGET_DIR/release/rbee" --threads 2 --repeat 1 || status=1
  done
fi
exit $status
