#!/usr/bin/env bash
# Issue 15's peers side by side: edgechat, the seed demo on workerd, socket.io 4 and
# Centrifuge, each started fresh on 127.0.0.1 for each run, under the same generator
# (edgechat-bench --protocol ...), interleaved: every step runs all four servers in a
# rotating order before the next step. Steps: fan-out (1 room × 1,000 clients, 100
# senders) open loop at each of RATES msg/s, many rooms (ROOMS × 10 clients, one closed-loop
# sender each) and idle connections (IDLE_CONNECTIONS over 100 rooms). Results:
# bench-results/<stamp>-peers/<server>-<step>-<pass>.json (+ .rss: the server's RSS after
# the run), then bench/peers/report.py prints the table and writes the SVG charts into
# bench/peers/charts/. Everything it starts is stopped on exit.
#
#   bench/run.sh peers <workers-chat-demo checkout>
#   RATES="100 200" DURATION=5 SERVERS="edgechat centrifuge" bench/run.sh peers /tmp/demo
#   REPEAT=2 STEPS="fanout-200 idle" bench/run.sh peers /tmp/demo
#
# Needs node and npm (socket.io 4 and workerd, bench/peers/package.json) and Debian's
# golang-go with golang-github-centrifugal-centrifuge-dev and the dependencies that
# package leaves out (see build_centrifuge).
set -euo pipefail
cd "$(dirname "$0")/../.."

DEMO_CHECKOUT=${1:?usage: bench/run.sh peers <workers-chat-demo checkout>}
DEMO_CHECKOUT=$(cd "$DEMO_CHECKOUT" && pwd)
SERVERS=(${SERVERS:-edgechat demo socketio centrifuge})
RATES=(${RATES:-50 100 200 400})
DURATION=${DURATION:-6}
# Passes over every step (A B C D, then A B C D again, ...); the report takes the means.
REPEAT=${REPEAT:-1}
# Fewer than bench/run.sh's 1,000 rooms × 10 and 10,000 idle connections: workerd holds two
# descriptors per WebSocket (plus the SQLite files of each room), and the hard limit of open
# files here is 20,000 per process.
ROOMS=${ROOMS:-500}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-5000}
STEPS=(${STEPS:-$(printf 'fanout-%s ' "${RATES[@]}") rooms idle})
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="bench-results/$STAMP-peers"
WORK=$(mktemp -d /tmp/edgechat-peers.XXXXXX)
TOKEN="bench-$$"
mkdir -p "$OUT"

PID=
stop() {
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    PID=
}
trap 'stop; rm -rf "$WORK"' EXIT

build_centrifuge() {
    # GOPATH mode over Debian's /usr/share/gocode: offline, no module downloads. The
    # centrifuge package does not depend on all of its imports; these Debian packages
    # provide the rest.
    local missing=()
    for package in golang-go golang-github-centrifugal-centrifuge-dev \
        golang-github-centrifugal-protocol-dev golang-github-igm-sockjs-go-dev \
        golang-github-fzambia-eagle-dev golang-github-mna-redisc-dev; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "missing Debian packages: ${missing[*]} (apt-get install them)"; exit 1
    fi
    GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= \
        go build -o "$WORK/centrifuge-chat" ./bench/peers/centrifuge
}

echo "== building ($(date -u +%H:%M:%S))"
cargo build --release -q -p edgechat-server -p edgechat-bench
build_centrifuge
if [ ! -x bench/peers/node_modules/.bin/workerd ] || [ bench/peers/package.json -nt bench/peers/node_modules/.package-lock.json ]; then
    (cd bench/peers && npm install --no-audit --no-fund)
fi
WORKERD=bench/peers/node_modules/.bin/workerd
BENCH=target/release/edgechat-bench
ulimit -n "$(ulimit -Hn)"

# Not bench/run.sh's 18787: another run on the same machine must not answer for ours.
declare -A PORT=([edgechat]=28787 [centrifuge]=28788 [socketio]=28789 [demo]=28790)

listening() { # port: something answers HTTP 200 on /
    (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3 \
        && head -c 12 <&3 | grep -q 200) 2>/dev/null
}
declare -A PROTOCOL=([edgechat]=edgechat [demo]=edgechat [socketio]=socketio [centrifuge]=centrifuge)

start() { # server
    stop
    local port=${PORT[$1]} log="$WORK/$1.log"
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port is already taken; stop whatever listens there"; exit 1
    fi
    case "$1" in
        # As bench/run.sh: a limiter that never throttles at these rates, fsync per batch.
        edgechat)
            rm -rf "$WORK/edgechat"; mkdir -p "$WORK/edgechat"
            EDGECHAT_LOG=warn target/release/edgechat serve --listen "127.0.0.1:$port" \
                --data "$WORK/edgechat/db" --rate-limit-cost-ms 1 --rate-limit-grace-ms 100000000 \
                --max-connections 19000 --outbound-queue 4096 --admin-token "$TOKEN" >"$log" 2>&1 & ;;
        demo)
            rm -rf "$WORK/demo"
            bench/peers/demo.sh "$DEMO_CHECKOUT" "$WORK/demo" "$port"
            "$WORKERD" serve "$WORK/demo/config.capnp" >"$log" 2>&1 & ;;
        socketio) node bench/peers/socketio.mjs "$port" >"$log" 2>&1 & ;;
        centrifuge) "$WORK/centrifuge-chat" -listen "127.0.0.1:$port" >"$log" 2>&1 & ;;
    esac
    PID=$!
    for _ in $(seq 1 100); do
        kill -0 "$PID" 2>/dev/null || break
        listening "$port" && return 0
        sleep 0.1
    done
    echo "$1 did not start:"; cat "$log"; exit 1
}

run() { # server, step, pass
    local server=$1 step=$2 tag="$1-$2-$3" args=()
    local port=${PORT[$server]}
    case "$step" in
        fanout-*) args=(fanout --senders 100 --rate "${step#fanout-}" --duration "$DURATION") ;;
        rooms) args=(rooms --rooms "$ROOMS" --duration "$DURATION" --connect-concurrency 128) ;;
        idle)
            args=(idle --connections "$IDLE_CONNECTIONS" --rooms 100)
            # edgechat also reports its hibernated figure; the peers keep every room
            # resident, so their reading is taken at once.
            if [ "$server" = edgechat ]; then args+=(--admin-token "$TOKEN"); else args+=(--hibernate-wait 0.1); fi ;;
    esac
    # The demo keys its limiter objects on CF-Connecting-IP, which workerd alone does not
    # set: every client shares one limiter object (asked about every message, never
    # waiting). PEER_DEMO_IP_HEADER=1 gives each client its own (one more Durable Object
    # per client: slower joins and more memory per connection).
    local header=()
    [ "$server" = demo ] && [ "${PEER_DEMO_IP_HEADER:-0}" = 1 ] && header=(--ip-header CF-Connecting-IP)
    echo "== $tag: load $(cut -d' ' -f1-3 /proc/loadavg) ($(date -u +%H:%M:%S))"
    "$BENCH" --url "http://127.0.0.1:$port" --protocol "${PROTOCOL[$server]}" --spread-ips 1000 \
        "${header[@]}" --server-pid "$PID" --json "$OUT/$tag.json" "${args[@]}" \
        >"$OUT/$tag.txt" 2>&1 || echo "   (generator failed: $(head -1 "$OUT/$tag.txt"))"
    grep -E "ready in|joined in|^result\.(accepted|deliveries)_per_sec|^result\.latency\.p(50|99)_ms|server_cores|bytes_per_connection|errors\.(connect|error_frames|closed_early)" \
        "$OUT/$tag.txt" | sed 's/^/   /' || true
    printf '{"rss_kib": %s, "hwm_kib": %s, "loadavg": "%s"}\n' \
        "$(awk '/^VmRSS/ {print $2}' "/proc/$PID/status")" "$(awk '/^VmHWM/ {print $2}' "/proc/$PID/status")" \
        "$(cut -d' ' -f1-3 /proc/loadavg)" >"$OUT/$tag.rss"
}

echo "nofile limit: $(ulimit -n); servers: ${SERVERS[*]}; steps: ${STEPS[*]}"
turn=0
for pass in $(seq 1 "$REPEAT"); do
    for step in "${STEPS[@]}"; do
        # Rotate the order each step, so that no server always follows the same one.
        for i in "${!SERVERS[@]}"; do
            server=${SERVERS[$(((i + turn) % ${#SERVERS[@]}))]}
            start "$server"
            run "$server" "$step" "$pass"
            stop
        done
        turn=$((turn + 1))
    done
done
uptime | tee "$OUT/uptime"
python3 bench/peers/report.py "$OUT" bench/peers/charts
echo "results in $OUT"
