#!/usr/bin/env bash
# Swarm benchmark (not part of CI; root). On a LAN of network namespaces:
# routed against local time to first token, time for a new node to appear in
# every registry, detection of a crashed, a silent and a departing node, and
# a model copied between two nodes against a plain HTTP download of it (bare
# and on a link shaped to 1 Gbit/s; `lan.py BIN FIXTURE --bench copy` alone).
# Then many nodes in one process (memory transport): convergence, idle bytes
# and CPU per node at 10, 50 and 100 nodes, a change reaching every registry,
# a join. Then the membership protocol alone at 1000 nodes in virtual time.
# Usage: e2e/bench/swarm.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rbee/target}"
cargo build --release --quiet -p rbee-node --bin rbee
cargo build --release --quiet -p rbee-swarm --example swarm_sim --example swim_sim
python3 e2e/lan/lan.py "$CARGO_TARGET_DIR/release/rbee" "$(e2e/fetch-fixture.sh)" --bench
sim="$CARGO_TARGET_DIR/release/examples/swarm_sim"
echo "cores: $(nproc)"
for n in 10 50 100; do
  "$sim" "$n" mesh 20 2>/dev/null || true
done
"$CARGO_TARGET_DIR/release/examples/swim_sim" 1000 2
"$CARGO_TARGET_DIR/release/examples/swim_sim" 1000 5
