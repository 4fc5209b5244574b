#!/usr/bin/env bash
# Builds llama.cpp's llama-server from the sources vendored in the same
# llama-cpp-python release the engine bench uses, as its users build it:
# the default (native) CPU build. Two things differ, neither touching the
# compute: its web UI is left out (it needs a download from Hugging Face)
# and it links statically (one binary to keep). Prints the binary's path.
# Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
cache="${XDG_CACHE_HOME:-$HOME/.cache}/rbee"
version=0.3.36
out="$cache/llama-server-$version"
if [ ! -x "$out/bin/llama-server" ]; then
  venv="$cache/llama-native-venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -c "import cmake" 2>/dev/null || "$venv/bin/pip" install -q cmake >&2
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  "$venv/bin/pip" download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$version" -d "$work" >&2
  tar xzf "$work"/llama_cpp_python-$version.tar.gz -C "$work"
  src="$work/llama_cpp_python-$version/vendor/llama.cpp"
  "$venv/bin/cmake" -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DBUILD_SHARED_LIBS=OFF -DCMAKE_INSTALL_PREFIX="$out" >&2
  "$venv/bin/cmake" --build "$work/build" --target llama-server -j "$(nproc)" >&2
  mkdir -p "$out/bin"
  cp "$work/build/bin/llama-server" "$out/bin/"
fi
echo "$out/bin/llama-server"
