#!/usr/bin/env bash
# CI for the Workers adapter (called by .ci/run): installs the pinned tools that are missing
# (tools.sh), checks that the npm packages install on every platform, builds the Worker for
# wasm32 offline with worker-build, reports the wasm size, then runs the conformance suite
# against it under workerd (test/e2e.mjs), with forced hibernation.
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=tools.sh
source ./tools.sh

step "install anywhere: lockfile as npm writes it, nothing platform-specific required"
node test/install-anywhere.mjs

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
