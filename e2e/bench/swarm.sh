#!/usr/bin/env bash
# Swarm benchmark (not part of CI; root). On a LAN of network namespaces:
# routed against local time to first token, time for a new node to appear in
# every registry, crash detection. Then many nodes in one process (memory
# transport): convergence, a change reaching every registry, a join, and
# bytes on the wire per node, at 50 and 100 nodes.
# Usage: e2e/bench/swarm.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rbee/target}"
cargo build --release --quiet -p rbee-node --bin rbee
cargo build --release --quiet -p rbee-swarm --example swarm_sim
python3 e2e/lan/lan.py "$CARGO_TARGET_DIR/release/rbee" "$(e2e/fetch-fixture.sh)" --bench
sim="$CARGO_TARGET_DIR/release/examples/swarm_sim"
echo "cores: $(nproc)"
"$sim" 50 mesh 10 2>/dev/null || true
"$sim" 100 mesh 10 2>/dev/null || true
# One process does every node's work on this machine's cores; at 100 nodes
# it runs out of them, so also with a TTL that forgives the stalls.
echo "TTL_MS=30000:"
TTL_MS=30000 "$sim" 100 mesh 10 2>/dev/null || true
