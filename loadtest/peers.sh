#!/usr/bin/env bash
# peers.sh: CPU time per cache hit of tierdns, dnsdist and unbound, side by side.
#
# Every server forwards to the same NSD on 127.0.0.1, keeps a cache, runs pinned to
# CPU 0 and single-threaded where that is a setting; dnsperf runs pinned to CPU 1.
# For each server: warm the cache with one pass over the name list, then send a fixed
# rate of cache hits and charge the server's CPU time (utime + stime of the whole
# process, every thread, from /proc/PID/stat) over exactly that dnsperf run to the
# queries it completed. One run, one machine: compare the rows as ratios.
#
# MODE=miss measures the other side: CPU time per cache miss and upstream queries per
# miss, under a fixed rate of never-seen names (u<i>.bench., answered by NSD through a
# wildcard), every server fresh (empty cache), no warm-up. Rows there:
#   tierdns-1x   one exchange per miss: one upstream, active_tier_size = 1,
#                complete = false (loadtest/peers/tierdns-1x.toml.in)
#   tierdns-1x-s1  the same with upstream_sockets = 1 (one socket per upstream and
#                shard, as dnsdist has one per backend), not in the default SERVERS
#   tierdns      the defaults ([tiers], [budget]) with five upstreams: the one NSD
#                listening on 127.0.0.1 .. 127.0.0.5 (loadtest/peers/tierdns-5.toml.in)
#   dnsdist, unbound   as in hit mode, forwarding to the NSD on 127.0.0.1
# (each tierdns row once per IO backend, "-epoll" appended for epoll). Upstream queries
# per miss = the queries NSD counted over the run (nsd-control stats_noreset on a unix
# control socket) / queries answered, for every row; for tierdns also from its own
# /metrics (tierdns_upstream_queries_total / tierdns_cache_total{result="miss"}).
#
# Usage:  loadtest/peers.sh            (hit mode)
#         MODE=miss loadtest/peers.sh
# Environment (defaults in brackets):
#   MODE [hit]         hit: cache hits (below); miss: never-seen names (above)
#   QPS [40000]        dnsperf -Q: fixed query rate
#   DURATION [20]      dnsperf -l: seconds of measured load per server and round
#   ROUNDS [3]         rounds; each runs every server once, in turn, so a noisy
#                      machine hits all of them alike; the table shows medians
#   NAMES [1000]       names in the zone and the query file (up to 2000000: the caches
#                      are sized to hold them all, see CACHE below)
#   DIST [uniform]     uniform: the measured run cycles through every name in turn;
#                      zipf: through ZIPF_SAMPLES [500000] names drawn with Zipf's law
#                      (exponent 1, seed 1) from the NAMES names (the warm-up still
#                      asks every name, so every query is a hit)
#   SYSCALLS [0]       1: after each fixed-rate run, a syscall count: the harness
#                      generator at SYS_QPS [5000] queries/s evenly spaced
#                      (--tick-us SYS_TICK_US [200]) for SYS_DURATION [5] s while
#                      `perf stat` counts the server's syscalls (raw_syscalls:sys_enter,
#                      io_uring_enter, epoll_wait + epoll_pwait) per answered query
#   TCP [0]            1: after each fixed-rate run, hits over TCP flat out: dnsperf -m tcp
#                      -c TCP_CONNS [20] -q TCP_OUTSTANDING [2000] for TCP_DURATION [5] s
#                      (pipelined connections); answers per second and the server's CPU
#                      per answer (the responder rows serve no TCP: "-")
#   IO ["uring epoll"] tierdns io backends, one row each ("tierdns", "tierdns-epoll");
#                      IO=epoll runs only the epoll row
#   SERVERS ["tierdns dnsdist unbound"]; MODE=miss: ["tierdns-1x tierdns dnsdist unbound"]
#                      MODE=hit may add "responder": `loadtest responder`, the floor
#                      (one socket, recvmmsg/sendmmsg, one fixed answer, no cache),
#                      and "responder-uring", the io_uring floor (`--io uring`: one
#                      ring, multishot recvmsg into provided buffers, one enter a turn)
#   TIERDNS_BIN        use this tierdns binary instead of `cargo build --release`
#   SERVER_CPU [0], LOAD_CPU [1]   taskset CPUs of the server and of dnsperf (and NSD)
#   PORT_BASE [25353]  first port tried; free ports are picked upward from it
#   OUT [loadtest/peers-results.md; MODE=miss: loadtest/peers-results-miss.md]
#                      where the markdown table is written
#   SATURATE [1; MODE=miss: 0, not supported there]  1: after each fixed-rate run, drive the server flat out with the
#                      harness generator (`loadtest load --rate 0`, pinned like dnsperf),
#                      which goes further than dnsperf's one core; 0 skips it
#   SAT_DURATION [5]   seconds of that saturation run
#   SAT_WINDOW [200]   queries the generator keeps outstanding
#   LOADTEST_BIN       use this loadtest binary instead of `cargo build --release -p loadtest`
#   KEEP_TMP [0]       1 keeps the temp dir (configs, logs, dnsperf output)
#
# Installs what it lacks with apt-get (nsd dnsdist unbound dnsperf util-linux).
# Note: on a systemd host, Debian starts the packaged nsd/unbound/dnsdist services on
# install; this script neither uses nor stops them (it runs its own instances on
# high loopback ports).
#
# Loopback only. Bounded: every dnsperf run has -l/-n and an outer `timeout`; every
# process started here is killed by PID on exit.
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TEMPLATES="$ROOT/loadtest/peers"
MODE=${MODE:-hit}
case $MODE in
hit) ;;
miss)
    SERVERS=${SERVERS:-tierdns-1x tierdns dnsdist unbound}
    OUT=${OUT:-$ROOT/loadtest/peers-results-miss.md}
    SATURATE=${SATURATE:-0}
    ;;
*) printf '[peers] error: MODE must be hit or miss, got %s\n' "$MODE" >&2; exit 1 ;;
esac
QPS=${QPS:-40000}
DURATION=${DURATION:-20}
ROUNDS=${ROUNDS:-3}
NAMES=${NAMES:-1000}
IO=${IO:-uring epoll}
SERVERS=${SERVERS:-tierdns dnsdist unbound}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PORT_BASE=${PORT_BASE:-25353}
OUT=${OUT:-$ROOT/loadtest/peers-results.md}
KEEP_TMP=${KEEP_TMP:-0}
SATURATE=${SATURATE:-1}
SAT_DURATION=${SAT_DURATION:-5}
SAT_WINDOW=${SAT_WINDOW:-200}
DIST=${DIST:-uniform}
ZIPF_SAMPLES=${ZIPF_SAMPLES:-500000}
SYSCALLS=${SYSCALLS:-0}
SYS_QPS=${SYS_QPS:-5000}
SYS_DURATION=${SYS_DURATION:-5}
SYS_TICK_US=${SYS_TICK_US:-200}
TCP=${TCP:-0}
TCP_CONNS=${TCP_CONNS:-20}
TCP_OUTSTANDING=${TCP_OUTSTANDING:-2000}
TCP_DURATION=${TCP_DURATION:-5}

log() { printf '[peers] %s\n' "$*" >&2; }
die() { printf '[peers] error: %s\n' "$*" >&2; exit 1; }

for v in QPS DURATION ROUNDS NAMES SERVER_CPU LOAD_CPU PORT_BASE SATURATE SAT_DURATION SAT_WINDOW \
    ZIPF_SAMPLES SYSCALLS SYS_QPS SYS_DURATION SYS_TICK_US TCP TCP_CONNS TCP_OUTSTANDING TCP_DURATION; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
((NAMES >= 1 && NAMES <= 2000000)) || die "NAMES must be 1..2000000"
[[ $DIST == uniform || $DIST == zipf ]] || die "DIST must be uniform or zipf, got '$DIST'"
[[ $MODE == hit || $DIST == uniform ]] || die "DIST=zipf is for MODE=hit"
((SYSCALLS == 0)) || [[ $MODE == hit ]] || die "SYSCALLS=1 is for MODE=hit"
((SYS_DURATION >= 1 && SYS_DURATION <= 60)) || die "SYS_DURATION must be 1..60 seconds"
((TCP == 0)) || [[ $MODE == hit ]] || die "TCP=1 is for MODE=hit"
((TCP_DURATION >= 1 && TCP_DURATION <= 60)) || die "TCP_DURATION must be 1..60 seconds"
((TCP_CONNS >= 1 && TCP_CONNS <= 1000)) || die "TCP_CONNS must be 1..1000"
((TCP_OUTSTANDING >= 1 && TCP_OUTSTANDING <= 65535)) || die "TCP_OUTSTANDING must be 1..65535"
((ZIPF_SAMPLES >= 1000 && ZIPF_SAMPLES <= 5000000)) || die "ZIPF_SAMPLES must be 1000..5000000"
# Caches sized to hold every name (the defaults below 100k names, as before).
CACHE_ENTRIES=$((NAMES * 2 > 100000 ? NAMES * 2 : 100000))       # dnsdist packet cache entries
CACHE_BYTES=$((NAMES * 512 > 67108864 ? NAMES * 512 : 67108864))  # tierdns cache.max_bytes
UNBOUND_MSG=$((CACHE_BYTES / 2 / 1048576))m                       # unbound msg-cache-size
UNBOUND_RRSET=$((CACHE_BYTES / 1048576))m                         # unbound rrset-cache-size
((DURATION >= 1 && DURATION <= 600)) || die "DURATION must be 1..600 seconds"
((ROUNDS >= 1 && ROUNDS <= 20)) || die "ROUNDS must be 1..20"
[[ $MODE == hit ]] || ((SATURATE == 0)) || die "SATURATE=1 is for MODE=hit only"
((QPS >= 1)) || [[ $MODE == hit ]] || die "MODE=miss needs QPS >= 1 (the name file is sized from it)"

# ---------------------------------------------------------------- processes, cleanup
TMP=$(mktemp -d /tmp/tierdns-peers.XXXXXX)
PIDS=()

stop_pid() { # stop_pid PID: TERM, wait up to 5 s, then KILL; forget it
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    if [[ $KEEP_TMP == 1 || $rc != 0 ]]; then
        log "temp dir kept: $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- tools
need=()
command -v nsd >/dev/null || need+=(nsd)
command -v dnsdist >/dev/null || need+=(dnsdist)
command -v unbound >/dev/null || need+=(unbound)
command -v dnsperf >/dev/null || need+=(dnsperf)
((SYSCALLS == 0)) || command -v perf >/dev/null || need+=(linux-perf)
command -v taskset >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
    SUDO=()
    [[ $(id -u) == 0 ]] || SUDO=(sudo)
    log "installing: ${need[*]}"
    "${SUDO[@]}" apt-get update
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y --no-install-recommends "${need[@]}"
fi
[[ $MODE == hit ]] || command -v curl >/dev/null || need+=(curl)
for t in nsd dnsdist unbound dnsperf taskset timeout awk getconf; do
    command -v "$t" >/dev/null || die "$t not found"
done

if [[ -n ${TIERDNS_BIN:-} ]]; then
    [[ -x $TIERDNS_BIN ]] || die "TIERDNS_BIN=$TIERDNS_BIN is not executable"
    TIERDNS_REV="binary $TIERDNS_BIN"
else
    log "building tierdns (cargo build --release)"
    (cd "$ROOT" && cargo build --release)
    TIERDNS_REV="commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    [[ -z $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] ||
        TIERDNS_REV="$TIERDNS_REV + local changes"
    TIERDNS_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/tierdns"
    [[ -x $TIERDNS_BIN ]] || die "no binary at $TIERDNS_BIN"
fi

if ((SATURATE || SYSCALLS)) || [[ " $SERVERS " == *" responder"* ]]; then
    if [[ -n ${LOADTEST_BIN:-} ]]; then
        [[ -x $LOADTEST_BIN ]] || die "LOADTEST_BIN=$LOADTEST_BIN is not executable"
    else
        log "building the harness generator (cargo build --release -p loadtest)"
        (cd "$ROOT" && cargo build --release -p loadtest --bin loadtest)
        LOADTEST_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/loadtest"
        [[ -x $LOADTEST_BIN ]] || die "no binary at $LOADTEST_BIN"
    fi
fi

CLK_TCK=$(getconf CLK_TCK)
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- ports
port_busy() { # UDP or TCP, any state
    command -v ss >/dev/null || return 1
    [[ -n $(ss -Hanut "( sport = :$1 )" 2>/dev/null) ]]
}
NEXT_PORT=$PORT_BASE
pick_port() {
    local p
    for ((p = NEXT_PORT; p < NEXT_PORT + 500 && p < 65536; p++)); do
        if ! port_busy "$p"; then
            NEXT_PORT=$((p + 1))
            echo "$p"
            return 0
        fi
    done
    die "no free port from $NEXT_PORT"
}

render() { # render TEMPLATE OUT KEY=VALUE...
    local tpl=$1 out=$2 args=() kv
    shift 2
    for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${args[@]}" "$tpl" >"$out"
}

# ---------------------------------------------------------------- zone and query file
{
    # shellcheck disable=SC2016
    echo '$ORIGIN bench.'
    # shellcheck disable=SC2016
    echo '$TTL 3600'
    echo '@ IN SOA ns.bench. hostmaster.bench. 1 3600 600 86400 3600'
    echo '@ IN NS ns.bench.'
    echo 'ns IN A 127.0.0.1'
    awk -v n="$NAMES" 'BEGIN {for (i = 0; i < n; i++)
        printf "n%d IN A 10.%d.%d.%d\n", i, int(i / 65536), int(i / 256) % 256, i % 256}'
    # MODE=miss: every u<i>.bench. exists through the wildcard.
    [[ $MODE == hit ]] || echo '* IN A 10.255.0.1'
} >"$TMP/bench.zone"
if [[ $MODE == hit ]]; then
    awk -v n="$NAMES" 'BEGIN {for (i = 0; i < n; i++) printf "n%d.bench A\n", i}' >"$TMP/names.txt"
    if [[ $DIST == zipf ]]; then
        # Rank k (1..NAMES) with probability proportional to 1/k: inverse CDF over
        # the harmonic sums, a fixed seed, so every server gets the same file.
        python3 - "$NAMES" "$ZIPF_SAMPLES" >"$TMP/query.txt" <<'PY'
import bisect, random, sys
n, samples = int(sys.argv[1]), int(sys.argv[2])
cdf, total = [], 0.0
for k in range(1, n + 1):
    total += 1.0 / k
    cdf.append(total)
rng = random.Random(1)
out = sys.stdout
for _ in range(samples):
    k = bisect.bisect_left(cdf, rng.random() * total)
    out.write(f"n{min(k, n - 1)}.bench A\n")
PY
    else
        cp "$TMP/names.txt" "$TMP/query.txt"
    fi
else
    # Never-seen names: 20% more than one run sends, each sent at most once per run
    # (dnsperf -n 1). Every run starts a fresh server, so the file serves every run.
    MISS_NAMES=$((QPS * DURATION * 12 / 10 + 100))
    awk -v n="$MISS_NAMES" 'BEGIN {for (i = 0; i < n; i++) printf "u%d.bench A\n", i}' >"$TMP/names.txt"
    cp "$TMP/names.txt" "$TMP/query.txt"
fi
WARM_LIMIT=$((60 + NAMES / 5000))
echo "ns.bench A" >"$TMP/probe.txt"

# dnsperf with a hard outer bound; output to $1
dnsperf_run() { # dnsperf_run OUTFILE LIMIT_SECONDS dnsperf-args...
    local out=$1 limit=$2
    shift 2
    timeout --kill-after=5 "$limit" taskset -c "$LOAD_CPU" dnsperf "$@" >"$out" 2>&1
}
completed_of() { awk '/Queries completed:/ {print $3; exit}' "$1"; }

wait_ready() { # wait_ready NAME PID PORT LOG: until one query is answered (<= ~30 s)
    local name=$1 pid=$2 port=$3 logf=$4 i
    for ((i = 0; i < 25; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -20 "$logf" >&2 || true
            die "$name exited during startup (log above: $logf)"
        fi
        if dnsperf_run "$TMP/probe.out" 5 -s 127.0.0.1 -p "$port" -d "$TMP/probe.txt" -n 1 -t 1 &&
            [[ $(completed_of "$TMP/probe.out") == 1 ]]; then
            return 0
        fi
        sleep 0.2
    done
    tail -20 "$logf" >&2 || true
    die "$name on port $port never answered"
}

cpu_ticks() { # utime + stime of the whole process (all threads), clock ticks
    local s
    s=$(<"/proc/$1/stat")
    s=${s##*) } # fields from 3 on; comm may hold spaces
    # shellcheck disable=SC2086
    set -- $s
    echo $((${12} + ${13}))
}

# ---------------------------------------------------------------- NSD
NSD_PORT=$(pick_port)
if [[ $MODE == hit ]]; then
    render "$TEMPLATES/nsd.conf.in" "$TMP/nsd.conf" "DIR=$TMP" "NSD_PORT=$NSD_PORT"
else
    render "$TEMPLATES/nsd-miss.conf.in" "$TMP/nsd.conf" "DIR=$TMP" "NSD_PORT=$NSD_PORT"
fi
nsd-checkconf "$TMP/nsd.conf" >/dev/null 2>&1 || { nsd-checkconf "$TMP/nsd.conf" || true; die "bad nsd.conf"; }
# NSD gets the load CPU: it only sees the warm-up misses (and dnsdist health checks).
taskset -c "$LOAD_CPU" nsd -d -c "$TMP/nsd.conf" >"$TMP/nsd.stderr" 2>&1 &
NSD_PID=$!
PIDS+=("$NSD_PID")
wait_ready nsd "$NSD_PID" "$NSD_PORT" "$TMP/nsd.stderr"
if [[ $MODE == hit ]]; then
    log "nsd up on 127.0.0.1:$NSD_PORT, $NAMES names"
else
    # Trust no figure before NSD answers a never-seen name on each of its addresses.
    for a in 1 2 3 4 5; do
        echo "u-probe-$a.bench A" >"$TMP/probe-u.txt"
        dnsperf_run "$TMP/probe-u.out" 10 -s "127.0.0.$a" -p "$NSD_PORT" -d "$TMP/probe-u.txt" -n 1 -t 2 ||
            die "nsd on 127.0.0.$a:$NSD_PORT: probe failed"
        grep -q 'NOERROR 1 (100.00%)' "$TMP/probe-u.out" ||
            die "nsd on 127.0.0.$a:$NSD_PORT does not answer u-probe-$a.bench. with NOERROR: $(cat "$TMP/probe-u.out")"
    done
    log "nsd up on 127.0.0.1-5:$NSD_PORT, wildcard answers; $MISS_NAMES never-seen names"
fi
nsd_queries() { # queries NSD has received so far (all addresses), or "-"
    local n
    n=$(timeout 10 nsd-control -c "$TMP/nsd.conf" stats_noreset 2>/dev/null | awk -F= '$1 == "num.queries" {print $2; exit}')
    echo "${n:--}"
}
metric_sum() { # metric_sum PORT REGEX: sum of the samples whose name+labels match
    local body
    body=$(timeout 10 curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null) || { echo -; return; }
    awk -v re="$2" '$0 !~ /^#/ && $1 ~ re {s += $2; f = 1} END {if (f) printf "%.0f\n", s; else print 0}' <<<"$body"
}

# ---------------------------------------------------------------- one server
ROWS=()   # "name|qps|lost|latency_us|cpu_us_per_query|rcodes|threads"
NOTES=()

measure() { # measure ROW_NAME PORT LOGFILE cmd...   (files of round $ROUND)
    local row=$1 port=$2 logf=$3 pid run=$1.r$ROUND
    shift 3
    taskset -c "$SERVER_CPU" "$@" >"$logf" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_ready "$row" "$pid" "$port" "$logf"

    if [[ $MODE == hit ]]; then
    # Warm-up: one full pass over the names (misses go to NSD), then a check pass.
    dnsperf_run "$TMP/$run.warm.out" "$WARM_LIMIT" -s 127.0.0.1 -p "$port" -d "$TMP/names.txt" -n 1 -t 2 ||
        die "$row: warm-up dnsperf failed: $(tail -3 "$TMP/$run.warm.out")"
    dnsperf_run "$TMP/$run.warm2.out" "$WARM_LIMIT" -s 127.0.0.1 -p "$port" -d "$TMP/names.txt" -n 1 -t 2 ||
        die "$row: second warm-up dnsperf failed"
    local warm
    warm=$(completed_of "$TMP/$run.warm2.out")
    [[ $warm == "$NAMES" ]] || NOTES+=("$row: warm-up pass answered $warm of $NAMES names")
    fi
    sleep 1

    local threads c0 c1 t0 t1
    threads=$(find "/proc/$pid/task" -mindepth 1 -maxdepth 1 | wc -l)
    log "$row (round $ROUND/$ROUNDS): pid $pid ($threads threads) on CPU $SERVER_CPU, port $port: ${QPS} qps for ${DURATION}s"
    local extra=() n0=- n1=- u0=- u1=- m0=- m1=-
    # miss: each name at most once (-n 1), up to 1000 outstanding (a miss takes longer)
    [[ $MODE == hit ]] || extra=(-n 1 -q 1000)
    if [[ $MODE == miss ]]; then
        n0=$(nsd_queries)
        if [[ -n $METRICS_PORT ]]; then
            u0=$(metric_sum "$METRICS_PORT" '^tierdns_upstream_queries_total')
            m0=$(metric_sum "$METRICS_PORT" '^tierdns_cache_total\{result="miss"\}')
        fi
    fi
    c0=$(cpu_ticks "$pid")
    t0=$(date +%s.%N)
    dnsperf_run "$TMP/$run.out" $((DURATION + 30)) -s 127.0.0.1 -p "$port" -d "$TMP/query.txt" \
        -Q "$QPS" -l "$DURATION" "${extra[@]}" ||
        die "$row: dnsperf failed: $(tail -5 "$TMP/$run.out")"
    t1=$(date +%s.%N)
    kill -0 "$pid" 2>/dev/null || {
        tail -20 "$logf" >&2 || true
        die "$row died during the run (log above)"
    }
    c1=$(cpu_ticks "$pid")
    if [[ $MODE == miss ]]; then
        # Let late upstream queries (hedges, completions) land and the shard flush
        # its counters (flush_interval 250ms in the templates) before counting.
        sleep 1.5
        n1=$(nsd_queries)
        if [[ -n $METRICS_PORT ]]; then
            u1=$(metric_sum "$METRICS_PORT" '^tierdns_upstream_queries_total')
            m1=$(metric_sum "$METRICS_PORT" '^tierdns_cache_total\{result="miss"\}')
        fi
    fi

    local f=$TMP/$run.out completed lost qps lat rcodes cpu_us
    completed=$(completed_of "$f")
    lost=$(awk '/Queries lost:/ {print $3; exit}' "$f")
    qps=$(awk '/Queries per second:/ {print $4; exit}' "$f")
    lat=$(awk '/Average Latency \(s\):/ {printf "%.0f", $4 * 1e6; exit}' "$f")
    rcodes=$(sed -n 's/^ *Response codes: *//p' "$f" | head -1)
    [[ -n $completed && $completed -gt 0 ]] || die "$row: no queries completed: $(cat "$f")"
    cpu_us=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$completed" 'BEGIN {printf "%.2f", d / hz * 1e6 / n}')
    log "$row: completed $completed, lost $lost, $qps qps, avg ${lat} us, cpu $((c1 - c0)) ticks" \
        "over $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')s = $cpu_us us/query; rcodes: $rcodes"
    [[ $rcodes =~ ^NOERROR\ [0-9]+\ \(100\.00%\)$ ]] || NOTES+=("$row: response codes: $rcodes")
    # Saturation: the harness generator flat out (closed loop, SAT_WINDOW
    # outstanding) on the same names, pinned where dnsperf ran. A failure here is a
    # note, not the end of the run.
    local sat="-"
    if ((SATURATE)); then
        if timeout --kill-after=5 $((SAT_DURATION + 30)) taskset -c "$LOAD_CPU" "$LOADTEST_BIN" load \
            --server "127.0.0.1:$port" --qname-file "$TMP/query.txt" --rate 0 --window "$SAT_WINDOW" \
            --duration "$SAT_DURATION" --timeout 1 --quiet --json "$TMP/$run.sat.json" >"$TMP/$run.sat.out" 2>&1; then
            sat=$(awk '/achieved/ {print $2; exit}' "$TMP/$run.sat.out")
            log "$row: saturation $sat qps ($(awk '/queries sent/ {print $7; exit}' "$TMP/$run.sat.out" | tr -d ,) lost)"
        else
            NOTES+=("$row: saturation run failed: $(tail -1 "$TMP/$run.sat.out")")
        fi
        [[ -n $sat ]] || sat="-"
    fi
    # Syscalls: perf stat on the server over an evenly spaced run of the generator.
    local sys=- enter=- epw=-
    if ((SYSCALLS)); then
        local pf=$TMP/$run.perf out=$TMP/$run.sys.out answered
        timeout --kill-after=5 $((SYS_DURATION + 20)) perf stat -x, -o "$pf" \
            -e raw_syscalls:sys_enter,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait \
            -p "$pid" -- sleep $((SYS_DURATION + 2)) 2>/dev/null &
        local perf_pid=$!
        sleep 0.5
        if timeout --kill-after=5 $((SYS_DURATION + 30)) taskset -c "$LOAD_CPU" "$LOADTEST_BIN" load \
            --server "127.0.0.1:$port" --qname-file "$TMP/query.txt" --rate "$SYS_QPS" --tick-us "$SYS_TICK_US" \
            --duration "$SYS_DURATION" --timeout 1 --quiet >"$out" 2>&1 && wait "$perf_pid"; then
            answered=$(sed -n 's/.*answered \([0-9]*\).*/\1/p' "$out" | head -1)
            per() { awk -F, -v ev="$1" -v n="$answered" '$3 ~ ev {s += $1} END {if (n > 0) printf "%.2f", s / n; else print "-"}' "$pf"; }
            sys=$(per '^raw_syscalls:sys_enter$')
            enter=$(per 'io_uring_enter$')
            epw=$(per 'epoll_p?wait$')
            log "$row: $answered answered at $SYS_QPS qps (tick ${SYS_TICK_US} us): $sys syscalls/query ($enter io_uring_enter, $epw epoll_wait)"
        else
            wait "$perf_pid" 2>/dev/null || true
            NOTES+=("$row: syscall run failed: $(tail -1 "$out")")
        fi
    fi
    # TCP: pipelined connections flat out, the server's CPU over exactly that run.
    local tcpq=- tcpcpu=-
    if ((TCP)) && [[ $row != responder* ]]; then
        local tf=$TMP/$run.tcp.out tc0 tc1 tdone
        tc0=$(cpu_ticks "$pid")
        if dnsperf_run "$tf" $((TCP_DURATION + 30)) -m tcp -c "$TCP_CONNS" -q "$TCP_OUTSTANDING" \
            -s 127.0.0.1 -p "$port" -d "$TMP/query.txt" -l "$TCP_DURATION"; then
            tc1=$(cpu_ticks "$pid")
            tdone=$(completed_of "$tf")
            if [[ -n $tdone && $tdone -gt 0 ]]; then
                tcpq=$(awk '/Queries per second:/ {printf "%.0f", $4; exit}' "$tf")
                tcpcpu=$(awk -v d=$((tc1 - tc0)) -v hz="$CLK_TCK" -v n="$tdone" 'BEGIN {printf "%.2f", d / hz * 1e6 / n}')
                log "$row: TCP ($TCP_CONNS connections, $TCP_OUTSTANDING outstanding): $tcpq answers/s," \
                    "$tcpcpu us/answer, lost $(awk '/Queries lost:/ {print $3; exit}' "$tf")"
            else
                NOTES+=("$row: TCP run answered nothing: $(tail -3 "$tf" | tr '\n' ' ')")
            fi
        else
            NOTES+=("$row: TCP run failed: $(tail -3 "$tf" | tr '\n' ' ')")
        fi
    fi
    local nsdq=- tdq=- tdm=-
    if [[ $MODE == miss ]]; then
        [[ $n0 == - || $n1 == - ]] || nsdq=$(awk -v d=$((n1 - n0)) -v n="$completed" 'BEGIN {printf "%.3f", d / n}')
        if [[ $u0 != - && $u1 != - && $m0 != - && $m1 != - ]] && ((m1 > m0)); then
            tdq=$(awk -v d=$((u1 - u0)) -v m=$((m1 - m0)) 'BEGIN {printf "%.3f", d / m}')
            tdm=$((m1 - m0))
        fi
        log "$row: NSD received $((n1 - n0)) queries = $nsdq per answered query; tierdns /metrics: upstream $u0 -> $u1, misses $m0 -> $m1 ($tdq per miss)"
    fi
    ROWS+=("$row|$qps|$lost|$lat|$cpu_us|$threads|$sat|$nsdq|$tdq|$tdm|$sys|$enter|$epw|$tcpq|$tcpcpu")
    stop_pid "$pid"
}

# ---------------------------------------------------------------- the servers
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
for server in $SERVERS; do
    case $server in
    tierdns)
        for io in $IO; do
            case $io in
            uring) row=tierdns ;;
            epoll) row=tierdns-epoll ;;
            *) die "IO: unknown backend '$io' (uring, epoll)" ;;
            esac
            port=$(pick_port)
            if [[ $MODE == hit ]]; then
                METRICS_PORT=""
                render "$TEMPLATES/tierdns.toml.in" "$TMP/$row.toml" "PORT=$port" "NSD_PORT=$NSD_PORT" "IO=$io" \
                    "CACHE_BYTES=$CACHE_BYTES"
            else
                METRICS_PORT=$(NEXT_PORT=$((port + 1)); pick_port) # pick_port in $() cannot advance NEXT_PORT
                render "$TEMPLATES/tierdns-5.toml.in" "$TMP/$row.toml" "PORT=$port" "NSD_PORT=$NSD_PORT" \
                    "IO=$io" "METRICS_PORT=$METRICS_PORT"
            fi
            "$TIERDNS_BIN" --config "$TMP/$row.toml" --check >/dev/null || die "bad $row.toml"
            measure "$row" "$port" "$TMP/$row.log" env TIERDNS_LOG=warn "$TIERDNS_BIN" --config "$TMP/$row.toml"
        done
        ;;
    tierdns-1x | tierdns-1x-s1)
        [[ $MODE == miss ]] || die "SERVERS: $server is a MODE=miss row"
        for io in $IO; do
            case $io in
            uring) row=$server ;;
            epoll) row=$server-epoll ;;
            *) die "IO: unknown backend '$io' (uring, epoll)" ;;
            esac
            port=$(pick_port)
            METRICS_PORT=$(NEXT_PORT=$((port + 1)); pick_port) # pick_port in $() cannot advance NEXT_PORT
            render "$TEMPLATES/tierdns-1x.toml.in" "$TMP/$row.toml" "PORT=$port" "NSD_PORT=$NSD_PORT" \
                "IO=$io" "METRICS_PORT=$METRICS_PORT"
            if [[ $server == tierdns-1x-s1 ]]; then
                # One upstream socket per shard, as dnsdist has one per backend by
                # default: the cost of the 16-socket pool (source-port entropy) shows.
                printf '\n[limits]\nupstream_sockets = 1\n' >>"$TMP/$row.toml"
            fi
            "$TIERDNS_BIN" --config "$TMP/$row.toml" --check >/dev/null || die "bad $row.toml"
            measure "$row" "$port" "$TMP/$row.log" env TIERDNS_LOG=warn "$TIERDNS_BIN" --config "$TMP/$row.toml"
        done
        ;;
    responder | responder-uring)
        # The floors: `loadtest responder`, one socket, the same answer for every
        # question, no cache and no parsing beyond the question; recvmmsg/sendmmsg,
        # or (-uring) one ring with a multishot recvmsg into provided buffers.
        [[ $MODE == hit ]] || die "SERVERS: $server is a MODE=hit row"
        METRICS_PORT=""
        port=$(pick_port)
        io=mmsg
        [[ $server == responder ]] || io=uring
        measure "$server" "$port" "$TMP/$server.log" "$LOADTEST_BIN" responder \
            --listen "127.0.0.1:$port" --io "$io" --duration $((DURATION * 3 + SYS_DURATION * 2 + WARM_LIMIT * 2 + 200))
        ;;
    dnsdist)
        METRICS_PORT=""
        port=$(pick_port)
        render "$TEMPLATES/dnsdist.conf.in" "$TMP/dnsdist.conf" "PORT=$port" "NSD_PORT=$NSD_PORT" \
            "CACHE_ENTRIES=$CACHE_ENTRIES"
        measure dnsdist "$port" "$TMP/dnsdist.log" dnsdist --supervised --disable-syslog -C "$TMP/dnsdist.conf"
        ;;
    unbound)
        METRICS_PORT=""
        port=$(pick_port)
        render "$TEMPLATES/unbound.conf.in" "$TMP/unbound.conf" "DIR=$TMP" "PORT=$port" "NSD_PORT=$NSD_PORT" \
            "UNBOUND_MSG=$UNBOUND_MSG" "UNBOUND_RRSET=$UNBOUND_RRSET"
        unbound-checkconf "$TMP/unbound.conf" >/dev/null || die "bad unbound.conf"
        measure unbound "$port" "$TMP/unbound.log" unbound -d -c "$TMP/unbound.conf"
        ;;
    *) die "SERVERS: unknown server '$server' (tierdns tierdns-1x tierdns-1x-s1 dnsdist unbound responder responder-uring)" ;;
    esac
done
done

# ---------------------------------------------------------------- report
# One line per server: medians over the rounds (lost: the sum), every round's CPU.
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR] = $1} END {
    if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
NAMES_SEEN=()
for r in "${ROWS[@]}"; do
    IFS='|' read -r name _ <<<"$r"
    [[ " ${NAMES_SEEN[*]} " == *" $name "* ]] || NAMES_SEEN+=("$name")
done
SUMMARY=() # "name|qps|lost|lat|cpu|cpus"
for name in "${NAMES_SEEN[@]}"; do
    qs="" lost=0 lats="" cpus="" sats="" nsdqs="" tdqs="" losts="" syss="" enters="" epws="" tcpqs="" tcpcpus=""
    for r in "${ROWS[@]}"; do
        IFS='|' read -r n qps l lat cpu _ sat nsdq tdq _ sys enter epw tq tc <<<"$r"
        [[ $n == "$name" ]] || continue
        qs+=" $qps" lats+=" $lat" cpus+=" $cpu" losts+=" $l"
        lost=$((lost + l))
        [[ $sat == - ]] || sats+=" $sat"
        [[ $nsdq == - ]] || nsdqs+=" $nsdq"
        [[ $tdq == - ]] || tdqs+=" $tdq"
        [[ $sys == - ]] || syss+=" $sys"
        [[ $enter == - ]] || enters+=" $enter"
        [[ $epw == - ]] || epws+=" $epw"
        [[ $tq == - ]] || tcpqs+=" $tq"
        [[ $tc == - ]] || tcpcpus+=" $tc"
    done
    sysm="-|-|-"
    [[ -z $syss ]] || sysm="$(median <<<"$syss")|$(median <<<"${enters:- 0}")|$(median <<<"${epws:- 0}")"
    tcpm="-|-|-"
    [[ -z $tcpqs ]] || tcpm="$(median <<<"$tcpqs")|$(median <<<"$tcpcpus")|${tcpcpus# }"
    tcpm=${tcpm// /, }
    satm=- nsdqm=- tdqm=-
    [[ -z $sats ]] || satm=$(median <<<"$sats")
    [[ -z $nsdqs ]] || nsdqm="$(median <<<"$nsdqs") (${nsdqs// /, })"
    nsdqm=${nsdqm/(, /(}
    [[ -z $tdqs ]] || tdqm="$(median <<<"$tdqs") (${tdqs// /, })"
    tdqm=${tdqm/(, /(}
    losts=${losts# }
    SUMMARY+=("$name|$(median <<<"$qs")|$lost|$(median <<<"$lats")|$(median <<<"$cpus")|${cpus# }|$satm|$nsdqm|$tdqm|${losts// /, }|$sysm|$tcpm")
done
base=""
for r in "${SUMMARY[@]}"; do
    IFS='|' read -r name _ _ _ cpu _ <<<"$r"
    [[ $name == tierdns ]] && base=$cpu
done
if [[ -z $base ]]; then
    for r in "${SUMMARY[@]}"; do
        IFS='|' read -r name _ _ _ cpu _ <<<"$r"
        [[ $name == tierdns* ]] && { base=$cpu; break; }
    done
fi

cmd="QPS=$QPS DURATION=$DURATION ROUNDS=$ROUNDS NAMES=$NAMES IO=\"$IO\" SERVERS=\"$SERVERS\" loadtest/peers.sh"
[[ $DIST == uniform ]] || cmd="DIST=$DIST ZIPF_SAMPLES=$ZIPF_SAMPLES $cmd"
((TCP == 0)) || cmd="TCP=1 TCP_CONNS=$TCP_CONNS TCP_OUTSTANDING=$TCP_OUTSTANDING TCP_DURATION=$TCP_DURATION $cmd"
((SYSCALLS == 0)) || cmd="SYSCALLS=1 SYS_QPS=$SYS_QPS SYS_DURATION=$SYS_DURATION SYS_TICK_US=$SYS_TICK_US $cmd"
model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
ver() { "$@" 2>&1 | head -1 | tr -d '\r'; }

if [[ $MODE == miss ]]; then
mbase=""
for r in "${SUMMARY[@]}"; do
    IFS='|' read -r name _ _ _ cpu _ <<<"$r"
    [[ $name == dnsdist ]] && mbase=$cpu
done
{
    echo "| server | misses/s held (answered qps) | lost (each round) | avg latency | CPU µs/miss | ratio to dnsdist | CPU µs/miss, each round | upstream queries per miss, NSD count (each round) | upstream queries per miss, tierdns /metrics (each round) |"
    echo "|---|---:|---:|---:|---:|---:|---|---|---|"
    for r in "${SUMMARY[@]}"; do
        IFS='|' read -r name qps lost lat cpu cpus _ nsdqm tdqm losts _ <<<"$r"
        ratio=$(awk -v c="$cpu" -v b="$mbase" 'BEGIN {if (b > 0) printf "%.2f", c / b; else print "-"}')
        printf '| %s | %.0f | %s (%s) | %.0f µs | %s | %s | %s | %s | %s |\n' "$name" "$qps" "$lost" "$losts" "$lat" "$cpu" "$ratio" "${cpus// /, }" "$nsdqm" "$tdqm"
    done
} >"$TMP/table.md"
{
    cat "$TMP/table.md"
    echo
    echo "Command: \`MODE=miss $cmd\`"
    echo
    echo "$ROUNDS round(s), each running every server once in turn, every server started fresh (empty cache);"
    echo "qps, latency, CPU and upstream queries per miss are medians over the rounds, lost is the sum."
    echo "Each server pinned to CPU $SERVER_CPU (\`taskset\`), dnsperf and NSD pinned to CPU $LOAD_CPU:"
    echo "\`dnsperf -s 127.0.0.1 -p PORT -d names.txt -Q $QPS -l $DURATION -n 1 -q 1000\` over $MISS_NAMES never-seen names"
    echo "\`u<i>.bench.\` (type A, each sent at most once), answered by NSD through the wildcard \`*.bench. 3600 IN A 10.255.0.1\`"
    echo "(checked at start: NSD answers a never-seen name NOERROR on each of its 5 addresses). No warm-up: every query is a miss."
    echo "CPU = utime + stime of the whole server process (all threads) from /proc/PID/stat over the dnsperf run,"
    echo "divided by the queries answered (CPU µs per miss)."
    echo "Upstream queries per miss, NSD count: queries NSD received (\`nsd-control stats_noreset\`, num.queries, all 5 addresses)"
    echo "from just before the dnsperf run to 1.5 s after it, divided by the queries answered; dnsdist's 1-second health checks"
    echo "(checkName ns.bench.) are in it (about $((DURATION + 3)) queries a run, under 0.0001 per miss at these rates)."
    echo "tierdns /metrics: \`sum(tierdns_upstream_queries_total)\` over the same window divided by \`tierdns_cache_total{result=\"miss\"}\`."
    echo
    echo "Rows: tierdns-1x = one exchange per miss (1 upstream, \`active_tier_size = 1\`, \`complete = false\`, 1 shard);"
    echo "tierdns-1x-s1 = the same with \`upstream_sockets = 1\` (one upstream socket, as dnsdist has one per backend; the default 16 spread the source ports);"
    echo "tierdns = defaults (\`[tiers]\`, \`[budget]\`) with 5 upstreams: the one NSD on 127.0.0.1 .. 127.0.0.5, 1 shard;"
    echo "\"-epoll\" rows: the same with \`io = \"epoll\"\`, the others \`io = \"uring\"\`; dnsdist: one backend (the NSD on 127.0.0.1), packet cache;"
    echo "unbound: forward-zone \".\" to the NSD on 127.0.0.1, num-threads 1, module-config iterator."
    vers=()
    for server in $SERVERS; do
        case $server in
        tierdns-1x | tierdns-1x-s1) ;;
        tierdns) vers+=("$("$TIERDNS_BIN" --version) ($TIERDNS_REV; shards = 1, io: $IO)") ;;
        dnsdist) vers+=("$(ver dnsdist --version | awk '{print $1, $2}')") ;;
        unbound) vers+=("unbound $(unbound -V 2>&1 | awk '/^Version/ {print $2; exit}')") ;;
        esac
    done
    [[ " $SERVERS " == *" tierdns "* ]] || vers+=("$("$TIERDNS_BIN" --version) ($TIERDNS_REV; io: $IO)")
    vers+=("upstream $(ver nsd -v)" "dnsperf $(dnsperf -h 2>&1 | awk '/^Version/ {print $2; exit}')")
    joined=$(printf '%s; ' "${vers[@]}")
    echo "Versions: ${joined%; }."
    echo
    echo "Machine: $(nproc) CPUs, $model, Linux $(uname -r); load average at start $LOADAVG, at end $(cut -d' ' -f1-3 /proc/loadavg); $(date -u '+%Y-%m-%d %H:%M UTC')."
    if ((${#NOTES[@]})); then
        echo
        echo "Notes:"
        for n in "${NOTES[@]}"; do echo "- $n"; done
    fi
} >"$TMP/results.md"
else

{
    sys_head="" sys_rule=""
    if ((SYSCALLS)); then
        sys_head=" syscalls/query at $SYS_QPS qps | io_uring_enter/query | epoll_wait/query |"
        sys_rule="---:|---:|---:|"
    fi
    tcp_head="" tcp_rule=""
    if ((TCP)); then
        tcp_head=" TCP answers/s ($TCP_CONNS conns) | TCP CPU µs/answer | TCP CPU, each round |"
        tcp_rule="---:|---:|---|"
    fi
    echo "| server | qps achieved | lost | avg latency | CPU µs/query | ratio to tierdns | CPU µs/query, each round | saturation qps (loadtest) |$sys_head$tcp_head"
    echo "|---|---:|---:|---:|---:|---:|---|---:|$sys_rule$tcp_rule"
    for r in "${SUMMARY[@]}"; do
        IFS='|' read -r name qps lost lat cpu cpus satm _ _ _ sysq enterq epwq tcpq tcpc tcpcs <<<"$r"
        ratio=$(awk -v c="$cpu" -v b="$base" 'BEGIN {if (b > 0) printf "%.2f", c / b; else print "-"}')
        sys_cols=""
        ((SYSCALLS == 0)) || sys_cols=" $sysq | $enterq | $epwq |"
        ((TCP == 0)) || sys_cols+=" $tcpq | $tcpc | $tcpcs |"
        printf '| %s | %.0f | %s | %.0f µs | %s | %s | %s | %s |%s\n' "$name" "$qps" "$lost" "$lat" "$cpu" "$ratio" "${cpus// /, }" "$satm" "$sys_cols"
    done
} >"$TMP/table.md"

{
    cat "$TMP/table.md"
    echo
    echo "Command: \`$cmd\`"
    echo
    echo "$ROUNDS round(s), each running every server once in turn; qps, latency and CPU are medians over the rounds, lost is the sum."
    echo "Each server pinned to CPU $SERVER_CPU (\`taskset\`), dnsperf pinned to CPU $LOAD_CPU:"
    if [[ $DIST == zipf ]]; then
        echo "\`dnsperf -s 127.0.0.1 -p PORT -d query.txt -Q $QPS -l $DURATION\`, query.txt $ZIPF_SAMPLES names drawn with Zipf's law (exponent 1) from $NAMES names"
    else
        echo "\`dnsperf -s 127.0.0.1 -p PORT -d names.txt -Q $QPS -l $DURATION\` over $NAMES names, each in turn"
    fi
    echo "(A records, TTL 3600, served by NSD on 127.0.0.1) after a warm-up pass, so every query is a cache hit."
    echo "CPU = utime + stime of the whole server process (all threads) from /proc/PID/stat over the dnsperf run,"
    vers=()
    for server in $SERVERS; do
        case $server in
        tierdns) vers+=("$("$TIERDNS_BIN" --version) ($TIERDNS_REV; shards = 1, io: $IO)") ;;
        dnsdist) vers+=("$(ver dnsdist --version | awk '{print $1, $2}') (packet cache, one listener)") ;;
        unbound) vers+=("unbound $(unbound -V 2>&1 | awk '/^Version/ {print $2; exit}') (num-threads: 1)") ;;
        esac
    done
    vers+=("upstream $(ver nsd -v)" "dnsperf $(dnsperf -h 2>&1 | awk '/^Version/ {print $2; exit}')")
    joined=$(printf '%s; ' "${vers[@]}")
    echo "divided by the queries completed. Versions: ${joined%; }."
    if ((SATURATE)); then
        echo "Saturation: after each fixed-rate run, \`loadtest load --rate 0 --window $SAT_WINDOW --duration $SAT_DURATION\`"
        echo "(the harness generator, closed loop, same names, pinned to CPU $LOAD_CPU): answers per second, median over the rounds."
    fi
    if ((SYSCALLS)); then
        echo "Syscalls: after each fixed-rate run, \`loadtest load --rate $SYS_QPS --tick-us $SYS_TICK_US --duration $SYS_DURATION\` (queries evenly spaced)"
        echo "while \`perf stat -e raw_syscalls:sys_enter,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait -p PID\`"
        echo "counts the server's syscalls (all threads); divided by the queries answered; medians over the rounds."
    fi
    if ((TCP)); then
        echo "TCP: after each fixed-rate run, \`dnsperf -m tcp -c $TCP_CONNS -q $TCP_OUTSTANDING -l $TCP_DURATION\` (pinned like dnsperf, flat out:"
        echo "each connection pipelines queries); answers per second, and the server's CPU over that run per answer; medians over the rounds."
    fi
    echo "Caches: tierdns cache.max_bytes $CACHE_BYTES, dnsdist newPacketCache($CACHE_ENTRIES), unbound msg-cache-size $UNBOUND_MSG, rrset-cache-size $UNBOUND_RRSET."
    echo
    echo "Machine: $(nproc) CPUs, $model, Linux $(uname -r); load average at start $LOADAVG; $(date -u '+%Y-%m-%d %H:%M UTC')."
    if ((${#NOTES[@]})); then
        echo
        echo "Notes:"
        for n in "${NOTES[@]}"; do echo "- $n"; done
    fi
} >"$TMP/results.md"
fi

cp "$TMP/results.md" "$OUT"
echo
cat "$TMP/results.md"
log "written to $OUT"
