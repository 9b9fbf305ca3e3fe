#!/usr/bin/env bash
# Restart under load (issue 20): tierdns A serves `loadtest load` at 20 000 qps on
# loopback (a Zipf mix, 64 source ports, `loadtest responder` as the upstream);
# tierdns B starts on the same address (SO_REUSEPORT); once B logs that it runs
# (every shard serving), A gets SIGTERM and drains (default shutdown_grace). The
# generator counts every query without an answer within 2 s as lost; this checks
# the count against MAX_LOST (default 50 of ~160 000: most runs lose 0, one in ten
# lost 25 on epoll, unexplained yet; see the README, "Shutdown and restart"), on
# both io backends. About 25 s.
# TIERDNS_BIN and LOADTEST_BIN name prebuilt binaries (else both are built).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
tmp=$(mktemp -d /tmp/tierdns-loadtest-restart.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
target=${CARGO_TARGET_DIR:-target}
if [ -z "${TIERDNS_BIN:-}" ]; then
    cargo build --release --bin tierdns 2>&1 | tail -1
    TIERDNS_BIN=$target/release/tierdns
fi
if [ -z "${LOADTEST_BIN:-}" ]; then
    cargo build --release -p loadtest --bin loadtest 2>&1 | tail -1
    LOADTEST_BIN=$target/release/loadtest
fi
QPS=${QPS:-20000} DURATION=${DURATION:-8} MAX_LOST=${MAX_LOST:-50}
PORT=${PORT:-15353} UP=${UP_PORT:-15399}

# wait_for FILE TEXT SECONDS: until FILE holds TEXT, at most SECONDS.
wait_for() {
    local end=$((SECONDS + $3))
    until grep -q "$2" "$1" 2>/dev/null; do
        [ "$SECONDS" -lt "$end" ] || { echo "FAIL: no '$2' in $1 within $3 s"; cat "$1"; exit 1; }
        sleep 0.05
    done
}

timeout 120 "$LOADTEST_BIN" responder --listen "127.0.0.1:$UP" --duration 100 2>"$tmp/responder.log" &
pids+=($!)
wait_for "$tmp/responder.log" "responder" 10

failed=0
for io in ${IOS:-uring epoll}; do
    cat >"$tmp/tierdns.toml" <<TOML
[server]
listen = ["127.0.0.1:$PORT"]
shards = 2
pin_cpus = false
io = "$io"
[metrics]
enabled = false
[[upstream]]
address = "127.0.0.1:$UP"
name = "responder"
TOML
    "$TIERDNS_BIN" --check --config "$tmp/tierdns.toml" >/dev/null
    TIERDNS_LOG=info timeout 60 "$TIERDNS_BIN" --config "$tmp/tierdns.toml" 2>"$tmp/a.log" &
    a=$!
    pids+=("$a")
    wait_for "$tmp/a.log" "running" 10
    timeout 60 "$LOADTEST_BIN" load --server "127.0.0.1:$PORT" --rate "$QPS" --duration "$DURATION" \
        --sockets 64 --timeout 2 --quiet --json "$tmp/load-$io.json" >"$tmp/load.txt" 2>"$tmp/load.err" &
    load=$!
    pids+=("$load")
    sleep 2
    # The restart: B on the same address, serving, then SIGTERM to A.
    TIERDNS_LOG=info timeout 60 "$TIERDNS_BIN" --config "$tmp/tierdns.toml" 2>"$tmp/b.log" &
    b=$!
    pids+=("$b")
    wait_for "$tmp/b.log" "running" 10
    sleep 1
    kill -TERM "$a"
    rc=0
    wait "$a" || rc=$?
    [ "$rc" -eq 0 ] || { echo "FAIL: $io: A exited $rc"; cat "$tmp/a.log"; failed=1; }
    wait "$load" || { echo "FAIL: $io: loadtest failed"; cat "$tmp/load.err"; failed=1; }
    [ -z "${SHOW_LOGS:-}" ] || tail -n 3 "$tmp/a.log" "$tmp/b.log"
    kill -TERM "$b"
    wait "$b" || true
    line=$(grep -E 'queries sent [0-9]+, answered [0-9]+, lost [0-9]+' "$tmp/load.txt" || true)
    [ -n "$line" ] || { echo "FAIL: $io: no result line"; cat "$tmp/load.txt" "$tmp/load.err"; exit 1; }
    read -r sent answered lost <<<"$(sed -E 's/.*queries sent ([0-9]+), answered ([0-9]+), lost ([0-9]+).*/\1 \2 \3/' <<<"$line")"
    echo "$io: restart at $QPS qps: sent $sent, answered $answered, lost $lost (bound $MAX_LOST)"
    if [ "$lost" -gt "$MAX_LOST" ] || [ "$sent" -lt $((QPS * DURATION / 2)) ]; then
        echo "FAIL: $io: restart under load lost $lost of $sent (bound $MAX_LOST)"
        failed=1
    fi
done
[ "$failed" -eq 0 ] || exit 1
echo "PASS: restart under load on ${IOS:-uring epoll}: lost at most $MAX_LOST"
