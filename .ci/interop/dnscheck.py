#!/usr/bin/env python3
"""Helpers for .ci/interop.sh: parse dig/kdig output, compare answers, raw packets.

Standard library only. Every network operation is bounded by a timeout and only
ever talks to the loopback address it is given.

  dnscheck.py freeports N             N distinct ports free for UDP and TCP on 127.0.0.1
  dnscheck.py field FILE status|flags|question|ancount
  dnscheck.py compare DIRECT VIA      DIRECT = output straight from NSD, VIA = through
                                      tierdns, same tool and options; exit 1 with the
                                      reason when they differ
  dnscheck.py raw HOST PORT CASE      send a hand-made packet; CASE is one of
                                      qdcount2 | qdcount2-tcp | qdcount0 | notify |
                                      short | badname | response
  dnscheck.py metrics URL REGEX SECS  poll URL until a line of its body matches REGEX
                                      at its start (bounded by SECS seconds)
"""

import os
import random
import re
import socket
import struct
import sys
import time
import urllib.request

SECTIONS = ("QUESTION", "ANSWER", "AUTHORITY", "ADDITIONAL")


def parse(text):
    """Parses dig or kdig text output into a dict (the last message printed wins)."""
    msg = {"status": None, "flags": None, "question": None,
           "ANSWER": [], "AUTHORITY": [], "ADDITIONAL": []}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        m = re.search(r"->>HEADER<<- opcode: (\w+)[,;] status: (\w+)[,;] id: (\d+)", line)
        if m:
            # a new message (dig prints the TCP retry after a truncated one)
            msg = {"status": m.group(2), "opcode": m.group(1), "id": int(m.group(3)),
                   "flags": None, "question": None,
                   "ANSWER": [], "AUTHORITY": [], "ADDITIONAL": []}
            section = None
            continue
        m = re.match(r";; [Ff]lags: ([a-z ]*);", line)
        if m:
            msg["flags"] = sorted(m.group(1).split())
            continue
        m = re.match(r";; (\w+) SECTION:", line)
        if m:
            section = m.group(1)
            continue
        if not line:
            continue
        if section == "QUESTION":
            # dig: ";name. IN A"   kdig: ";; name. IN A"
            q = line.lstrip(";").split()
            if q:
                msg["question"] = " ".join(q)
            continue
        if line.startswith(";"):
            continue
        if section in ("ANSWER", "AUTHORITY", "ADDITIONAL"):
            parts = line.split(None, 4)
            if len(parts) < 5:
                parts = line.split(None, 3) + [""]
            name, ttl, klass, rtype, rdata = parts[:5]
            if not ttl.isdigit():
                continue
            if rtype.upper() == "OPT":
                continue
            # Names are case-insensitive (and NSD echoes the query's letter case into
            # compressed names); TXT data is not.
            if rtype.upper() != "TXT":
                rdata = rdata.lower()
            rdata = " ".join(rdata.split())
            msg[section].append((name.lower(), klass.upper(), rtype.upper(), rdata, int(ttl)))
    return msg


def load(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return parse(f.read())


def rrset_key(records):
    return sorted(r[:4] for r in records)


def compare(direct_path, via_path):
    d, v = load(direct_path), load(via_path)
    problems = []
    if d["status"] is None:
        return ["no answer straight from NSD (see %s)" % direct_path]
    if v["status"] is None:
        return ["no answer through tierdns (see %s)" % via_path]
    if d["status"] != v["status"]:
        problems.append("rcode: NSD %s, tierdns %s" % (d["status"], v["status"]))
    if "tc" in (v["flags"] or []):
        problems.append("tierdns reply has TC=1")
    if d["question"] != v["question"]:
        problems.append("question echo: NSD %r, tierdns %r" % (d["question"], v["question"]))
    sections = ["ANSWER"]
    if not d["ANSWER"]:
        # negative answer (NXDOMAIN / NODATA): the SOA in AUTHORITY is what lets the
        # client cache it (RFC 2308), so it must come through too
        sections.append("AUTHORITY")
    for sec in sections:
        dk, vk = rrset_key(d[sec]), rrset_key(v[sec])
        if sec == "AUTHORITY":
            dk = [r for r in dk if r[2] == "SOA"]
            vk = [r for r in vk if r[2] == "SOA"]
        if dk != vk:
            missing = [r for r in dk if r not in vk]
            extra = [r for r in vk if r not in dk]
            problems.append("%s differs: missing %s extra %s" % (sec, missing, extra))
            continue
        dttl = {}
        for r in d[sec]:
            dttl[r[:4]] = max(dttl.get(r[:4], 0), r[4])
        for r in v[sec]:
            if r[:4] in dttl and r[4] > dttl[r[:4]]:
                problems.append("%s TTL through tierdns %d > NSD %d for %s"
                                % (sec, r[4], dttl[r[:4]], " ".join(r[:4])))
    if not problems:
        print("%s, %d answer records" % (v["status"], len(v["ANSWER"])))
    return problems


def field(path, name):
    m = load(path)
    if name == "flags":
        return " ".join(m["flags"] or [])
    if name == "ancount":
        return str(len(m["ANSWER"]))
    return str(m.get(name))


def freeports(n):
    ports, held = [], []
    try:
        for _ in range(200):
            if len(ports) == n:
                break
            port = random.randint(20000, 60000)
            if port in ports:
                continue
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                u.bind(("127.0.0.1", port))
                t.bind(("127.0.0.1", port))
            except OSError:
                u.close()
                t.close()
                continue
            held += [u, t]
            ports.append(port)
    finally:
        for s in held:
            s.close()
    if len(ports) != n:
        raise SystemExit("no free ports found")
    return ports


def encode_name(name):
    out = b""
    for label in name.strip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def question(name, qtype=1):
    return encode_name(name) + struct.pack("!HH", qtype, 1)


def exchange(host, port, packet, timeout, tcp=False):
    """Sends one packet; returns the reply bytes or None on timeout."""
    if tcp:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(struct.pack("!H", len(packet)) + packet)
            buf = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    chunk = s.recv(65535)
                except socket.timeout:
                    return None
                if not chunk:
                    return None
                buf += chunk
                if len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                    return buf[2:2 + struct.unpack("!H", buf[:2])[0]]
            return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        s.send(packet)
        try:
            return s.recv(65535)
        except socket.timeout:
            return None


def header(reply):
    ident, flags = struct.unpack("!HH", reply[:4])
    return ident, bool(flags & 0x8000), (flags >> 11) & 0xF, flags & 0xF


def raw_case(host, port, case):
    ident = random.randint(1, 0xFFFF)
    q = question("www.interop.test")
    expect = None          # expected rcode; None = expect no reply
    allow_drop = False     # also accept no reply
    tcp = False
    if case in ("qdcount2", "qdcount2-tcp"):
        pkt = struct.pack("!HHHHHH", ident, 0x0100, 2, 0, 0, 0) + q + question("x.interop.test")
        expect, tcp = 1, case.endswith("tcp")
    elif case == "qdcount0":
        pkt = struct.pack("!HHHHHH", ident, 0x0100, 0, 0, 0, 0)
        expect = 1
    elif case == "notify":
        # opcode 4 (NOTIFY), AA set as a primary would send it
        pkt = struct.pack("!HHHHHH", ident, (4 << 11) | 0x0400, 1, 0, 0, 0) + question("interop.test", 6)
        expect = 4
    elif case == "badname":
        # QDCOUNT=1 but the question name runs past the end of the packet
        pkt = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + b"\x3fwww"
        expect, allow_drop = 1, True
    elif case == "response":
        # QR=1: a response, not a query; answering it invites loops between servers
        pkt = struct.pack("!HHHHHH", ident, 0x8180, 1, 0, 0, 0) + q
    elif case == "short":
        pkt = b"\x12\x34\x01"
    else:
        raise SystemExit("unknown case " + case)
    reply = exchange(host, port, pkt, 1.5 if expect is None else 3.0, tcp)
    if reply is None:
        if expect is None or allow_drop:
            print("no reply (dropped), as expected")
            return True
        print("no reply within the timeout; expected rcode %d" % expect)
        return False
    if len(reply) < 12:
        print("reply of %d bytes, shorter than a header" % len(reply))
        return False
    rid, qr, opcode, rcode = header(reply)
    if expect is None:
        print("got a reply (id %d rcode %d) to a packet that should be dropped" % (rid, rcode))
        return False
    ok = rid == ident and qr and rcode == expect
    print("reply id %d (sent %d) qr=%d opcode=%d rcode=%d (want %d)"
          % (rid, ident, qr, opcode, rcode, expect))
    return ok


def metrics(url, name, secs):
    deadline = time.monotonic() + float(secs)
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                body = r.read().decode("utf-8", "replace")
            lines = [l for l in body.splitlines() if re.match(name, l)]
            if lines:
                print("%d lines, e.g. %s" % (len(lines), lines[0]))
                return True
            last = "no %s line in %d bytes" % (name, len(body))
        except Exception as e:  # noqa: BLE001 - report whatever went wrong
            last = repr(e)
        time.sleep(0.25)
    print(last)
    return False


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    cmd = argv[1]
    if cmd == "freeports":
        print(" ".join(map(str, freeports(int(argv[2])))))
        return 0
    if cmd == "field":
        print(field(argv[2], argv[3]))
        return 0
    if cmd == "compare":
        problems = compare(argv[2], argv[3])
        for p in problems:
            print(p)
        return 1 if problems else 0
    if cmd == "raw":
        return 0 if raw_case(argv[2], int(argv[3]), argv[4]) else 1
    if cmd == "metrics":
        return 0 if metrics(argv[2], argv[3], argv[4]) else 1
    raise SystemExit("unknown command " + cmd)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
