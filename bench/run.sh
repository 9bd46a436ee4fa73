#!/usr/bin/env bash
# Builds the release server and load generator, then runs every scenario against a fresh
# server on 127.0.0.1 (temp data dir, relaxed rate limits, one server per scenario so that
# RSS and room state start clean). Results: bench-results/<stamp>/<scenario>.json, and a
# summary on stdout. Every run is bounded (generator --duration ≤ 60 s); the servers are
# stopped on exit.
#
#   bench/run.sh                 # every scenario
#   bench/run.sh fanout rooms    # some of them
#   DURATION=20 REPEAT=3 bench/run.sh fanout
#   SERVER=/tmp/old/target/release/edgechat bench/run.sh fanout-open   # A/B another build
#   BENCH=/tmp/old/target/release/edgechat-bench bench/run.sh fanout     # A/B another generator
#   NO_BUILD=1 SERVER=… BENCH=… bench/run.sh idle-rooms   # binaries built elsewhere: no cargo
#   bench/run.sh peers <workers-chat-demo checkout>   # issue 15's peers (bench/peers/run.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1-}" = peers ]; then
    shift
    exec bench/peers/run.sh "$@"
fi

SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -eq 0 ] && SCENARIOS=(fanout fanout-open fanout-light rooms rooms-open rooms-busy rooms-busy-open join-storm idle-conns idle-rooms)
DURATION=${DURATION:-10}
REPEAT=${REPEAT:-1}
PORT=${PORT:-18787}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
# Idle scenarios open their connections in waves, hibernating every room after each (the
# steady state of many hibernated rooms; see bench/src/idle.rs). WAVES=1: one burst.
WAVES=${WAVES:-10}
URL="http://127.0.0.1:$PORT"
TOKEN="bench-$$"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="bench-results/$STAMP"
mkdir -p "$OUT"

[ -n "${NO_BUILD-}" ] || cargo build --release -q -p edgechat-server -p edgechat-bench
# SERVER=<path to another edgechat binary> compares builds with the same generator.
SERVER=${SERVER:-target/release/edgechat}
# BENCH=<path to another edgechat-bench binary> compares generators against the same server.
BENCH=${BENCH:-target/release/edgechat-bench}

# Both processes need one descriptor per connection (the hard limit caps the idle test).
ulimit -n "$(ulimit -Hn)"
echo "nofile limit: $(ulimit -n)"

DATA=$(mktemp -d /tmp/edgechat-bench.XXXXXX)
SERVER_PID=
stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}
trap 'stop_server; rm -rf "$DATA"' EXIT

start_server() {
    stop_server
    rm -f "$DATA"/db* "$DATA"/server.out
    # Relaxed limiter: 1 ms per action and a huge grace, so the per-IP limiter never
    # throttles (each session still waits for its limiter's answer between messages).
    # The outbound queue must hold a join's roster plus history (1,000 users + 100).
    EDGECHAT_LOG=warn "$SERVER" serve --listen "127.0.0.1:$PORT" --data "$DATA/db" \
        --rate-limit-cost-ms 1 --rate-limit-grace-ms 100000000 \
        --max-connections 19000 --outbound-queue 4096 --admin-token "$TOKEN" "$@" \
        >"$DATA/server.out" 2>"$DATA/server.err" &
    SERVER_PID=$!
    # Ready once it answers HTTP (not merely once it printed its address).
    for _ in $(seq 1 100); do
        if grep -q listening "$DATA/server.out" 2>/dev/null \
            && (exec 3<>"/dev/tcp/127.0.0.1/$PORT" && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && head -c 12 <&3 | grep -q 200); then
            return 0
        fi
        sleep 0.1
    done
    echo "server did not start:"; cat "$DATA/server.err"; exit 1
}

bench() { # name, then generator arguments
    local name=$1; shift
    echo "== $name: load $(cut -d' ' -f1-3 /proc/loadavg)"
    "$BENCH" --url "$URL" --spread-ips 1000 --server-pid "$SERVER_PID" --json "$OUT/$name.json" "$@" \
        2>&1 | tee "$OUT/$name.txt" | grep -E "ready|prefilled|joined in|(accepted|deliveries)_per_sec|latency\.p(50|99)_ms|latency\.max|server_cores|runqueue|per_server_cpu|joins_per_sec|connect_to_ready\.p(50|99)|bytes_per_connection|rss_kib|errors\.|short_replays" || true
}

for scenario in "${SCENARIOS[@]}"; do
    for run in $(seq 1 "$REPEAT"); do
        tag="$scenario-$run"
        case "$scenario" in
            fanout)      start_server; bench "$tag" fanout --duration "$DURATION" ;;
            fanout-open) start_server; bench "$tag" fanout --senders 100 --rate 200 --duration "$DURATION" ;;
            fanout-light) start_server; bench "$tag" fanout --senders 100 --rate 50 --duration "$DURATION" ;;
            # One fast sender (a bot, a bridge): frames sent while the previous answer is in
            # flight are held, not refused (issue 15's pipelining).
            fanout-one)  start_server; bench "$tag" fanout --senders 1 --rate 200 --duration "$DURATION" ;;
            rooms-open)  start_server; bench "$tag" rooms --rate 5000 --duration "$DURATION" --connect-concurrency 128 ;;
            rooms)       start_server; bench "$tag" rooms --duration "$DURATION" --connect-concurrency 128 ;;
            # Every client of every room sends (closed loop): a room's turn carries several
            # messages, so each connection gets several frames per write.
            rooms-busy)  start_server; bench "$tag" rooms --senders 10 --duration "$DURATION" --connect-concurrency 128 ;;
            rooms-busy-open) start_server; bench "$tag" rooms --senders 10 --rate 15000 --duration "$DURATION" --connect-concurrency 128 ;;
            join-storm)  start_server; bench "$tag" join-storm --rooms 10 --history 100 --count 20000 --duration 60 ;;
            idle-conns)  start_server; bench "$tag" idle --connections "$IDLE_CONNECTIONS" --rooms 100 --waves "$WAVES" --admin-token "$TOKEN" ;;
            idle-rooms)  start_server; bench "$tag" idle --connections "$IDLE_CONNECTIONS" --rooms "$IDLE_CONNECTIONS" --waves "$WAVES" --admin-token "$TOKEN" ;;
            *) echo "unknown scenario $scenario"; exit 2 ;;
        esac
    done
done
stop_server

echo "== summary ($OUT)"
python3 bench/summary.py "$OUT" || true
echo "results in $OUT"
