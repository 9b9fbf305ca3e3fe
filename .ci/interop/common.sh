# Sourced by the interop scripts (.ci/interop*.sh), after `set -euo pipefail`:
# the pass/fail counters, stopping what they started, installing missing tools,
# the tierdns binary, and the exit trap that cleans up.
#
# The caller sets, before or after sourcing:
#   STOP_ON_EXIT   names of the variables holding PIDs to stop on exit
#   WORK           the temp dir: on a failure its *.log files are shown, then it is
#                  removed (kept with KEEP_WORKDIR=1)

HOST=127.0.0.1
export NO_COLOR=1

PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "PASS: $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $*"; }
log() { echo "--- $*"; }

WORK=""
STOP_ON_EXIT=()
POLICY_RC_CREATED=""
STOPPED_RC=0

# stop_pid PID: SIGTERM, up to 5 s, then SIGKILL. Its exit status goes to
# STOPPED_RC (the function itself always succeeds, for callers under `set -e`).
stop_pid() {
    local pid="$1" i
    STOPPED_RC=0
    [[ -n "$pid" ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || STOPPED_RC=$?
    return 0
}

interop_cleanup() {
    local rc=$? var f
    set +e
    for var in "${STOP_ON_EXIT[@]}"; do
        stop_pid "${!var:-}"
    done
    if [[ -n "$POLICY_RC_CREATED" ]]; then rm -f /usr/sbin/policy-rc.d; fi
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if [[ $rc -ne 0 || $FAILED -ne 0 ]]; then
            for f in "$WORK"/*.log; do
                [[ -f "$f" ]] || continue
                echo "--- last lines of $f"
                tail -n 40 "$f"
            done
        fi
        if [[ -n "${KEEP_WORKDIR:-}" ]]; then
            echo "--- work dir kept: $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap interop_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# install_missing COMMAND:PACKAGE...: apt-get installs the packages whose command is
# missing (once), keeping the packages' own services from starting.
install_missing() {
    local missing=() sudo=() tool
    for tool in "$@"; do
        command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log "installing (missing: ${missing[*]})"
    if [[ $(id -u) -ne 0 ]]; then sudo=(sudo -n); fi
    if [[ $(id -u) -eq 0 && ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=1
    fi
    timeout 300 "${sudo[@]}" apt-get update -qq
    timeout 600 "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
    if [[ -n "$POLICY_RC_CREATED" ]]; then
        rm -f /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=""
    fi
}

# tierdns_binary: TIERDNS_BIN, built with cargo if it is not given.
tierdns_binary() {
    if [[ -z "${TIERDNS_BIN:-}" ]]; then
        log "cargo build --release"
        timeout 1800 cargo build --release --bin tierdns
        TIERDNS_BIN="${CARGO_TARGET_DIR:-target}/release/tierdns"
    fi
    [[ -x "$TIERDNS_BIN" ]] || { echo "FAIL: no tierdns binary at $TIERDNS_BIN"; exit 1; }
    echo "--- tierdns binary: $TIERDNS_BIN ($("$TIERDNS_BIN" --version 2>&1 || true))"
}

# wait_for SECONDS DESCRIPTION COMMAND...: runs COMMAND every 0.2 s until it succeeds.
wait_for() {
    local secs="$1" what="$2" deadline
    shift 2
    deadline=$((SECONDS + secs))
    while ((SECONDS < deadline)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "timed out after ${secs}s waiting for $what"
    return 1
}

# start_nsd: NSD on a free loopback port serving interop.test. from $DATA, rate
# limiting off (it is a benchmark and interop upstream); sets NSD_PORT and NSD_PID.
# Needs DATA, HELPER, WORK and the caller's `answers PORT` check; exits if NSD does
# not answer within 15 s.
start_nsd() {
    read -r NSD_PORT <<<"$("${HELPER[@]}" freeports 1)"
    cp "$DATA/interop.test.zone" "$WORK/"
    cat >"$WORK/nsd.conf" <<NSDCONF
server:
    ip-address: $HOST@$NSD_PORT
    port: $NSD_PORT
    do-ip6: no
    server-count: 1
    username: ""
    chroot: ""
    zonesdir: "$WORK"
    database: ""
    zonelistfile: "$WORK/zone.list"
    xfrdfile: "$WORK/xfrd.state"
    xfrdir: "$WORK"
    pidfile: "$WORK/nsd.pid"
    logfile: "$WORK/nsd.log"
    verbosity: 1
    hide-version: yes
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: "interop.test."
    zonefile: "$WORK/interop.test.zone"
NSDCONF
    timeout 10 nsd-checkconf "$WORK/nsd.conf"
    log "starting NSD on $HOST:$NSD_PORT"
    nsd -d -c "$WORK/nsd.conf" >>"$WORK/nsd.log" 2>&1 &
    NSD_PID=$!
    if ! wait_for 15 "NSD to answer" answers "$NSD_PORT"; then
        fail "NSD did not start"
        exit 1
    fi
}
