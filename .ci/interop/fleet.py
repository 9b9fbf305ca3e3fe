#!/usr/bin/env python3
"""A simulated upstream fleet for the tier interop check (standard library only).

    fleet.py PORT DELAYS_MS [SECONDS]

Starts one UDP DNS server per delay on 127.0.0.(11+i):PORT. Server i answers every
A query with two addresses of its own, 10.0.i.1 and 10.0.i.2 (TTL 300), after
DELAYS_MS[i] milliseconds; other types get NOERROR with no answer. It exits after
SECONDS (default 120) or on SIGTERM. Loopback only.
"""
import signal
import socket
import struct
import sys
import threading
import time


def answer(query: bytes, index: int) -> bytes | None:
    if len(query) < 12:
        return None
    qid, flags, qdcount = struct.unpack("!HHH", query[:6])
    if qdcount != 1 or flags & 0x8000:
        return None
    pos = 12
    while pos < len(query) and query[pos] != 0:
        pos += 1 + query[pos]
    end = pos + 5
    if end > len(query):
        return None
    question = query[12:end]
    qtype = struct.unpack("!H", query[pos + 1:pos + 3])[0]
    records = b""
    count = 0
    if qtype == 1:
        for last in (1, 2):
            records += struct.pack("!HHHIH", 0xC00C, 1, 1, 300, 4) + bytes([10, 0, index, last])
            count += 1
    rd = flags & 0x0100
    header = struct.pack("!HHHHHH", qid, 0x8080 | rd, 1, count, 0, 0)
    return header + question + records


def serve(index: int, port: int, delay: float, stop: threading.Event) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((f"127.0.0.{11 + index}", port))
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            data, peer = sock.recvfrom(4096)
        except socket.timeout:
            continue
        reply = answer(data, index)
        if reply is not None:
            threading.Timer(delay, sock.sendto, (reply, peer)).start()


def main() -> None:
    port = int(sys.argv[1])
    delays = [int(d) / 1000 for d in sys.argv[2].split(",")]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 120
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = [
        threading.Thread(target=serve, args=(i, port, d, stop), daemon=True)
        for i, d in enumerate(delays)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + seconds
    while not stop.is_set() and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()


if __name__ == "__main__":
    main()
