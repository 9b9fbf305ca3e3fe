#!/usr/bin/env bash
# dot-peers.sh: CPU time per cache hit over DNS over TLS on one reused connection,
# tierdns ([tls], both io backends) beside dnsdist's DoT listener (addTLSLocal).
#
# Every server forwards to the same NSD on 127.0.0.1 (authoritative for "bench.",
# NAMES names), keeps a cache and runs pinned to SERVER_CPU (tierdns with one shard);
# the client (loadtest/dot_load.py: one TLS session, queries pipelined at a fixed
# rate, answers matched by ID) and NSD run on LOAD_CPU. Per server: start, warm the
# cache over that connection kind (one short pass over the names), then a fixed
# rate of cache hits for DURATION seconds on one connection; the server's CPU time
# (utime + stime, every thread, /proc/PID/stat) over exactly that run is charged to
# the queries answered. Every server runs once per round, in turn, for ROUNDS
# rounds; the table shows medians. One run, one machine: compare rows as ratios.
#
# Environment [defaults]: QPS [10000], DURATION [15], ROUNDS [3], NAMES [1000],
#   TICK [0.005]: the client sends QPS * TICK queries every TICK seconds in one write
#   (50 at the defaults: a pipelining client's burst; smaller ticks, smaller bursts),
#   SERVERS ["tierdns tierdns-epoll dnsdist"], SERVER_CPU [0], LOAD_CPU [1],
#   TIERDNS_BIN [target/release/tierdns, built if missing], OUT [stdout only],
#   KEEP_TMP [0].
# Needs nsd, dnsdist, openssl, python3, taskset (apt-get install nsd dnsdist openssl
# python3 util-linux). Loopback only; every run bounded by `timeout`; every process
# started here is killed by PID on exit.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin" LC_ALL=C

QPS=${QPS:-10000}
TICK_S=${TICK:-0.005}
DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-3}
NAMES=${NAMES:-1000}
SERVERS=${SERVERS:-tierdns tierdns-epoll dnsdist}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
TIERDNS_BIN=${TIERDNS_BIN:-$ROOT/target/release/tierdns}
NAME=dns.bench.test
HZ=$(getconf CLK_TCK)

die() { echo "dot-peers: $*" >&2; exit 1; }
log() { echo "--- $*" >&2; }
for t in nsd dnsdist openssl python3 taskset timeout; do
    command -v "$t" >/dev/null || die "$t not found"
done
if [[ ! -x $TIERDNS_BIN ]]; then
    (cd "$ROOT" && timeout 1800 cargo build --release --bin tierdns) >&2
fi

TMP=$(mktemp -d /tmp/tierdns-dot-peers.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    [[ ${KEEP_TMP:-0} == 1 ]] && echo "kept $TMP" >&2 || rm -rf "$TMP"
}
trap cleanup EXIT

freeports() { python3 "$ROOT/.ci/interop/dnscheck.py" freeports "$1"; }
cpu_ticks() { # utime + stime of a process, every thread
    local s
    s=$(<"/proc/$1/stat")
    s=${s##*) }
    # shellcheck disable=SC2086
    set -- $s
    echo $((${12} + ${13}))
}

# ---------------------------------------------------------------- certificates
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$TMP/ca.key" \
    -out "$TMP/ca.pem" -days 2 -subj "/CN=dot-peers CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$TMP/server.key" \
    -out "$TMP/server.csr" -subj "/CN=$NAME" 2>/dev/null
printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n' "$NAME" >"$TMP/server.ext"
openssl x509 -req -in "$TMP/server.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -CAcreateserial \
    -days 2 -extfile "$TMP/server.ext" -out "$TMP/server.pem" 2>/dev/null

# ---------------------------------------------------------------- NSD
{
    echo '$ORIGIN bench.'
    echo '$TTL 3600'
    echo '@ IN SOA ns.bench. hostmaster.bench. 1 3600 600 86400 3600'
    echo '@ IN NS ns.bench.'
    echo 'ns IN A 127.0.0.1'
    for ((i = 0; i < NAMES; i++)); do
        echo "n$i IN A 10.$((i / 65536)).$((i / 256 % 256)).$((i % 256))"
    done
} >"$TMP/bench.zone"
for ((i = 0; i < NAMES; i++)); do echo "n$i.bench"; done >"$TMP/names.txt"
read -r NSD_PORT <<<"$(freeports 1)"
cat >"$TMP/nsd.conf" <<EOF
server:
    ip-address: 127.0.0.1@$NSD_PORT
    port: $NSD_PORT
    do-ip6: no
    server-count: 1
    username: ""
    chroot: ""
    zonesdir: "$TMP"
    database: ""
    zonelistfile: "$TMP/nsd-zone.list"
    xfrdfile: "$TMP/nsd-xfrd.state"
    xfrdir: "$TMP"
    pidfile: "$TMP/nsd.pid"
    logfile: "$TMP/nsd.log"
    verbosity: 0
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: "bench."
    zonefile: "$TMP/bench.zone"
EOF
taskset -c "$LOAD_CPU" nsd -d -c "$TMP/nsd.conf" >"$TMP/nsd.stderr" 2>&1 &
PIDS+=($!)
sleep 1

load() { # PORT RATE SECONDS OUT
    timeout $((${3%.*} + 20)) taskset -c "$LOAD_CPU" python3 "$HERE/dot_load.py" --port "$1" --ca "$TMP/ca.pem" \
        --name "$NAME" --names "$TMP/names.txt" --rate "$2" --duration "$3" --tick "$TICK_S" >"$4"
}
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# ---------------------------------------------------------------- one server
ROWS=() # name|cpu_us|answered|sent|lost
measure() { # ROW
    local row=$1 port dport pid conf c0 c1 ans sent lost i
    read -r port dport <<<"$(freeports 2)"
    case $row in
    tierdns | tierdns-epoll)
        local io=uring
        [[ $row == tierdns-epoll ]] && io=epoll
        conf="$TMP/$row.toml"
        cat >"$conf" <<EOF
[server]
listen = ["127.0.0.1:$dport"]
shards = 1
io = "$io"
pin_cpus = false
[limits]
tcp_max_queries = 0      # no cap: one connection for the whole run (dnsdist has none)
tcp_max_lifetime = "0s"
[metrics]
enabled = false
[tls]
listen = ["127.0.0.1:$port"]
cert_file = "$TMP/server.pem"
key_file = "$TMP/server.key"
[[upstream]]
address = "127.0.0.1:$NSD_PORT"
EOF
        taskset -c "$SERVER_CPU" "$TIERDNS_BIN" --config "$conf" >"$TMP/$row.log" 2>&1 &
        ;;
    dnsdist)
        conf="$TMP/dnsdist.conf"
        cat >"$conf" <<EOF
setSecurityPollSuffix("")
setLocal("127.0.0.1:$dport")
addTLSLocal("127.0.0.1:$port", "$TMP/server.pem", "$TMP/server.key")
setACL({"127.0.0.0/8"})
newServer{address="127.0.0.1:$NSD_PORT", checkName="ns.bench.", checkInterval=1}
getPool(""):setCache(newPacketCache(100000))
EOF
        taskset -c "$SERVER_CPU" dnsdist --supervised --disable-syslog -C "$conf" >"$TMP/$row.log" 2>&1 &
        ;;
    *) die "unknown server $row" ;;
    esac
    pid=$!
    PIDS+=("$pid")
    for ((i = 0; i < 50; i++)); do
        load "$port" 100 1 "$TMP/probe.json" 2>/dev/null && [[ $(field "$TMP/probe.json" answered) -gt 0 ]] && break
        sleep 0.2
    done
    [[ $i -lt 50 ]] || die "$row did not answer over TLS (log: $(tail -3 "$TMP/$row.log"))"
    # Warm-up: every name, twice.
    load "$port" 2000 $(((2 * NAMES + 1999) / 2000)) "$TMP/$row.warm.json"
    sleep 0.5
    c0=$(cpu_ticks "$pid")
    load "$port" "$QPS" "$DURATION" "$TMP/$row.r$ROUND.json"
    c1=$(cpu_ticks "$pid")
    grep -q '"error"' "$TMP/$row.r$ROUND.json" && die "$row: $(cat "$TMP/$row.r$ROUND.json")"
    ans=$(field "$TMP/$row.r$ROUND.json" answered)
    sent=$(field "$TMP/$row.r$ROUND.json" sent)
    lost=$(field "$TMP/$row.r$ROUND.json" lost)
    local us
    us=$(awk -v c=$((c1 - c0)) -v t="$HZ" -v n="$ans" 'BEGIN {printf "%.2f", n ? c * 1e6 / t / n : 0}')
    log "$row round $ROUND: $ans of $sent answered, lost $lost, $((c1 - c0)) ticks: $us µs/query"
    ROWS+=("$row|$us|$ans|$sent|$lost")
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    for s in $SERVERS; do measure "$s"; done
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
{
    echo "| server | CPU µs/query over DoT (median) | ratio to dnsdist | each round | answered/sent (each round) |"
    echo "|---|---:|---:|---|---|"
    base=$(printf '%s\n' "${ROWS[@]}" | awk -F'|' '$1 == "dnsdist" {print $2}' | median)
    for s in $SERVERS; do
        vals=$(printf '%s\n' "${ROWS[@]}" | awk -F'|' -v s="$s" '$1 == s {print $2}')
        counts=$(printf '%s\n' "${ROWS[@]}" | awk -F'|' -v s="$s" '$1 == s {printf "%s%s/%s", sep, $3, $4; sep = ", "}')
        med=$(median <<<"$vals")
        ratio=$(awk -v m="$med" -v b="${base:-0}" 'BEGIN {print (b > 0 ? sprintf("%.2f", m / b) : "-")}')
        echo "| $s | $med | $ratio | $(tr '\n' ' ' <<<"$vals" | sed 's/ $//; s/ /, /g') | $counts |"
    done
    echo
    echo "QPS=$QPS DURATION=$DURATION ROUNDS=$ROUNDS NAMES=$NAMES TICK=$TICK_S ($(awk -v q="$QPS" -v t="$TICK_S" 'BEGIN {printf "%d", q * t + 0.5}') queries per write); server on CPU $SERVER_CPU, client and NSD on CPU $LOAD_CPU;"
    echo "load average before $LOAD0, after $LOAD1; $(nproc) CPUs, $(uname -r); $(date -u '+%Y-%m-%d %H:%M UTC');"
    echo "$("$TIERDNS_BIN" --version 2>/dev/null) ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)), $(dnsdist --version 2>/dev/null | head -1 | awk '{print $1, $2}')"
} | tee ${OUT:+"$OUT"}
