#!/usr/bin/env bash
# Builds the chat window into ui/dist, which the node serves at / (debug
# builds read it from disk; release builds carry it inside the binary).
# `npm install --no-save` rather than `npm ci`: npm writes lock files without
# the other platforms' optional packages (rollup's, esbuild's), which `npm ci`
# then refuses; this installs the locked versions and leaves the lock alone.
set -euo pipefail
cd "$(dirname "$0")"
npm install --no-save --no-audit --no-fund
npm run build
