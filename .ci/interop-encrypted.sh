#!/usr/bin/env bash
# Interop test of the encrypted listeners (issue 13): tierdns with [tls] (DNS over
# TLS, RFC 7858) and [https] (DNS over HTTPS, RFC 8484) in front of NSD, queried by
# kdig (+tls, +https) and curl (HTTP/2 and HTTP/1.1, GET and POST), with a private
# CA made here by openssl. On both io backends.
#
#   .ci/interop-encrypted.sh                   builds target/release/tierdns, then runs
#   TIERDNS_BIN=path .ci/interop-encrypted.sh  uses that binary instead
#   KEEP_WORKDIR=1 .ci/interop-encrypted.sh    keeps the temp dir (certs, configs, logs)
#
# What it checks, for io = "uring" and then io = "epoll":
#   - `tierdns --check` accepts the config; DoT and DoH ports take connections
#   - kdig +tls with the CA and the certificate's name: the same answer as NSD for an
#     A, a CNAME chain, NXDOMAIN; several queries on one session (+keepopen)
#   - kdig +https: the same answer as NSD
#   - curl --http2 and --http1.1, GET (?dns= base64url) and POST
#     (application/dns-message): HTTP 200 in that version, the content type,
#     cache-control max-age no longer than NSD's TTL, the answer's ID, rcode and count
#   - curl: another path 404, PUT 405, POST text/plain 415, a bad dns= 400
#   - a client that checks another name (kdig +tls-hostname, curl --resolve) is
#     refused by its own verification, and so is one without the CA
#   - SIGHUP after replacing the files with a certificate from a second CA: new
#     sessions verify with the second CA only
#   - SIGTERM: tierdns exits 0
#
# Only 127.0.0.1 is contacted; tierdns always runs with --config. Each client call
# has a timeout; everything started is killed and the temp dir removed on exit.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT"
DATA="$HERE/interop"
HELPER=(python3 "$DATA/dnscheck.py")
. "$HERE/interop/common.sh"
NAME=dns.interop.test
NSD_PID=""
TIERDNS_PID=""
STOP_ON_EXIT=(TIERDNS_PID NSD_PID)

install_missing nsd:nsd dig:bind9-dnsutils kdig:knot-dnsutils python3:python3 openssl:openssl curl:curl
tierdns_binary

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tierdns-interop-enc.XXXXXX")"

# ---------------------------------------------------------------- a private CA
# make_ca TAG: $WORK/TAG-ca.pem and its key.
make_ca() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$WORK/$1-ca.key" -out "$WORK/$1-ca.pem" -days 2 \
        -subj "/CN=tierdns interop CA $1" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}
# issue CA_TAG OUT_PREFIX: a server certificate for $NAME signed by that CA.
issue() {
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$WORK/$2.key" -out "$WORK/$2.csr" -subj "/CN=$NAME" 2>/dev/null
    printf 'subjectAltName=DNS:%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' \
        "$NAME" >"$WORK/$2.ext"
    openssl x509 -req -in "$WORK/$2.csr" -CA "$WORK/$1-ca.pem" -CAkey "$WORK/$1-ca.key" \
        -CAcreateserial -days 2 -extfile "$WORK/$2.ext" -out "$WORK/$2.pem" 2>/dev/null
}
make_ca first
make_ca second
issue first first-server
issue second second-server
CA="$WORK/first-ca.pem"
if openssl verify -CAfile "$CA" "$WORK/first-server.pem" >/dev/null; then
    pass "openssl: a private CA and a server certificate for $NAME"
else
    fail "openssl could not make the test certificates"
    exit 1
fi

# ---------------------------------------------------------------- NSD
read -r NSD_PORT <<<"$("${HELPER[@]}" freeports 1)"
cp "$DATA/interop.test.zone" "$WORK/"
cat >"$WORK/nsd.conf" <<EOF
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
EOF
timeout 10 nsd-checkconf "$WORK/nsd.conf"
nsd -d -c "$WORK/nsd.conf" >>"$WORK/nsd.log" 2>&1 &
NSD_PID=$!

answers() {
    dig @"$HOST" -p "$1" +time=1 +tries=1 interop.test SOA 2>/dev/null | grep -q 'status: NOERROR'
}
if wait_for 15 "NSD to answer" answers "$NSD_PORT"; then
    pass "NSD serves interop.test. on $HOST:$NSD_PORT"
else
    fail "NSD did not start"
    exit 1
fi

# ---------------------------------------------------------------- helpers
# A DNS query in wire form (ID, name, type number) into a file; and what a reply
# file holds: "id=.. rcode=.. ancount=..".
dns_query() { # ID NAME QTYPE OUT
    python3 - "$@" <<'PY'
import struct, sys
ident, name, qtype, out = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
q = struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0)
for label in name.rstrip(".").split("."):
    q += bytes([len(label)]) + label.encode()
q += b"\0" + struct.pack(">HH", qtype, 1)
open(out, "wb").write(q)
PY
}
dns_reply() { # FILE
    python3 - "$1" <<'PY'
import struct, sys
b = open(sys.argv[1], "rb").read()
if len(b) < 12:
    print(f"short reply of {len(b)} bytes")
else:
    ident, flags, qd, an = struct.unpack(">HHHH", b[:8])
    print(f"id={ident} rcode={flags & 15} ancount={an}")
PY
}
b64url() { base64 -w0 "$1" | tr '+/' '-_' | tr -d '='; }

QN=0
# kdig over TLS or HTTPS against NSD over UDP, compared with the interop helper.
compare_kdig() { # MODE(tls|https) NAME TYPE
    local mode="$1" name="$2" type="$3" d v msg opts
    QN=$((QN + 1))
    d="$WORK/q$QN-nsd.txt"
    v="$WORK/q$QN-tierdns.txt"
    timeout 15 kdig @"$HOST" -p "$NSD_PORT" +time=2 +retry=0 +norec "$name" "$type" >"$d" 2>&1 || true
    if [[ $mode == tls ]]; then
        opts=(-p "$DOT_PORT" +tls +tls-ca="$CA" +tls-hostname="$NAME")
    else
        opts=(-p "$DOH_PORT" +https=/dns-query +tls-ca="$CA" +tls-hostname="$NAME")
    fi
    timeout 15 kdig @"$HOST" "${opts[@]}" +time=3 +retry=0 "$name" "$type" >"$v" 2>&1 || true
    if msg=$("${HELPER[@]}" compare "$d" "$v" 2>&1); then
        pass "[$IO] kdig +$mode $name $type: same as NSD ($msg)"
    else
        fail "[$IO] kdig +$mode $name $type: $(echo "$msg" | tr '\n' ';') (outputs: $d $v)"
    fi
}

# curl_doh VERSION(--http2|--http1.1) METHOD(GET|POST) NAME QTYPE WANT_ANCOUNT
curl_doh() {
    local version="$1" method="$2" name="$3" qtype="$4" want="$5" id q out hdr args status got age ttl
    QN=$((QN + 1))
    id=$((4096 + QN))
    q="$WORK/q$QN.bin"
    out="$WORK/q$QN-reply.bin"
    hdr="$WORK/q$QN-headers.txt"
    dns_query "$id" "$name" "$qtype" "$q"
    args=(-sS --max-time 10 --cacert "$CA" --resolve "$NAME:$DOH_PORT:$HOST" "$version"
        -D "$hdr" -o "$out" -w '%{http_version} %{http_code}')
    if [[ $method == GET ]]; then
        status=$(curl "${args[@]}" "https://$NAME:$DOH_PORT/dns-query?dns=$(b64url "$q")" 2>&1) || true
    else
        status=$(curl "${args[@]}" -H 'content-type: application/dns-message' \
            --data-binary @"$q" "https://$NAME:$DOH_PORT/dns-query" 2>&1) || true
    fi
    local want_version=2
    [[ $version == --http1.1 ]] && want_version=1.1
    got=$(dns_reply "$out" 2>/dev/null || echo "no reply")
    age=$(tr -d '\r' <"$hdr" 2>/dev/null | sed -n 's/^cache-control: max-age=\([0-9]*\)$/\1/Ip' | head -1)
    ttl=$(timeout 10 dig @"$HOST" -p "$NSD_PORT" +norec +noall +answer "$name" A 2>/dev/null | awk 'NR==1 {print $2}')
    if [[ "$status" == "$want_version 200" && "$got" == "id=$id rcode=0 ancount=$want" ]] &&
        grep -qi '^content-type: application/dns-message' "$hdr" &&
        [[ -n "$age" && -n "$ttl" && "$age" -le "$ttl" ]]; then
        pass "[$IO] curl $version $method $name: HTTP/$status, $got, max-age=$age (NSD TTL $ttl)"
    else
        fail "[$IO] curl $version $method $name: '$status', '$got', max-age '$age', NSD TTL '$ttl' (files: $hdr $out)"
    fi
}

# curl_status WANT WHAT CURL_ARGS...: the HTTP status of a request that is not DNS.
curl_status() {
    local want="$1" what="$2" code
    shift 2
    code=$(curl -sS --max-time 10 --cacert "$CA" --resolve "$NAME:$DOH_PORT:$HOST" -o /dev/null \
        -w '%{http_code}' "$@" 2>/dev/null) || true
    if [[ "$code" == "$want" ]]; then
        pass "[$IO] curl $what: HTTP $code"
    else
        fail "[$IO] curl $what: HTTP '$code', expected $want"
    fi
}

# ---------------------------------------------------------------- tierdns
write_config() { # FILE IO CERT_PREFIX
    cat >"$1" <<EOF
[server]
listen = ["$HOST:$DNS_PORT"]
shards = 2
io = "$2"
pin_cpus = false

[metrics]
enabled = false

[access]
allow = ["$HOST/32"]

[tls]
listen = ["$HOST:$DOT_PORT"]
cert_file = "$WORK/server.pem"
key_file = "$WORK/server.key"
handshake_timeout = "2s"

[https]
listen = ["$HOST:$DOH_PORT"]
path = "/dns-query"

[[upstream]]
address = "$HOST:$NSD_PORT"
name = "nsd"
EOF
}

dot_answers() {
    timeout 5 kdig @"$HOST" -p "$DOT_PORT" +tls +tls-ca="$CA" +tls-hostname="$NAME" +time=1 +retry=0 \
        interop.test SOA 2>/dev/null | grep -q 'status: NOERROR'
}

for IO in uring epoll; do
    read -r DNS_PORT DOT_PORT DOH_PORT <<<"$("${HELPER[@]}" freeports 3)"
    cp "$WORK/first-server.pem" "$WORK/server.pem"
    cp "$WORK/first-server.key" "$WORK/server.key"
    CA="$WORK/first-ca.pem"
    conf="$WORK/tierdns-$IO.toml"
    write_config "$conf" "$IO"
    if out=$(timeout 10 "$TIERDNS_BIN" --check --config "$conf" 2>&1); then
        pass "[$IO] tierdns --check accepts [tls] and [https] ($out)"
    else
        fail "[$IO] tierdns --check rejects the config: $out"
        continue
    fi
    TIERDNS_LOG=info "$TIERDNS_BIN" --config "$conf" >"$WORK/tierdns-$IO.log" 2>&1 &
    TIERDNS_PID=$!
    if wait_for 15 "tierdns ($IO) to answer over TLS" dot_answers; then
        pass "[$IO] tierdns answers DNS over TLS on $HOST:$DOT_PORT"
    else
        fail "[$IO] tierdns did not answer over TLS"
        stop_pid "$TIERDNS_PID"
        TIERDNS_PID=""
        continue
    fi

    compare_kdig tls www.interop.test A
    compare_kdig tls alias.interop.test A
    compare_kdig tls nonexistent.interop.test A
    compare_kdig https www.interop.test A
    compare_kdig https interop.test MX

    # Several queries on one TLS session.
    QN=$((QN + 1))
    out="$WORK/q$QN-keepopen.txt"
    timeout 20 kdig @"$HOST" -p "$DOT_PORT" +tls +tls-ca="$CA" +tls-hostname="$NAME" +keepopen \
        +time=3 +retry=0 www.interop.test A interop.test MX alias.interop.test A >"$out" 2>&1 || true
    n=$(grep -c 'status: NOERROR' "$out" || true)
    if [[ $n == 3 ]]; then
        pass "[$IO] kdig +tls +keepopen: 3 queries answered NOERROR on one session"
    else
        fail "[$IO] kdig +tls +keepopen: $n NOERROR answers of 3 (output: $out)"
    fi

    for version in --http2 --http1.1; do
        curl_doh "$version" GET www.interop.test 1 3
        curl_doh "$version" POST alias.interop.test 1 "$(timeout 10 dig @"$HOST" -p "$NSD_PORT" +norec +noall +answer alias.interop.test A | grep -c .)"
    done
    dns_query 1 www.interop.test 1 "$WORK/plain.bin"
    curl_status 404 "another path" --http2 "https://$NAME:$DOH_PORT/other?dns=$(b64url "$WORK/plain.bin")"
    curl_status 405 "PUT" --http2 -X PUT -H 'content-type: application/dns-message' \
        --data-binary @"$WORK/plain.bin" "https://$NAME:$DOH_PORT/dns-query"
    curl_status 415 "POST text/plain" --http1.1 -H 'content-type: text/plain' \
        --data-binary @"$WORK/plain.bin" "https://$NAME:$DOH_PORT/dns-query"
    curl_status 400 "a bad dns= parameter" --http1.1 "https://$NAME:$DOH_PORT/dns-query?dns=@@@"

    # Verification on the client's side: another name, or no CA, is refused.
    QN=$((QN + 1))
    out="$WORK/q$QN-wrongname.txt"
    timeout 15 kdig @"$HOST" -p "$DOT_PORT" +tls +tls-ca="$CA" +tls-hostname=wrong.interop.test \
        +time=2 +retry=0 www.interop.test A >"$out" 2>&1 || true
    if grep -q 'status: NOERROR' "$out"; then
        fail "[$IO] kdig +tls-hostname=wrong.interop.test got an answer (output: $out)"
    else
        pass "[$IO] kdig +tls checking another name: refused by its verification, no answer"
    fi
    rc=0
    timeout 15 curl -sS --max-time 10 --cacert "$CA" --resolve "wrong.interop.test:$DOH_PORT:$HOST" \
        -o /dev/null "https://wrong.interop.test:$DOH_PORT/dns-query?dns=$(b64url "$WORK/plain.bin")" 2>/dev/null || rc=$?
    if [[ $rc == 60 ]]; then
        pass "[$IO] curl for wrong.interop.test: refused by its verification (exit 60)"
    else
        fail "[$IO] curl for wrong.interop.test: exit $rc, expected 60 (certificate problem)"
    fi
    rc=0
    timeout 15 curl -sS --max-time 10 --resolve "$NAME:$DOH_PORT:$HOST" -o /dev/null \
        "https://$NAME:$DOH_PORT/dns-query?dns=$(b64url "$WORK/plain.bin")" 2>/dev/null || rc=$?
    if [[ $rc == 60 ]]; then
        pass "[$IO] curl without the private CA: refused by its verification (exit 60)"
    else
        fail "[$IO] curl without the private CA: exit $rc, expected 60"
    fi

    # SIGHUP rereads the certificate files.
    cp "$WORK/second-server.pem" "$WORK/server.pem"
    cp "$WORK/second-server.key" "$WORK/server.key"
    kill -HUP "$TIERDNS_PID"
    CA="$WORK/second-ca.pem"
    if wait_for 10 "the second certificate over TLS" dot_answers; then
        pass "[$IO] SIGHUP: the new certificate (second CA) is served over TLS"
    else
        fail "[$IO] SIGHUP: the new certificate is not served"
    fi
    code=$(curl -sS --max-time 10 --cacert "$CA" --resolve "$NAME:$DOH_PORT:$HOST" -o /dev/null -w '%{http_code}' \
        "https://$NAME:$DOH_PORT/dns-query?dns=$(b64url "$WORK/plain.bin")" 2>/dev/null) || true
    if [[ $code == 200 ]]; then
        pass "[$IO] SIGHUP: DoH verifies with the second CA"
    else
        fail "[$IO] SIGHUP: DoH with the second CA: HTTP '$code'"
    fi
    CA="$WORK/first-ca.pem"
    if dot_answers; then
        fail "[$IO] SIGHUP: the first CA still verifies"
    else
        pass "[$IO] SIGHUP: the first CA no longer verifies"
    fi

    kill -TERM "$TIERDNS_PID"
    rc=0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$TIERDNS_PID" 2>/dev/null || break
        sleep 0.1
    done
    wait "$TIERDNS_PID" || rc=$?
    TIERDNS_PID=""
    if [[ $rc == 0 ]]; then
        pass "[$IO] SIGTERM: tierdns exited 0"
    else
        fail "[$IO] SIGTERM: tierdns exited $rc"
    fi
done

echo "interop-encrypted: $PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
