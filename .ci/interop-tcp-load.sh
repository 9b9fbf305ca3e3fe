#!/usr/bin/env bash
# Interop check: dnsperf over TCP, pipelined, against tierdns with its default
# limits in front of a loopback NSD (issue 18: bounds that well-behaved clients never
# feel). Not a benchmark: a bounded query count, a few seconds per run.
#
#   .ci/interop-tcp-load.sh                      builds target/release/tierdns, then runs
#   TIERDNS_BIN=path .ci/interop-tcp-load.sh     uses that binary instead of building
#   KEEP_WORKDIR=1 .ci/interop-tcp-load.sh       keeps the temp dir (configs, logs, outputs)
#
# What it checks, for io = "uring" and then io = "epoll", with every [limits] key at
# its default (only the listen address, shards and [access] set):
#   - `dnsperf -m tcp -c 20` and `-c 200`, each client a TCP connection from
#     127.0.0.1 (one /24: the per-prefix connection cap applies to all of them),
#     several queries outstanding per connection: every query sent is answered
#     ("Queries lost: 0"), and tierdns closed no connection and dropped nothing
#     for a limit (/metrics: no tierdns_tcp_closed_total, no tcp_client_limit or
#     tcp_connection_limit drops).
#
# Only 127.0.0.1 is ever contacted. tierdns is never started without --config.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT"
DATA="$HERE/interop"
HELPER=(python3 "$DATA/dnscheck.py")
. "$HERE/interop/common.sh"
NSD_PID=""
TIERDNS_PID=""
STOP_ON_EXIT=(TIERDNS_PID NSD_PID)

install_missing nsd:nsd dig:bind9-dnsutils dnsperf:dnsperf python3:python3
tierdns_binary

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tierdns-tcp-load.XXXXXX")"

answers() { # PORT
    dig @"$HOST" -p "$1" +time=1 +tries=1 interop.test SOA 2>/dev/null | grep -q 'status: NOERROR'
}

# ---------------------------------------------------------------- NSD
start_nsd

# The queries: names of the zone, answers and negative answers, a few misses each
# run then cache hits.
cat >"$WORK/queries.txt" <<EOF
www.interop.test A
www.interop.test AAAA
mail.interop.test A
alias.interop.test A
interop.test MX
txt.interop.test TXT
v4only.interop.test AAAA
nx1.interop.test A
longtxt.interop.test TXT
interop.test SOA
EOF

# ---------------------------------------------------------------- tierdns
start_tierdns() { # IO
    local io="$1" conf="$WORK/tierdns-$1.toml"
    read -r DNS_PORT METRICS_PORT <<<"$("${HELPER[@]}" freeports 2)"
    cat >"$conf" <<EOF
[server]
listen = ["$HOST:$DNS_PORT"]
shards = 2
io = "$io"
pin_cpus = false

[metrics]
enabled = true
listen = "$HOST:$METRICS_PORT"

[access]
allow = ["$HOST/32"]

[[upstream]]
address = "$HOST:$NSD_PORT"
name = "nsd"
EOF
    TIERDNS_LOG=info "$TIERDNS_BIN" --config "$conf" >"$WORK/tierdns-$io.log" 2>&1 &
    TIERDNS_PID=$!
    wait_for 15 "tierdns ($io) to answer" answers "$DNS_PORT"
}

# field FILE LABEL: the first number after "LABEL:" in dnsperf's summary.
field() {
    sed -n "s/^ *$2: *\([0-9][0-9]*\).*/\1/p" "$1" | head -1
}

# run_dnsperf CLIENTS OUTSTANDING: a bounded run; passes when nothing is lost.
run_dnsperf() {
    local clients="$1" outstanding="$2" out="$WORK/dnsperf-$IO-c$1.txt" sent completed lost
    # 30 passes through the file per client, at most 20 s; 5 s for an answer.
    timeout 60 dnsperf -s "$HOST" -p "$DNS_PORT" -m tcp -c "$clients" -q "$outstanding" \
        -d "$WORK/queries.txt" -n $((clients * 30)) -l 20 -t 5 >"$out" 2>&1 || true
    sent="$(field "$out" "Queries sent")"
    completed="$(field "$out" "Queries completed")"
    lost="$(field "$out" "Queries lost")"
    ANSWERED=$((ANSWERED + ${completed:-0}))
    if [[ -n "$sent" && "$sent" -gt 0 && "$lost" == 0 && "$completed" == "$sent" ]]; then
        pass "[$IO] dnsperf -m tcp -c $clients -q $outstanding: $completed of $sent answered, 0 lost"
    else
        fail "[$IO] dnsperf -m tcp -c $clients -q $outstanding: sent ${sent:-?}, completed ${completed:-?}, lost ${lost:-?} (output: $out)"
        cat "$out"
    fi
}

metrics() {
    python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
        "http://$HOST:$METRICS_PORT/metrics"
}

# tcp_counted N: /metrics counts at least N queries answered over TCP (the shards
# flush their counters every second).
tcp_counted() {
    metrics | awk -v n="$1" '/^tierdns_queries_total\{.*transport="tcp"/ { s += $NF } END { exit !(s >= n) }'
}

# no_limit_hit: /metrics shows no connection closed or refused by a limit.
no_limit_hit() {
    local body hits
    body="$(metrics)" || { fail "[$IO] /metrics unreadable"; return 0; }
    hits="$(grep -E '^tierdns_tcp_closed_total|^tierdns_drops_total\{reason="(tcp_client_limit|tcp_connection_limit)"\}' <<<"$body" || true)"
    if [[ -z "$hits" ]]; then
        pass "[$IO] no stream connection closed or refused by a limit"
    else
        fail "[$IO] limits hit: $hits"
    fi
}

IOS=(uring epoll)
if [[ -n "${IO_BACKENDS:-}" ]]; then read -r -a IOS <<<"$IO_BACKENDS"; fi
for IO in "${IOS[@]}"; do
    log "tierdns io = $IO"
    if ! start_tierdns "$IO"; then
        fail "[$IO] tierdns did not start (with io = uring, the kernel may refuse io_uring)"
        stop_pid "$TIERDNS_PID"
        TIERDNS_PID=""
        continue
    fi
    ANSWERED=0
    run_dnsperf 20 400
    run_dnsperf 200 2000
    if wait_for 10 "/metrics to count the TCP answers" tcp_counted "$ANSWERED"; then
        no_limit_hit
    else
        fail "[$IO] /metrics does not count $ANSWERED TCP answers"
    fi
    stop_pid "$TIERDNS_PID"
    TIERDNS_PID=""
done

echo
echo "tcp load: $PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
