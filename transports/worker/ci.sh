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
# Pinned in package.json (wrangler 4.164.0, esbuild 0.28.2); the platform binaries of
# workerd and esbuild are their optional dependencies, so this installs on any platform.
# `npm install`, not `npm ci`: the lockfile check below catches drift instead.
if [ ! -x node_modules/.bin/wrangler ] || [ package.json -nt node_modules/.package-lock.json ] \
  || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm install --no-audit --no-fund
fi

step "install anywhere: lockfile as npm writes it, nothing platform-specific required"
node test/install-anywhere.mjs

# Wrangler 4.164 needs Node >= 22.12 (engines in package.json). An older system Node runs the
# steps that need Node through the npm package `node` (it installs the official build for
# this platform into npm's cache); a Node that is new enough is used as it is.
NODE_PACKAGE=node@22.23.3
if node test/check-node.mjs 2>/dev/null; then
  with_node=()
else
  echo "system Node $(node --version) is older than package.json's engines; using $NODE_PACKAGE from npm"
  with_node=(npx --yes -p "$NODE_PACKAGE" --)
  "${with_node[@]}" node test/check-node.mjs
fi

# Wrangler first on PATH; worker-build uses these binaries and downloads nothing.
export PATH="$here/node_modules/.bin:$PATH"
export WASM_BINDGEN_BIN=wasm-bindgen
# The esbuild that npm installed for this platform (its bin links to the native binary).
export ESBUILD_BIN="$here/node_modules/.bin/esbuild"
"$ESBUILD_BIN" --version >/dev/null
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
"${with_node[@]}" node test/e2e.mjs "$@"
