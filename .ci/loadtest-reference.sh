#!/usr/bin/env bash
# Loadtest reference: a short run of `loadtest scenario reference` (five simulated
# upstreams at 20/40/80/150/300 ms on loopback, tierdns in front, one row per
# strategy). Checks the table has its columns in order, the three rows, and values
# a working forwarder gives whatever its tuning: the fastest upstream's latency,
# parallel asking every upstream and caching their union, sequential asking about
# one. Prints "N passed, M failed"; exits non-zero on a failure. About a minute
# once tierdns is built (TIERDNS_BIN, else it is built here). 3 s per strategy: a
# fresh tierdns with the sequential strategy tries each never-answered upstream in
# turn first (about 0.6 s of misses go to the slower ones), which a 1 s run would
# see as its median.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
tmp=$(mktemp -d /tmp/tierdns-loadtest-reference.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

if [ -z "${TIERDNS_BIN:-}" ]; then
    cargo build --release --bin tierdns 2>&1 | tail -1
    export TIERDNS_BIN=${CARGO_TARGET_DIR:-target}/release/tierdns
fi
cargo build --release -p loadtest --bin loadtest 2>&1 | tail -1
LOADTEST=${CARGO_TARGET_DIR:-target}/release/loadtest

passed=0 failed=0
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then
        echo "PASS: $what"
        passed=$((passed + 1))
    else
        echo "FAIL: $what"
        failed=$((failed + 1))
    fi
}

rc=0
timeout --kill-after=10 150 "$LOADTEST" scenario reference --duration "${DURATION:-3}" --rate "${RATE:-100}" \
    --quiet --json "$tmp/reference.json" --svg "$tmp/reference.svg" >"$tmp/table.md" 2>"$tmp/stderr" || rc=$?
cat "$tmp/table.md"
if [ "$rc" -ne 0 ]; then
    tail -20 "$tmp/stderr"
fi
check "scenario reference exits 0 (got $rc)" [ "$rc" -eq 0 ]

header='| strategy | p50 ms | p99 ms | peak upstream in flight | upstream queries per miss | addresses cached % | completion ms |'
check "table columns in order" grep -qxF "$header" "$tmp/table.md"
rows=$(grep -cE '^\| (staggered|parallel|sequential) \|' "$tmp/table.md" || true)
check "three rows (got $rows)" [ "$rows" -eq 3 ]
check "JSON report written with three runs" \
    bash -c "[ \$(grep -c '\"label\"' '$tmp/reference.json') -eq 3 ]"
check "SVG latency plot written" grep -q '<svg' "$tmp/reference.svg"

# cell STRATEGY COLUMN(2..7): the value in that row
cell() { awk -F'|' -v s="$1" -v c="$2" '{gsub(/ /, "", $2)} $2 == s {v = $(c + 1); gsub(/ /, "", v); print v}' "$tmp/table.md"; }
# within VALUE LOW HIGH
within() { awk -v v="$1" -v lo="$2" -v hi="$3" 'BEGIN {exit !(v != "" && v + 0 >= lo && v + 0 <= hi)}'; }

for s in staggered parallel sequential; do
    p50=$(cell "$s" 2) p99=$(cell "$s" 3) peak=$(cell "$s" 4) qpm=$(cell "$s" 5) cached=$(cell "$s" 6)
    check "$s: p50 $p50 ms near the fastest upstream (15..60)" within "$p50" 15 60
    check "$s: p99 $p99 ms under a second" within "$p99" 1 1000
    check "$s: peak upstream in flight $peak within 1..5" within "$peak" 1 5
    check "$s: upstream queries per miss $qpm within 1..5.5" within "$qpm" 1 5.5
    check "$s: addresses cached $cached % within 10..100" within "$cached" 10 100
done
check "parallel: every upstream asked at once (peak $(cell parallel 4) = 5)" within "$(cell parallel 4)" 5 5
check "parallel: the union is cached (>= 90%, got $(cell parallel 6))" within "$(cell parallel 6)" 90 100
check "parallel: completion $(cell parallel 7) ms at the slowest upstream (280..700)" within "$(cell parallel 7)" 280 700
check "sequential: about one upstream query per miss (got $(cell sequential 5))" within "$(cell sequential 5)" 1 1.5
check "sequential: one upstream's addresses (<= 40%, got $(cell sequential 6))" within "$(cell sequential 6)" 1 40

echo "loadtest reference: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
