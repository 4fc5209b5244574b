#!/usr/bin/env bash
# Builds rbee (release, once) and runs it: `./run.sh ARGS…` runs `rbee ARGS…`.
# With no arguments it starts this machine's node (`rbee serve`: the chat
# UI at http://127.0.0.1:7833/, the API at http://127.0.0.1:7833/v1); on a machine with no models yet it first imports
# the small test model, so a fresh machine has something to talk to.
set -euo pipefail
cd "$(dirname "$0")"
need=()
for p in build-essential pkg-config python3 python3-pip ca-certificates; do
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
    "$rbee" models import "$(e2e/fetch-fixture.sh)"
  fi
  set -- serve
fi
exec "$rbee" "$@"
