#!/usr/bin/env bash
# The desktop app under Xvfb with a D-Bus session: builds it (with its
# bundled pages, as `tauri build` does), then runs test.py.
# Usage: e2e/app/run.sh [RBEE_BINARY]   (default: a debug build)
set -euo pipefail
cd "$(dirname "$0")"
root="$(cd ../.. && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rbee/target}"
for c in xvfb-run dbus-run-session WebKitWebDriver import; do
  command -v "$c" >/dev/null || { echo "$c is missing: e2e/test.sh installs the app's test packages" >&2; exit 1; }
done
(cd "$root" && cargo build --quiet -p rbee-app --features custom-protocol)
rbee="$("$root/e2e/rbee-binary.sh" "${1:-}")"
# The chat model a first run imports on a small machine (see run.sh): the
# window's first answer must come from a model that chats.
fixture="$("$root/e2e/fetch-fixture.sh" smollm2)"
shots="${RBEE_SCREENSHOTS:-$PWD/screenshots}"
exec dbus-run-session -- xvfb-run -a -s "-screen 0 1280x860x24" \
  /usr/bin/python3 test.py "$CARGO_TARGET_DIR/debug/rbee-app" "$rbee" "$fixture" "$shots"
