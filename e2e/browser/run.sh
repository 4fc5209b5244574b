#!/usr/bin/env bash
# The UI in Debian's Chromium (playwright-core) against real `rbee serve`
# nodes on the fixture. Screenshots land in e2e/browser/screenshots/.
# Usage: e2e/browser/run.sh [RBEE_BINARY]   (default: a debug build)
set -euo pipefail
cd "$(dirname "$0")"
root="$(cd ../.. && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rbee/target}"
command -v chromium >/dev/null || { echo "Chromium is missing: apt-get install chromium (e2e/test.sh installs it)" >&2; exit 1; }
[ -f "$root/ui/dist/index.html" ] || "$root/ui/build.sh"
rbee="$("$root/e2e/rbee-binary.sh" "${1:-}")"
if [ ! -d node_modules/playwright-core ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --silent --no-audit --no-fund
fi
export RBEE_BIN="$rbee" RBEE_FIXTURE="${RBEE_FIXTURE:-$("$root/e2e/fetch-fixture.sh")}" RBEE_CHROMIUM="$(command -v chromium)"
exec node --test --test-concurrency=1 test.mjs
