#!/usr/bin/env bash
# Side-by-side benchmark of edgechat-worker and the Cloudflare workers-chat-demo under one
# workerd (see bench/run.mjs and README.md, "Benchmark"):
#
#   bash bench/run.sh /path/to/workers-chat-demo [--seconds 8] [--rounds 2] [--markdown ../../BENCHMARKS.md]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=../tools.sh
source ./tools.sh
step "benchmark: edgechat-worker and workers-chat-demo under one workerd"
"${with_node[@]}" node bench/run.mjs "$@"
