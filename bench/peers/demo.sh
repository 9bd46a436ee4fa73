#!/usr/bin/env bash
# Prepares the seed demo (cloudflare/workers-chat-demo) to run on workerd alone, for
# bench/run.sh peers. The demo's code is not part of this repository: this copies the
# checkout's src/chat.mjs and src/chat.html into <dir>, sets its limiter's cost from 5 s
# to 0 (never waits; the same change as transports/worker/bench/run.mjs), and writes a
# workerd config serving it on 127.0.0.1:<port> with both Durable Object classes
# SQLite-backed on local disk under <dir>/do.
#
#   bench/peers/demo.sh <workers-chat-demo checkout> <dir> <port>
#   bench/peers/node_modules/.bin/workerd serve <dir>/config.capnp
set -euo pipefail
checkout=$1 dir=$2 port=$3
mkdir -p "$dir/do"
cp "$checkout/src/chat.mjs" "$checkout/src/chat.html" "$dir/"
cost='this.nextAllowedTime += 5;'
if [ "$(grep -cF "$cost" "$dir/chat.mjs")" != 1 ]; then
    echo "the demo's chat.mjs does not contain \"$cost\" exactly once" >&2
    exit 1
fi
sed -i "s/this\.nextAllowedTime += 5;/this.nextAllowedTime += 0;/" "$dir/chat.mjs"
cat >"$dir/config.capnp" <<CAPNP
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "demo", worker = .demo),
    (name = "do-disk", disk = (path = "$dir/do", writable = true)),
  ],
  sockets = [(name = "http", address = "127.0.0.1:$port", http = (), service = "demo")],
);

const demo :Workerd.Worker = (
  modules = [
    (name = "chat.mjs", esModule = embed "chat.mjs"),
    (name = "chat.html", data = embed "chat.html"),
  ],
  compatibilityDate = "2024-01-01",
  bindings = [
    (name = "rooms", durableObjectNamespace = "ChatRoom"),
    (name = "limiters", durableObjectNamespace = "RateLimiter"),
  ],
  durableObjectNamespaces = [
    (className = "ChatRoom", uniqueKey = "edgechat-bench-rooms", enableSql = true),
    (className = "RateLimiter", uniqueKey = "edgechat-bench-limiters", enableSql = true),
  ],
  durableObjectStorage = (localDisk = "do-disk"),
);
CAPNP
