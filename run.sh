#!/usr/bin/env bash
# Builds rbee (release, once) and runs it: `./run.sh generate MODEL "PROMPT"`.
# With no arguments it fetches the fixture model, imports it, and completes a
# prompt, so a fresh machine shows rbee working in one command.
set -euo pipefail
cd "$(dirname "$0")"
need=()
for p in build-essential pkg-config python3 python3-pip ca-certificates; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rbee/target}"
cargo build --release --quiet -p rbee-node
rbee="$CARGO_TARGET_DIR/release/rbee"
if [ $# -eq 0 ]; then
  if ! "$rbee" models ls | grep -q gemma-3-270m-q4_k_m; then
    "$rbee" models import "$(e2e/fetch-fixture.sh)"
  fi
  set -- generate gemma-3-270m-q4_k_m "The capital of France is" --temperature 0 --max-tokens 32 --stats
fi
exec "$rbee" "$@"
