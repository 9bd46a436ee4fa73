# Sourced by ci.sh and bench/run.sh (from this folder): installs the pinned tools that are
# missing and the npm packages, chooses a Node that satisfies package.json's engines, and
# exports what worker-build needs to build offline. Defines `step` and `with_node`.
# Never set RUSTFLAGS: the repository's .cargo/config.toml carries `--cfg madsim`.

WORKER_BUILD_VERSION=0.8.7
WASM_BINDGEN_VERSION=0.2.129
# Used only when the system Node is older than `engines` (see below).
NODE_PACKAGE=node@22.23.3

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
# Pinned in package.json (wrangler 4.164.0, esbuild 0.28.2, ws 8.21.0); the platform
# binaries of workerd and esbuild are their optional dependencies, so this installs on any
# platform. `npm install`, not `npm ci`: test/install-anywhere.mjs catches lockfile drift.
if [ ! -x node_modules/.bin/wrangler ] || [ package.json -nt node_modules/.package-lock.json ] \
  || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm install --no-audit --no-fund
fi

# Wrangler 4.164 needs Node >= 22.12 (engines in package.json). An older system Node runs the
# steps that need Node through the npm package `node` (it installs the official build for
# this platform into npm's cache; it is not a dependency of the project). A Node that is
# new enough is used as it is.
if node test/check-node.mjs 2>/dev/null; then
  with_node=()
else
  echo "system Node $(node --version) is older than package.json's engines; using $NODE_PACKAGE from npm"
  with_node=(npx --yes -p "$NODE_PACKAGE" --)
  "${with_node[@]}" node test/check-node.mjs
fi

# Wrangler first on PATH; worker-build uses these binaries and downloads nothing.
PATH="$PWD/node_modules/.bin:$PATH"
export PATH
export WASM_BINDGEN_BIN=wasm-bindgen
# The esbuild that npm installed for this platform (its bin links to the native binary).
export ESBUILD_BIN="$PWD/node_modules/.bin/esbuild"
"$ESBUILD_BIN" --version >/dev/null
export WRANGLER_SEND_METRICS=false
export CLOUDFLARE_CF_FETCH_ENABLED=false
# The Worker has its own Cargo.lock and target directory (it is not in the host workspace);
# the conformance suite builds in the caller's (test/e2e.mjs reads EDGECHAT_HOST_TARGET_DIR).
export EDGECHAT_HOST_TARGET_DIR="${CARGO_TARGET_DIR-}"
export CARGO_TARGET_DIR="$PWD/target"
