#!/usr/bin/env bash
# Interop test of the encrypted upstreams: tierdns asking a real resolver (Debian's
# unbound) over DNS over TLS (RFC 7858) and, when unbound is built with nghttp2, over
# DNS over HTTPS (RFC 8484), with a private CA made here by openssl; dig and kdig as
# the clients.
#
#   .ci/interop-encrypted-upstreams.sh                  builds target/release/tierdns
#   TIERDNS_BIN=path .ci/interop-encrypted-upstreams.sh uses that binary
#   KEEP_WORKDIR=1 ...                                  keeps the temp dir
#
# What it checks, for io = "uring" and then io = "epoll" (as .ci/interop.sh):
#   - unbound itself answers over TLS and HTTPS (kdig +tls, kdig +https with the CA):
#     the setup is right before tierdns is judged
#   - through a tls:// upstream and an https:// upstream, dig gets unbound's local
#     answer (NOERROR and the two addresses), over UDP and TCP, the same as kdig
#     straight from unbound; several names in a row (connection reuse) all answer
#   - unbound logged the queries tierdns sent (so they did go over TLS/HTTPS: unbound
#     has no plain port here)
#   - a wrong tls_name: SERVFAIL, tierdns_upstream_tls_failures_total{reason=
#     "name_mismatch"} counted, and unbound logged no query from it
#   - SIGTERM: tierdns exits 0
#
# unbound answers only its local zone (enc.test.) and refuses everything else
# (local-zone "." refuse): it never recurses, and its outgoing interface is
# 127.0.0.1 with do-not-query-localhost, so nothing leaves the machine. tierdns is
# only ever started with --config and only 127.0.0.1 upstreams. Everything started
# is stopped on exit; the whole script is bounded by timeouts.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT"
HELPER=(python3 "$HERE/interop/dnscheck.py")
. "$HERE/interop/common.sh"
UNBOUND_PID=""
TIERDNS_PID=""
STOP_ON_EXIT=(TIERDNS_PID UNBOUND_PID)

install_missing unbound:unbound openssl:openssl dig:bind9-dnsutils kdig:knot-dnsutils python3:python3 curl:curl
tierdns_binary
echo "--- $(unbound -V 2>&1 | head -1)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tierdns-enc-up.XXXXXX")"


# ---------------------------------------------------------------- private CA
log "private CA and a certificate for unbound.test and 127.0.0.1 (openssl)"
(
    cd "$WORK"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout ca.key -out ca.pem -days 2 -subj "/CN=tierdns CI CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout server.key -out server.csr -subj "/CN=unbound.test" 2>/dev/null
    printf '%s\n' "subjectAltName=DNS:unbound.test,IP:127.0.0.1" \
        "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth" >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
        -out server.pem -days 2 -extfile server.ext 2>/dev/null
)
if openssl verify -CAfile "$WORK/ca.pem" "$WORK/server.pem" >/dev/null 2>&1; then
    pass "openssl made a CA and a server certificate that verifies against it"
else
    fail "the server certificate does not verify against the CA"
    exit 1
fi

# ---------------------------------------------------------------- unbound
read -r DOT_PORT DOH_PORT <<<"$("${HELPER[@]}" freeports 2)"
DOH=""
if unbound -V 2>&1 | grep -q -- '--with-libnghttp2'; then DOH=1; fi
{
    cat <<EOF
server:
    username: ""
    chroot: ""
    directory: "$WORK"
    pidfile: "$WORK/unbound.pid"
    use-syslog: no
    logfile: "$WORK/unbound.log"
    verbosity: 1
    log-queries: yes
    num-threads: 1
    do-ip6: no
    interface: $HOST@$DOT_PORT
    tls-port: $DOT_PORT
    tls-service-key: "$WORK/server.key"
    tls-service-pem: "$WORK/server.pem"
    access-control: 127.0.0.0/8 allow
    # Nothing leaves the machine: the local zone only, everything else refused,
    # and the only outgoing interface is loopback, which unbound does not query.
    outgoing-interface: $HOST
    do-not-query-localhost: yes
    module-config: "iterator"
    local-zone: "." refuse
    local-zone: "enc.test." static
    local-data: "enc.test. 300 IN SOA ns.enc.test. admin.enc.test. 1 3600 600 86400 300"
    local-data: "www.enc.test. 300 IN A 192.0.2.10"
    local-data: "www.enc.test. 300 IN A 192.0.2.11"
    local-data: "a.enc.test. 300 IN A 192.0.2.21"
    local-data: "b.enc.test. 300 IN A 192.0.2.22"
    local-data: "c.enc.test. 300 IN A 192.0.2.23"
    local-data: "secret.enc.test. 300 IN A 192.0.2.99"
EOF
    if [[ -n "$DOH" ]]; then
        cat <<EOF
    interface: $HOST@$DOH_PORT
    https-port: $DOH_PORT
    http-endpoint: "/dns-query"
EOF
    fi
    cat <<EOF
remote-control:
    control-enable: no
EOF
} >"$WORK/unbound.conf"
if unbound-checkconf "$WORK/unbound.conf" >"$WORK/checkconf.txt" 2>&1; then
    pass "unbound-checkconf accepts the config"
else
    fail "unbound-checkconf: $(tr '\n' ' ' <"$WORK/checkconf.txt")"
    exit 1
fi
log "starting unbound: DoT on $HOST:$DOT_PORT${DOH:+, DoH on $HOST:$DOH_PORT}"
unbound -d -c "$WORK/unbound.conf" >"$WORK/unbound.out" 2>&1 &
UNBOUND_PID=$!

kdig_tls() {
    timeout 10 kdig @"$HOST" -p "$DOT_PORT" +tls-ca="$WORK/ca.pem" +tls-hostname=unbound.test \
        +time=2 +retry=0 "$@"
}
kdig_https() {
    timeout 10 kdig @"$HOST" -p "$DOH_PORT" +https=/dns-query +tls-ca="$WORK/ca.pem" \
        +tls-hostname=unbound.test +time=2 +retry=0 "$@"
}
unbound_answers() { kdig_tls www.enc.test A | grep -q 'status: NOERROR'; }
if wait_for 15 "unbound to answer over TLS" unbound_answers; then
    pass "unbound answers www.enc.test over TLS (kdig +tls with the private CA)"
else
    fail "unbound does not answer over TLS"
    exit 1
fi
kdig_tls www.enc.test A >"$WORK/direct-dot.txt" 2>&1 || true
echo "--- straight from unbound over TLS:"
grep -E 'status|IN[[:space:]]+A' "$WORK/direct-dot.txt" | sed 's/^/    /' || true
if [[ -n "$DOH" ]]; then
    if kdig_https www.enc.test A >"$WORK/direct-doh.txt" 2>&1 && grep -q 'status: NOERROR' "$WORK/direct-doh.txt"; then
        pass "unbound answers www.enc.test over HTTPS (kdig +https)"
    else
        fail "unbound does not answer over HTTPS: $(tr '\n' ' ' <"$WORK/direct-doh.txt" | cut -c1-300)"
        DOH=""
    fi
else
    echo "NOTE: this unbound is built without nghttp2: no DoH upstream to test"
fi
if kdig_tls +tls-hostname=wrong.test www.enc.test A >/dev/null 2>&1; then
    fail "kdig accepted unbound's certificate for wrong.test: the CA setup proves nothing"
else
    pass "kdig refuses the certificate for another name (the CA setup is strict)"
fi
# unbound refuses what is not local: it does not recurse.
if kdig_tls example.com A | grep -q 'status: REFUSED'; then
    pass "unbound refuses names outside enc.test (no recursion, nothing sent off the machine)"
else
    fail "unbound answered a name outside its local zone"
fi

# ---------------------------------------------------------------- tierdns
# addresses FILE: the A addresses in a dig output, sorted, one line.
addresses() { awk '$4 == "A" { print $5 }' "$1" | sort | tr '\n' ' '; }
status_of() { sed -n 's/.*status: \([A-Z]*\).*/\1/p' "$1" | head -1; }
queries_logged() { grep -c "$1" "$WORK/unbound.log" 2>/dev/null || true; }

IO=""
start_tierdns() { # start_tierdns NAME UPSTREAM_TOML [TOP_LEVEL_TOML]
    local name="$1" upstream="$2" top="${3:-}"
    read -r DNS_PORT METRICS_PORT <<<"$("${HELPER[@]}" freeports 2)"
    cat >"$WORK/tierdns-$name.toml" <<EOF
$top
[server]
listen = ["$HOST:$DNS_PORT"]
shards = 1
io = "$IO"
pin_cpus = false
shutdown_grace = "1s"

[metrics]
listen = "$HOST:$METRICS_PORT"
flush_interval = "100ms"

$upstream
EOF
    if ! "$TIERDNS_BIN" --check -c "$WORK/tierdns-$name.toml" >"$WORK/check-$name.txt" 2>&1; then
        fail "[$IO] tierdns --check rejects the $name config: $(cat "$WORK/check-$name.txt")"
        return 1
    fi
    TIERDNS_LOG=info "$TIERDNS_BIN" --config "$WORK/tierdns-$name.toml" >"$WORK/tierdns-$IO-$name.log" 2>&1 &
    TIERDNS_PID=$!
    if ! wait_for 15 "tierdns to listen" bash -c "echo >/dev/tcp/$HOST/$DNS_PORT"; then
        fail "[$IO] tierdns ($name) did not start"
        return 1
    fi
}

stop_tierdns() {
    stop_pid "$TIERDNS_PID"
    local rc=$STOPPED_RC
    TIERDNS_PID=""
    if [[ $rc -eq 0 ]]; then
        pass "[$IO] tierdns exits 0 on SIGTERM"
    else
        fail "[$IO] tierdns exited $rc on SIGTERM"
    fi
}

# through NAME: dig over UDP and TCP through tierdns gets unbound's answer.
through() {
    local name="$1" out before after n
    before=$(queries_logged "www.enc.test. A IN")
    for transport in udp tcp; do
        out="$WORK/$IO-$name-$transport.txt"
        opts=(+time=3 +tries=1)
        [[ $transport == tcp ]] && opts+=(+tcp)
        timeout 15 dig @"$HOST" -p "$DNS_PORT" "${opts[@]}" www.enc.test A >"$out" 2>&1 || true
        if [[ "$(status_of "$out")" == NOERROR && "$(addresses "$out")" == "192.0.2.10 192.0.2.11 " ]]; then
            pass "[$IO] $name: dig $transport www.enc.test A through tierdns: NOERROR, $(addresses "$out")"
        else
            fail "[$IO] $name: dig $transport: status $(status_of "$out"), addresses '$(addresses "$out")' (output: $out)"
        fi
    done
    echo "--- [$IO] $name, dig through tierdns:"
    grep -E 'status|IN[[:space:]]+A' "$WORK/$IO-$name-udp.txt" | sed 's/^/    /' || true
    after=$(queries_logged "www.enc.test. A IN")
    if ((after > before)); then
        pass "[$IO] $name: unbound logged tierdns' query ($((after - before)))"
    else
        fail "[$IO] $name: unbound logged no query for www.enc.test"
    fi
    # Several names in a row: all answered (one connection, reused).
    n=0
    for host in a b c; do
        out="$WORK/$IO-$name-$host.txt"
        timeout 10 dig @"$HOST" -p "$DNS_PORT" +time=3 +tries=1 "$host.enc.test" A >"$out" 2>&1 || true
        [[ "$(status_of "$out")" == NOERROR && -n "$(addresses "$out")" ]] && n=$((n + 1))
    done
    if [[ $n == 3 ]]; then
        pass "[$IO] $name: three more names answered in a row"
    else
        fail "[$IO] $name: $n of 3 more names answered"
    fi
}

IOS=(uring epoll)
for IO in "${IOS[@]}"; do
    log "io = $IO"
    if start_tierdns dot "[[upstream]]
name = \"unbound-dot\"
address = \"tls://$HOST:$DOT_PORT\"
tls_name = \"unbound.test\"
ca_file = \"$WORK/ca.pem\""; then
        through dot
        stop_tierdns
    fi
    if [[ -n "$DOH" ]] && start_tierdns doh "[[upstream]]
name = \"unbound-doh\"
address = \"https://$HOST:$DOH_PORT/dns-query\"
tls_name = \"unbound.test\"
ca_file = \"$WORK/ca.pem\""; then
        through doh
        stop_tierdns
    fi
done

# ---------------------------------------------------------------- a wrong name
IO=epoll
wrong="[[upstream]]
name = \"wrong-dot\"
address = \"tls://$HOST:$DOT_PORT\"
tls_name = \"wrong.test\"
ca_file = \"$WORK/ca.pem\""
if [[ -n "$DOH" ]]; then
    wrong="$wrong
[[upstream]]
name = \"wrong-doh\"
address = \"https://$HOST:$DOH_PORT\"
tls_name = \"wrong.test\"
ca_file = \"$WORK/ca.pem\""
fi
if start_tierdns wrong "$wrong" 'strategy = "parallel"'; then
    before=$(queries_logged "secret.enc.test.")
    out="$WORK/wrong.txt"
    timeout 15 dig @"$HOST" -p "$DNS_PORT" +time=5 +tries=1 secret.enc.test A >"$out" 2>&1 || true
    echo "--- wrong tls_name, dig through tierdns:"
    grep -E 'status|EDE|IN[[:space:]]+A' "$out" | sed 's/^/    /' || true
    if [[ "$(status_of "$out")" == SERVFAIL && -z "$(addresses "$out")" ]]; then
        pass "wrong tls_name: SERVFAIL, no address"
    else
        fail "wrong tls_name: status $(status_of "$out"), addresses '$(addresses "$out")' (output: $out)"
    fi
    sleep 0.5
    curl -s --max-time 5 "http://$HOST:$METRICS_PORT/metrics" >"$WORK/metrics.txt" || true
    for up in wrong-dot ${DOH:+wrong-doh}; do
        if grep -E "^tierdns_upstream_tls_failures_total\{.*upstream=\"$up\"" "$WORK/metrics.txt" | grep 'reason="name_mismatch"' | grep -qv ' 0$'; then
            pass "wrong tls_name: tierdns_upstream_tls_failures_total{upstream=\"$up\",reason=\"name_mismatch\"} counted"
        else
            fail "wrong tls_name: no name_mismatch failure counted for $up"
        fi
    done
    if grep -q 'tierdns_upstream_errors_total' "$WORK/metrics.txt"; then
        pass "wrong tls_name: the upstream errors are counted like any other"
    else
        fail "wrong tls_name: tierdns_upstream_errors_total missing"
    fi
    after=$(queries_logged "secret.enc.test.")
    if [[ "$after" == "$before" ]]; then
        pass "wrong tls_name: unbound received no query for the name (nothing sent)"
    else
        fail "wrong tls_name: unbound logged $((after - before)) queries for secret.enc.test"
    fi
    if grep -q "certificate does not verify" "$WORK/tierdns-$IO-wrong.log"; then
        pass "wrong tls_name: logged"
    else
        fail "wrong tls_name: no log line about the certificate"
    fi
    stop_tierdns
fi

echo "interop-encrypted-upstreams: $PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
