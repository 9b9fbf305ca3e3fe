#!/usr/bin/env bash
# The staggered tiers seen from dig and kdig: five simulated upstreams on
# 127.0.0.11-15 answer after 20, 60, 100, 140 and 180 ms, each with its own two
# addresses. Through tierdns (both io backends) the first answer is the fastest
# active-tier upstream's, at about its latency; once the background completion is
# done, a repeat query returns the union of all ten addresses from the cache. Also:
# /metrics is valid Prometheus text (promtool), and deploy/'s Prometheus config and
# alerting rules check.
#
#   .ci/interop-tiers.sh                 builds target/release/tierdns, then runs
#   TIERDNS_BIN=path .ci/interop-tiers.sh
#
# Loopback only; tierdns always runs with --config; everything is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_COLOR=1
PASSED=0 FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "PASS: $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $*"; }

if ! command -v dig >/dev/null || ! command -v kdig >/dev/null || ! command -v promtool >/dev/null; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends bind9-dnsutils knot-dnsutils prometheus >/dev/null
fi
if [ -z "${TIERDNS_BIN:-}" ]; then
    cargo build --release 2>&1 | tail -1
    TIERDNS_BIN=${CARGO_TARGET_DIR:-target}/release/tierdns
fi

WORK=$(mktemp -d /tmp/tierdns-tiers.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.3
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

FLEET_PORT=$(python3 .ci/interop/dnscheck.py freeports 1)
python3 .ci/interop/fleet.py "$FLEET_PORT" 20,60,100,140,180 240 &
PIDS+=($!)

# dig/kdig: "Query time: N msec" / ";; ... in N ms"; answers as sorted addresses.
addresses() { grep -E '^[^;].*\sIN\s+A\s' | awk '{print $NF}' | sort || true; }

run_backend() { # IO
    local io=$1 port mport conf out want_first want_all took
    read -r port mport <<<"$(python3 .ci/interop/dnscheck.py freeports 2 | tr '\n' ' ')"
    conf=$WORK/tierdns-$io.toml
    {
        printf '[server]\nlisten = ["127.0.0.1:%s"]\nshards = 2\nio = "%s"\npin_cpus = false\n' "$port" "$io"
        printf '[metrics]\nlisten = "127.0.0.1:%s"\n' "$mport"
        for i in 0 1 2 3 4; do
            printf '[[upstream]]\naddress = "127.0.0.%s:%s"\nname = "sim%s"\n' $((11 + i)) "$FLEET_PORT" "$i"
        done
    } >"$conf"
    "$TIERDNS_BIN" --config "$conf" 2>"$WORK/tierdns-$io.log" &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 1 50); do
        grep -q "running" "$WORK/tierdns-$io.log" && break
        sleep 0.1
    done
    want_first=$(printf '10.0.0.1\n10.0.0.2\n')
    want_all=$(for i in 0 1 2 3 4; do printf '10.0.%s.1\n10.0.%s.2\n' "$i" "$i"; done | sort)
    for client in dig kdig; do
        local name="$client-$io.test."
        local opts=(+tries=1 +time=3)
        [ "$client" = kdig ] && opts=(+retry=0 +time=3)
        out=$($client @127.0.0.1 -p "$port" "$name" A "${opts[@]}" 2>&1 || true)
        took=$(grep -oE '(Query time: [0-9]+ msec|in [0-9.]+ ms)' <<<"$out" | grep -oE '[0-9]+' | head -1 || true)
        if [ "$(addresses <<<"$out")" = "$want_first" ]; then
            pass "[$io/$client] first answer is the fastest upstream's (10.0.0.1, 10.0.0.2)"
        else
            fail "[$io/$client] first answer: $(addresses <<<"$out" | tr '\n' ' ')"
        fi
        if [ -n "$took" ] && [ "$took" -lt 60 ]; then
            pass "[$io/$client] answered in ${took} ms: the fastest upstream's 20 ms, not the next tier's"
        else
            fail "[$io/$client] answered in '${took}' ms (wanted under 60)"
        fi
        sleep 1
        out=$($client @127.0.0.1 -p "$port" "$name" A "${opts[@]}" 2>&1 || true)
        if [ "$(addresses <<<"$out")" = "$want_all" ]; then
            pass "[$io/$client] after background completion the cache holds all 10 addresses"
        else
            fail "[$io/$client] after completion: $(addresses <<<"$out" | tr '\n' ' ')"
        fi
    done
    # The exposition is valid Prometheus text (promtool, from Debian's prometheus).
    sleep 1.2
    if python3 -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$mport/metrics', timeout=5).read().decode())" >"$WORK/metrics-$io.txt" &&
        promtool check metrics <"$WORK/metrics-$io.txt" >"$WORK/promtool-$io.txt" 2>&1; then
        pass "[$io] /metrics passes promtool check metrics ($(grep -c '^tierdns_' "$WORK/metrics-$io.txt") series)"
    else
        fail "[$io] promtool check metrics: $(head -5 "$WORK/promtool-$io.txt" "$WORK/metrics-$io.txt" 2>/dev/null | tr '\n' ' ')"
    fi
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
}

run_backend uring
run_backend epoll
if promtool check config deploy/prometheus.yml >"$WORK/promtool-config.txt" 2>&1; then
    pass "deploy/prometheus.yml and its rules pass promtool check config"
else
    fail "promtool check config: $(tr '\n' ' ' <"$WORK/promtool-config.txt")"
fi
echo "interop-tiers: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
