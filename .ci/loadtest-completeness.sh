#!/usr/bin/env bash
# Loadtest completeness: short runs of `loadtest scenario completeness` (issue 21's
# measure: Zipf(1) over 100k names against five simulated upstreams at
# 20/40/80/150/300 ms on loopback, tierdns in front, then probes drawn from the same
# law). Once with tierdns' defaults, once with `--set budget.enabled=false`. Checks
# what holds on a loaded 2-core machine whatever the tuning: the scenario's own
# checks pass (every probe answered, the fleet and tierdns' /metrics agree on
# upstream queries, background completion settled), the tables have their columns
# and rows, the counts add up, the figures lie in the range any forwarder gives;
# with the budget off nothing is refused. Not the performance targets (those need
# 3000 qps for 25 s on a quiet machine: loadtest/completeness-results.md). Prints
# "N passed, M failed"; exits non-zero on a failure. About 25 s once built.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
tmp=$(mktemp -d /tmp/tierdns-loadtest-completeness.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

if [ -z "${TIERDNS_BIN:-}" ]; then
    cargo build --release --bin tierdns 2>&1 | tail -1
    export TIERDNS_BIN=${CARGO_TARGET_DIR:-target}/release/tierdns
fi
cargo build --release -p loadtest --bin loadtest 2>&1 | tail -1
LOADTEST=${CARGO_TARGET_DIR:-target}/release/loadtest
DURATION=${DURATION:-3} RATE=${RATE:-300} PROBES=${PROBES:-300}

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
# within VALUE LOW HIGH
within() { awk -v v="$1" -v lo="$2" -v hi="$3" 'BEGIN {exit !(v != "" && v + 0 >= lo && v + 0 <= hi)}'; }

header='| config | client queries | misses % | answers with all 10 % | mean addresses per answer | upstream queries per client query | upstream queries per client miss | miss p50 ms | miss p99 ms | p50 ms (all queries) | p99 ms (all queries) | budget refused active/hedge/completion |'
bands='| band (rank) | probes | answered | asked in the load | answers with all 10 % | asked names: answers with all 10 % | mean addresses per answer |'

run() { # run TAG [--set ...]: one scenario run, its table checked
    local tag=$1 rc=0
    shift
    timeout --kill-after=10 90 "$LOADTEST" scenario completeness --duration "$DURATION" --rate "$RATE" \
        --probes "$PROBES" --quiet --json "$tmp/$tag.json" "$@" >"$tmp/$tag.md" 2>"$tmp/$tag.err" || rc=$?
    cat "$tmp/$tag.md"
    if [ "$rc" -ne 0 ]; then
        tail -20 "$tmp/$tag.err"
    fi
    check "$tag: scenario completeness exits 0 (got $rc; its own checks: probes answered, counts agree, completion settled)" [ "$rc" -eq 0 ]
    check "$tag: table columns in order" grep -qxF "$header" "$tmp/$tag.md"
    check "$tag: band table columns in order" grep -qxF "$bands" "$tmp/$tag.md"
    local rows
    rows=$(grep -cE '^\| (all|1-100|101-1000|1001-10000|10001-100000) \|' "$tmp/$tag.md" || true)
    check "$tag: five band rows (got $rows)" [ "$rows" -eq 5 ]
    # the run's row: the one line after the main header's separator
    local row
    row=$(awk -v h="$header" '$0 == h {getline; getline; print; exit}' "$tmp/$tag.md")
    cell() { echo "$row" | awk -F'|' -v c="$1" '{v = $(c + 1); gsub(/ /, "", v); print v}'; }
    local sent=$(cell 2) misses=$(cell 3) full=$(cell 4) mean=$(cell 5) per_query=$(cell 6) per_miss=$(cell 7)
    check "$tag: client queries $sent at least half of $RATE qps x $DURATION s" \
        within "$sent" "$(awk -v r="$RATE" -v d="$DURATION" 'BEGIN {print r * d / 2}')" 1e12
    check "$tag: misses $misses % within 1..100" within "$misses" 1 100
    check "$tag: answers with all 10 $full % within 0..100" within "$full" 0 100
    check "$tag: mean addresses per answer $mean within 2..10 (at least one upstream's two)" within "$mean" 2 10
    check "$tag: upstream queries per miss $per_miss within 1..5.5" within "$per_miss" 1 5.5
    check "$tag: upstream queries per client query $per_query within 0..per miss" within "$per_query" 0 "$per_miss"
    check "$tag: JSON: counts add up (probes = sum of bands = answered; fleet = tierdns; one row)" \
        python3 - "$tmp/$tag.json" "$PROBES" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
probes = int(sys.argv[2])
e = j["extra"]
ok = (
    len(j["rows"]) == 1
    and e["all"]["probes"] == probes
    and e["all"]["answered"] == probes
    and sum(b["probes"] for b in e["bands"]) == probes
    and sum(b["asked"] for b in e["bands"]) == e["all"]["asked"]
    and e["upstream_queries"]["fleet"] == e["upstream_queries"]["tierdns"]
    and e["settled"] is True
    and e["all"]["full"] <= e["all"]["answered"]
)
if not ok:
    print(json.dumps({k: e[k] for k in ("all", "upstream_queries", "settled")}, indent=1))
sys.exit(0 if ok else 1)
PY
    refused=$(cell 12)
    echo "$refused" >"$tmp/$tag.refused"
}

run defaults
run budget-off --set budget.enabled=false
refused=$(cat "$tmp/budget-off.refused")
check "budget-off: nothing refused by the budget (got $refused)" [ "$refused" = "0/0/0" ]
check "budget-off: the config column names the --set" grep -qE '^\| budget\.enabled=false \|' "$tmp/budget-off.md"

rc=0
"$LOADTEST" scenario completeness --set 'server.listen=["0.0.0.0:53"]' --quiet >/dev/null 2>"$tmp/refused.err" || rc=$?
check "--set on [server] is refused before anything starts (exit $rc)" \
    bash -c "[ $rc -ne 0 ] && grep -q 'scenario' '$tmp/refused.err'"

echo "loadtest completeness: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
