#!/usr/bin/env bash
# Loadtest smoke: a short, low-rate run of loadtest/peers.sh (tierdns on both
# backends, dnsdist, unbound, all behind NSD on loopback). Checks that every row
# ran and that tierdns answered every query; the CPU numbers of so short a run
# mean nothing and are not judged here.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp /tmp/tierdns-loadtest-smoke.XXXXXX.md)
trap 'rm -f "$out"' EXIT
if [ -z "${TIERDNS_BIN:-}" ]; then
    cargo build --release 2>&1 | tail -1
    export TIERDNS_BIN=${CARGO_TARGET_DIR:-target}/release/tierdns
fi
QPS=${QPS:-5000} DURATION=${DURATION:-3} ROUNDS=${ROUNDS:-1} NAMES=${NAMES:-200} OUT="$out" \
    timeout 600 loadtest/peers.sh
passed=0 failed=0
check() { # check NAME CONDITION-DESCRIPTION COMMAND...
    local name=$1 what=$2
    shift 2
    if "$@"; then
        echo "PASS: $name: $what"
        passed=$((passed + 1))
    else
        echo "FAIL: $name: $what"
        failed=$((failed + 1))
    fi
}
row() { grep -E "^\| $1 \|" "$out"; }
has_row() { row "$1" >/dev/null; }
lost_zero() { [ "$(row "$1" | awk -F'|' '{gsub(/ /, "", $4); print $4}')" = "0" ]; }
for server in tierdns tierdns-epoll dnsdist unbound; do
    check "$server" "has a row" has_row "$server"
done
for server in tierdns tierdns-epoll; do
    check "$server" "lost no query" lost_zero "$server"
done
echo "loadtest: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
