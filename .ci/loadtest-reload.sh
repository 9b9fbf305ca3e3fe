#!/usr/bin/env bash
# Reload under load (issue 20): `loadtest scenario reload` sends a Zipf mix at 2000
# qps to tierdns in front of five simulated upstreams on loopback and SIGHUPs it
# every second with a changed config (stagger delay, an upstream removed and back,
# the strategy). The scenario exits non-zero when a query is lost or a reload is
# not applied; this checks that, and that the table says so. About 10 s.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
tmp=$(mktemp -d /tmp/tierdns-loadtest-reload.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
if [ -z "${TIERDNS_BIN:-}" ]; then
    cargo build --release --bin tierdns 2>&1 | tail -1
    export TIERDNS_BIN=${CARGO_TARGET_DIR:-target}/release/tierdns
fi
cargo build --release -p loadtest --bin loadtest 2>&1 | tail -1
LOADTEST=${CARGO_TARGET_DIR:-target}/release/loadtest
rc=0
timeout --kill-after=10 120 "$LOADTEST" scenario reload --duration "${DURATION:-6}" --quiet \
    >"$tmp/table.md" 2>"$tmp/stderr" || rc=$?
cat "$tmp/table.md"
if [ "$rc" -ne 0 ]; then
    echo "FAIL: loadtest scenario reload exited $rc"
    cat "$tmp/stderr"
    exit 1
fi
# The row: reloads sent, applied, queries, answered, lost, SERVFAIL, p50, p99, lost = 0.
row=$(grep -E '^\| [0-9]+ \| [0-9]+ \|' "$tmp/table.md" | head -1)
[ -n "$row" ] || { echo "FAIL: no result row"; exit 1; }
IFS='|' read -r _ sent applied queries answered lost _ <<<"$row"
sent=${sent// /} applied=${applied// /} queries=${queries// /} answered=${answered// /} lost=${lost// /}
if [ "$lost" != 0 ] || [ "$answered" != "$queries" ] || [ "$applied" != "$sent" ] || [ "$sent" -lt 3 ]; then
    echo "FAIL: reload under load: sent $sent, applied $applied, queries $queries, answered $answered, lost $lost"
    exit 1
fi
echo "PASS: $sent reloads under load, all applied, $answered of $queries answered, 0 lost"
