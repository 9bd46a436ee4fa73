#!/usr/bin/env bash
# The client's tests, as CI runs them: installs Debian's Chromium and playwright-core if
# missing, type-checks, builds the server, then runs the Node tests (Node 20 needs a flag
# for WebSocket).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
[ -d node_modules/playwright-core ] && [ -d node_modules/typescript ] || npm install --no-audit --no-fund
# The declarations describe the module: a typed application compiles, the module checks.
node_modules/.bin/tsc -p test/tsconfig.json
cargo build -p edgechat-server
flags=()
if ! node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)'; then
  flags+=(--experimental-websocket)
fi
node ${flags[@]+"${flags[@]}"} --test test/*.test.mjs
