#!/usr/bin/env bash
# Builds rbee (release, once) and runs it.
#   ./run.sh           on a desktop (DISPLAY or WAYLAND_DISPLAY set): the app —
#                      tray icon and chat window, with this machine's node inside;
#                      without a display: the headless node (`rbee serve`).
#                      Either way the chat UI is at http://127.0.0.1:7833/ and
#                      the API at http://127.0.0.1:7833/v1. On a machine with no
#                      models yet it first imports a chat model:
#                      Qwen2.5-Coder-1.5B-Instruct (1.1 GB), or SmolLM2-135M-Instruct
#                      (94 MB) where less than 4 GiB of memory is free.
#   ./run.sh ARGS…     runs `rbee ARGS…` (e.g. `./run.sh serve --swarm-key CODE`).
set -euo pipefail
cd "$(dirname "$0")"
desktop=""
if [ $# -eq 0 ] && { [ -n "${DISPLAY:-}" ] || [ -n "${WAYLAND_DISPLAY:-}" ]; }; then desktop=1; fi
need=()
pkgs=(build-essential pkg-config python3 python3-pip ca-certificates)
[ -n "$desktop" ] && pkgs+=(libwebkit2gtk-4.1-dev libayatana-appindicator3-dev librsvg2-dev libxdo-dev libssl-dev)
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
command -v npm >/dev/null || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rbee/target}"
# The chat UI, which the release binary carries inside it.
ui/build.sh
cargo build --release --quiet -p rbee-node
rbee="$CARGO_TARGET_DIR/release/rbee"
if [ $# -eq 0 ]; then
  if "$rbee" models ls | grep -q "^no models yet"; then
    free_kib="$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo 2>/dev/null || echo 0)"
    first=qwen-coder
    [ "${free_kib:-0}" -lt $((4 * 1024 * 1024)) ] && first=smollm2
    "$rbee" models import "$(e2e/fetch-fixture.sh "$first")"
  fi
  if [ -n "$desktop" ]; then
    cargo build --release --quiet -p rbee-app --features custom-protocol
    exec "$CARGO_TARGET_DIR/release/rbee-app"
  fi
  set -- serve
fi
exec "$rbee" "$@"
