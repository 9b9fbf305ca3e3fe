#!/usr/bin/env bash
# vs-dnsperf.sh: the loadtest generator against dnsperf, side by side, on the same
# minimal responder (`loadtest responder`: recvmmsg/sendmmsg, one fixed answer).
#
# The responder runs pinned to CPU 0, each generator pinned to CPU 1 (taskset).
# Two measurements per generator and round, in turn, so machine noise hits both:
#   fixed rate:  QPS queries per second for DURATION s; CPU time of the generator
#                process (user + sys of the child, from bash's `times`) divided by
#                the queries completed
#   flat out:    as many as one core can drive for DURATION s (dnsperf's default
#                100 outstanding; loadtest --rate 0 --window 100): queries per second,
#                and queries per second of the generator's own CPU time (what one
#                whole core would give it: the responder or a busy machine may cap
#                the first figure before the generator's core is full)
# The table shows medians over ROUNDS rounds and the ratios loadtest/dnsperf.
#
# Usage: loadtest/vs-dnsperf.sh        (installs dnsperf with apt-get if missing)
# Environment: QPS [40000] DURATION [10] ROUNDS [3] NAMES [1000] PORT [5399]
#              SERVER_CPU [0] LOAD_CPU [1]
# Loopback only; every run is bounded by -l/--duration and an outer timeout.
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QPS=${QPS:-40000} DURATION=${DURATION:-10} ROUNDS=${ROUNDS:-3} NAMES=${NAMES:-1000}
PORT=${PORT:-5399} SERVER_CPU=${SERVER_CPU:-0} LOAD_CPU=${LOAD_CPU:-1}
for v in QPS DURATION ROUNDS NAMES PORT SERVER_CPU LOAD_CPU; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$v must be a whole number" >&2; exit 1; }
done
((DURATION >= 1 && DURATION <= 120 && ROUNDS >= 1 && ROUNDS <= 10)) || { echo "DURATION 1..120, ROUNDS 1..10" >&2; exit 1; }

if ! command -v dnsperf >/dev/null; then
    SUDO=(); [[ $(id -u) == 0 ]] || SUDO=(sudo)
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq dnsperf
fi
(cd "$ROOT" && cargo build --release -p loadtest --bin loadtest 2>&1 | tail -1)
LOADTEST=${CARGO_TARGET_DIR:-$ROOT/target}/release/loadtest
TMP=$(mktemp -d /tmp/loadtest-vs-dnsperf.XXXXXX)
RESP=""
cleanup() { [[ -n $RESP ]] && kill "$RESP" 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

# the same names for both: dnsperf's data file, which loadtest reads too
for ((i = 0; i < NAMES; i++)); do echo "n$i.bench.test A"; done >"$TMP/names.txt"

taskset -c "$SERVER_CPU" "$LOADTEST" responder --listen "127.0.0.1:$PORT" \
    --duration $(((4 * DURATION + 20) * ROUNDS + 60)) 2>"$TMP/responder.log" &
RESP=$!
sleep 0.5

# cpu_of CMD...: runs CMD (pinned, bounded), prints "user+sys seconds" of it
cpu_of() {
    local out
    out=$( (timeout --kill-after=5 $((DURATION + 30)) taskset -c "$LOAD_CPU" "$@" >"$TMP/run.out" 2>&1; times) | tail -1)
    # `times` second line: children's "XmY.YYYs XmZ.ZZZs"
    awk '{ split($1, u, /m|s/); split($2, s, /m|s/); printf "%.3f\n", u[1] * 60 + u[2] + s[1] * 60 + s[2] }' <<<"$out"
}
dp_completed() { awk '/Queries completed:/ {print $3; exit}' "$TMP/run.out"; }
dp_qps() { awk '/Queries per second:/ {printf "%.0f\n", $4; exit}' "$TMP/run.out"; }
lt_sent() { awk '/queries sent/ {gsub(/,/, ""); print $3; exit}' "$TMP/run.out"; }
lt_answered() { awk '/queries sent/ {gsub(/,/, ""); print $5; exit}' "$TMP/run.out"; }
lt_qps() { awk '/achieved/ {print $2; exit}' "$TMP/run.out"; }

declare -a DP_CPU LT_CPU DP_MAX LT_MAX DP_PERCPU LT_PERCPU
for ((r = 1; r <= ROUNDS; r++)); do
    c=$(cpu_of dnsperf -s 127.0.0.1 -p "$PORT" -d "$TMP/names.txt" -Q "$QPS" -l "$DURATION")
    n=$(dp_completed)
    DP_CPU+=("$(awk -v c="$c" -v n="$n" 'BEGIN {printf "%.2f", c * 1e6 / n}')")
    echo "round $r: dnsperf  at $QPS qps: $n completed, CPU ${c}s = ${DP_CPU[-1]} us/query" >&2

    c=$(cpu_of "$LOADTEST" load --server "127.0.0.1:$PORT" --qname-file "$TMP/names.txt" --rate "$QPS" --duration "$DURATION" --quiet)
    n=$(lt_answered)
    LT_CPU+=("$(awk -v c="$c" -v n="$n" 'BEGIN {printf "%.2f", c * 1e6 / n}')")
    echo "round $r: loadtest at $QPS qps: $n answered, CPU ${c}s = ${LT_CPU[-1]} us/query" >&2

    c=$(cpu_of dnsperf -s 127.0.0.1 -p "$PORT" -d "$TMP/names.txt" -l "$DURATION")
    DP_MAX+=("$(dp_qps)")
    DP_PERCPU+=("$(awk -v c="$c" -v n="$(dp_completed)" 'BEGIN {printf "%.0f", n / c}')")
    echo "round $r: dnsperf  flat out: ${DP_MAX[-1]} qps, CPU ${c}s: ${DP_PERCPU[-1]} queries per CPU second" >&2

    c=$(cpu_of "$LOADTEST" load --server "127.0.0.1:$PORT" --qname-file "$TMP/names.txt" --rate 0 --window 100 --duration "$DURATION" --quiet)
    LT_MAX+=("$(lt_qps)")
    LT_PERCPU+=("$(awk -v c="$c" -v n="$(lt_answered)" 'BEGIN {printf "%.0f", n / c}')")
    echo "round $r: loadtest flat out: ${LT_MAX[-1]} qps ($(awk '/queries sent/ {print $7; exit}' "$TMP/run.out" | tr -d ,) lost), CPU ${c}s: ${LT_PERCPU[-1]} queries per CPU second" >&2
done

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
dc=$(median "${DP_CPU[@]}") lc=$(median "${LT_CPU[@]}") dm=$(median "${DP_MAX[@]}") lm=$(median "${LT_MAX[@]}")
dp=$(median "${DP_PERCPU[@]}") lp=$(median "${LT_PERCPU[@]}")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
echo
echo "| generator | CPU µs/query at $QPS qps (median) | each round | flat-out qps, one core (median) | each round | flat out: queries per CPU second (median) | each round |"
echo "|---|---:|---|---:|---|---:|---|"
echo "| dnsperf $(dnsperf -h 2>&1 | awk '/^Version/ {print $2; exit}') | $dc | ${DP_CPU[*]} | $dm | ${DP_MAX[*]} | $dp | ${DP_PERCPU[*]} |"
echo "| loadtest | $lc | ${LT_CPU[*]} | $lm | ${LT_MAX[*]} | $lp | ${LT_PERCPU[*]} |"
echo "| loadtest / dnsperf | $(ratio "$lc" "$dc") | | $(ratio "$lm" "$dm") | | $(ratio "$lp" "$dp") | |"
echo
echo "Command: QPS=$QPS DURATION=$DURATION ROUNDS=$ROUNDS NAMES=$NAMES loadtest/vs-dnsperf.sh"
echo "Machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), Linux $(uname -r); load average at end $(cut -d' ' -f1-3 /proc/loadavg); $(date -u '+%Y-%m-%d %H:%M UTC')."
