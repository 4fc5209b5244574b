#!/usr/bin/env bash
# NVIDIA's CUDA toolkit for building rbee with `--features cuda`, from PyPI
# (no apt repository, no driver needed to compile). Prints the toolkit's root,
# for CUDA_HOME. Not part of CI.
#
# NVIDIA publishes a complete nvcc on PyPI only from CUDA 13 on (the
# `-cu12` nvcc wheels hold ptxas alone), so this is CUDA 13.4, the newest
# version candle's cudarc 0.19 knows. Running the result needs a driver for
# CUDA 13 (580 or later) and these libraries (LD_LIBRARY_PATH=<root>/lib).
set -euo pipefail
cache="${XDG_CACHE_HOME:-$HOME/.cache}/rbee"
venv="$cache/cuda-13.4"
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
# nvcc and what it runs (crt headers, cicc), libcu++ (CCCL: cuda_fp16.h needs
# its <nv/target>), and the libraries candle links: cudart, nvrtc, cuBLAS,
# cuRAND.
reqs=("nvidia-cuda-nvcc==13.4.*" "nvidia-cuda-crt==13.4.*" "nvidia-nvvm==13.4.*" "nvidia-cuda-cccl==13.3.5.0.6"
  "nvidia-cuda-runtime==13.4.*" "nvidia-cuda-nvrtc==13.4.*" "nvidia-cublas==13.*" "nvidia-curand==10.*")
if [ "$(cat "$venv/.installed" 2>/dev/null)" != "${reqs[*]}" ]; then
  "$venv/bin/pip" install -q --disable-pip-version-check "${reqs[@]}" >&2
  echo "${reqs[*]}" >"$venv/.installed"
fi
root="$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)"
[ -x "$root/bin/nvcc" ] || { echo "no nvcc in $root" >&2; exit 1; }

# The wheels hold versioned libraries only (libcublas.so.13); the linker
# looks for the unversioned names.
for lib in "$root"/lib/lib*.so.*; do
  base="${lib%%.so.*}.so"
  [ -e "$base" ] || ln -s "$(basename "$lib")" "$base"
done
# The driver's library (libcuda.so.1) comes with the driver, not the toolkit.
# Linking needs only its symbols, so a stub that exports every cu* function
# of cuda.h stands in for it at build time, as the toolkit's own
# lib64/stubs/libcuda.so does; at run time the driver's real one is loaded.
if [ ! -e "$root/lib/stubs/libcuda.so" ]; then
  mkdir -p "$root/lib/stubs"
  grep -ho '\bcu[A-Z][A-Za-z0-9_]*' "$root/include/cuda.h" | sort -u | sed 's/.*/void &(void) {}/' >"$root/lib/stubs/cuda-stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib/stubs/libcuda.so" "$root/lib/stubs/cuda-stub.c"
fi
echo "$root"
