#!/usr/bin/env bash
# Swarm benchmark (not part of CI; root): on a LAN of network namespaces,
# routed against local time to first token, time for a new node to appear in
# every registry, crash detection. Usage: e2e/bench/swarm.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rbee/target}"
cargo build --release --quiet -p rbee-node --bin rbee
exec python3 e2e/lan/lan.py "$CARGO_TARGET_DIR/release/rbee" "$(e2e/fetch-fixture.sh)" --bench
