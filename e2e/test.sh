#!/usr/bin/env bash
# The whole test suite. Installs what is missing (Debian packages, the
# fixture models), builds once, runs every test. Used by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
# The desktop app's build needs WebKitGTK and the tray's libraries; its test
# runs it under Xvfb with a D-Bus session, driven over WebKitWebDriver.
for p in build-essential pkg-config python3 python3-pip python3-venv ca-certificates iproute2 nftables curl chromium fonts-dejavu-core \
  libwebkit2gtk-4.1-dev libayatana-appindicator3-dev librsvg2-dev libxdo-dev libssl-dev \
  xvfb xauth dbus dbus-x11 imagemagick webkit2gtk-driver python3-dbus python3-gi python3-xlib; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
command -v npm >/dev/null || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  else
    echo "missing Debian packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }

# The UI first: the node serves ui/dist (and embeds it in release builds).
ui/build.sh

# One target directory outside the clone, reused between runs and clones.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rbee/target}"
# Reused, it grows by a copy of each test binary (~200 MB) and rbee library
# whenever their dependencies change, and by incremental state that a new
# commit hardly reuses. So: no incremental state, and of each test binary and
# rbee library only the two newest builds are kept (cargo rebuilds whatever
# it still needs). A warm target then stays near 20 GB instead of passing 60.
export CARGO_INCREMENTAL=0
rm -rf "$CARGO_TARGET_DIR/debug/incremental"
for dir in "$CARGO_TARGET_DIR/debug/deps" "$CARGO_TARGET_DIR/debug/examples"; do
  [ -d "$dir" ] || continue
  # name-<16 hex> (an executable) or librbee*-<16 hex>.rlib/.rmeta/.so
  (cd "$dir" && ls -t | grep -E '^([a-z0-9_]+-[0-9a-f]{16}|librbee[a-z0-9_]*-[0-9a-f]{16}\.(rlib|rmeta|so))$' \
    | awk '{ key = $0; sub(/-[0-9a-f]+/, "", key); if (++seen[key] > 2) print }' | xargs -r rm -f)
done
mkdir -p "$CARGO_TARGET_DIR"
free_gb=$(( $(df --output=avail -k "$CARGO_TARGET_DIR" | tail -1) / 1048576 ))
if [ "$free_gb" -lt 12 ]; then
  echo "warning: only ${free_gb} GB free on the disk of $CARGO_TARGET_DIR; a cold build needs about 20 GB and the tests about 4 GB more" >&2
fi
RBEE_FIXTURE="$(e2e/fetch-fixture.sh)"
export RBEE_FIXTURE
# The instruct fixtures land in the same cache, where the tests look.
e2e/fetch-fixture.sh smollm2 >/dev/null
e2e/fetch-fixture.sh qwen-coder >/dev/null
# Tests run in parallel; each engine uses one compute thread so two tests
# share the two cores instead of fighting over them.
export CANDLE_NUM_THREADS="${CANDLE_NUM_THREADS:-1}"

status=0
# Style and lints first: a failure here is cheap to see. clippy covers the
# app crate too (its system libraries are installed above).
cargo fmt --all --check || status=1
cargo clippy --workspace --all-targets --quiet -- -D warnings || status=1
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast --failure-output final "$@" || status=1
else
  cargo test --no-fail-fast "$@" || status=1
fi
# The openai SDKs (Python and npm) against a real `rbee serve`; the tests
# above built the binary.
e2e/openai/run.sh "$CARGO_TARGET_DIR/debug/rbee" || status=1
# The UI in a real Chromium against real nodes.
e2e/browser/run.sh "$CARGO_TARGET_DIR/debug/rbee" || status=1
# The desktop app: window, tray, a chat, Quit.
e2e/app/run.sh "$CARGO_TARGET_DIR/debug/rbee" || status=1
# A full disk (a small tmpfs) and the swarm on a LAN of network namespaces
# (both need root, as CI runs).
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo -E"; fi
$SUDO python3 e2e/disk/full.py "$CARGO_TARGET_DIR/debug/rbee" "$RBEE_FIXTURE" || status=1
$SUDO python3 e2e/lan/lan.py "$CARGO_TARGET_DIR/debug/rbee" "$RBEE_FIXTURE" || status=1
exit $status
