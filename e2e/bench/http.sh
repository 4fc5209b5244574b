#!/usr/bin/env bash
# HTTP benchmark (not part of CI): time to first token and decode speed
# through `/v1/completions` against the engine called directly, throughput
# with 1, 2, 4 and 8 concurrent clients, and the RSS of an idle `rbee serve`.
# Usage: e2e/bench/http.sh [REPEATS]
set -euo pipefail
cd "$(dirname "$0")/../.."
cache="${XDG_CACHE_HOME:-$HOME/.cache}/rbee"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
cargo build --release --quiet -p rbee-node --bin rbee --example http_bench
fixture="$(e2e/fetch-fixture.sh)"

data="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$data"' EXIT
RBEE_CONFIG="$data/none.toml" "$CARGO_TARGET_DIR/release/rbee" --data-dir "$data" serve --listen 127.0.0.1:0 >"$data/out" 2>/dev/null &
pid=$!
for _ in $(seq 1 100); do grep -q listening "$data/out" && break; sleep 0.05; done
sleep 1
echo "idle rbee serve (no model loaded): RSS $(awk '/VmRSS/ {print $2, $3}' /proc/$pid/status)"
kill -TERM "$pid"; wait "$pid" || true

"$CARGO_TARGET_DIR/release/examples/http_bench" "$fixture" "${1:-15}"
