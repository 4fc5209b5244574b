#!/usr/bin/env bash
# The UI in Debian's Chromium (playwright-core) against real `rbee serve`
# nodes on the fixture. Screenshots land in e2e/browser/screenshots/.
# Usage: e2e/browser/run.sh [RBEE_BINARY]   (default: a debug build)
set -euo pipefail
cd "$(dirname "$0")"
root="$(cd ../.. && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rbee/target}"
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
  else
    echo "Chromium is missing: sudo apt-get install chromium" >&2
    exit 1
  fi
fi
[ -f "$root/ui/dist/index.html" ] || (cd "$root/ui" && npm install --no-save --no-audit --no-fund && npm run build)
rbee="${1:-}"
if [ -z "$rbee" ]; then
  (cd "$root" && cargo build --quiet -p rbee-node)
  rbee="$CARGO_TARGET_DIR/debug/rbee"
fi
if [ ! -d node_modules/playwright-core ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --silent --no-audit --no-fund
fi
export RBEE_BIN="$rbee" RBEE_FIXTURE="${RBEE_FIXTURE:-$("$root/e2e/fetch-fixture.sh")}" RBEE_CHROMIUM="$(command -v chromium)"
exec node --test --test-concurrency=1 test.mjs
