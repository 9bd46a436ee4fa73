#!/usr/bin/env bash
# Profiles the server under one scenario: perf (software cpu-clock event, DWARF call graphs)
# on the server process for PERF_SECS in the middle of the run, then a flamegraph with
# inferno (`cargo install --locked inferno`). The build is the `profiling` profile: release
# code generation (LTO, one codegen unit) plus line tables and symbols, which the shipped
# release binary strips.
#
#   bench/profile.sh fanout            # or: rooms
#   bench/profile.sh fanout --senders 100 --rate 200   # more generator arguments (fanout-open)
# Output: bench-results/profile-<scenario>-<stamp>.{svg,txt} (top symbols, self and inclusive).
set -euo pipefail
cd "$(dirname "$0")/.."
SCENARIO=${1:-fanout}
shift || true
PERF_SECS=${PERF_SECS:-5}
PORT=${PORT:-18789}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="bench-results/profile-$SCENARIO-$STAMP"
mkdir -p bench-results
cargo build --profile profiling -q -p edgechat-server -p edgechat-bench
DATA=$(mktemp -d /tmp/edgechat-profile.XXXXXX)
EDGECHAT_LOG=warn "${CARGO_TARGET_DIR:-target}"/profiling/edgechat serve --listen "127.0.0.1:$PORT" --data "$DATA/db" \
    --rate-limit-cost-ms 1 --rate-limit-grace-ms 100000000 --max-connections 19000 \
    --outbound-queue 4096 >"$DATA/out" 2>"$DATA/err" &
SERVER_PID=$!
trap 'kill -TERM $SERVER_PID 2>/dev/null; wait $SERVER_PID 2>/dev/null; rm -rf "$DATA"' EXIT
sleep 1
"${CARGO_TARGET_DIR:-target}"/profiling/edgechat-bench --url "http://127.0.0.1:$PORT" --spread-ips 1000 \
    --server-pid "$SERVER_PID" --json "$OUT.json" "$SCENARIO" "$@" --duration 12 >"$OUT.bench.txt" 2>&1 &
BENCH_PID=$!
sleep 6  # connect and join first
perf record -q -F 999 -e cpu-clock --call-graph dwarf,16384 -p "$SERVER_PID" \
    -o "$DATA/perf.data" -- sleep "$PERF_SECS" 2>/dev/null
wait "$BENCH_PID" || true
{
    echo "# self"
    perf report -i "$DATA/perf.data" --stdio --no-children --sort sym -g none 2>/dev/null | grep '%' | head -40
    echo "# inclusive"
    perf report -i "$DATA/perf.data" --stdio --children --sort sym -g none 2>/dev/null | grep '%' | head -60
} >"$OUT.txt" || true  # head closes its pipe early (SIGPIPE under pipefail)
perf script -i "$DATA/perf.data" 2>"$DATA/script.err" | inferno-collapse-perf | inferno-flamegraph >"$OUT.svg" || { echo "flamegraph failed:"; tail -3 "$DATA/script.err"; }
grep -E 'deliveries_per_sec|accepted_per_sec|latency.p99' "$OUT.bench.txt" || true
echo "wrote $OUT.svg $OUT.txt"
