#!/usr/bin/env bash
# Prints the rbee binary the e2e suites run: the one given, or a debug build
# of the current tree (built first). Usage: rbee="$(e2e/rbee-binary.sh "${1:-}")"
set -euo pipefail
if [ -n "${1:-}" ]; then
  echo "$1"
  exit 0
fi
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rbee/target}"
cargo build --quiet -p rbee-node >&2
echo "$CARGO_TARGET_DIR/debug/rbee"
