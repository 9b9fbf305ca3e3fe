#!/usr/bin/env python3
"""dot_load.py: a fixed rate of DNS queries over one reused DNS over TLS connection.

Used by loadtest/dot-peers.sh to charge a server's CPU time to cache hits over DoT.
One TLS session (verified against --ca for --name), queries pipelined on it: every
--tick seconds a batch of rate * tick queries goes out in one write, up to --window
outstanding (past it a batch is skipped and counted, never queued). Answers are
matched by ID. Prints one JSON line: sent, answered, skipped, seconds, and the
answers' rcodes. Bounded: --duration, then at most 3 s for the last answers.

  dot_load.py --port 8853 --ca ca.pem --name dns.test --names names.txt \
      --rate 10000 --duration 10
"""
import argparse
import asyncio
import json
import ssl
import struct
import sys
import time


def query(ident, name, qtype=1):
    q = struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack(">HH", qtype, 1)
    return struct.pack(">H", len(q)) + q


async def run(args):
    names = [l.split()[0] for l in open(args.names) if l.strip()]
    ctx = ssl.create_default_context(cafile=args.ca)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(args.host, args.port, ssl=ctx, server_hostname=args.name),
        timeout=5,
    )
    # Frames for IDs 0..65535 would be many; reuse one frame per name and ID block.
    frames = [query(i % 65536, names[i % len(names)]) for i in range(65536)]
    outstanding = set()
    rcodes = {}
    stats = {"sent": 0, "answered": 0, "skipped": 0}
    done_sending = asyncio.Event()

    async def read_loop():
        try:
            await read_answers()
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            if outstanding or not done_sending.is_set():
                stats["error"] = f"connection ended: {e!r}"

    async def read_answers():
        while True:
            if done_sending.is_set() and not outstanding:
                return
            head = await reader.readexactly(2)
            (n,) = struct.unpack(">H", head)
            msg = await reader.readexactly(n)
            ident, flags = struct.unpack(">HH", msg[:4])
            if ident in outstanding:
                outstanding.discard(ident)
                stats["answered"] += 1
                rc = flags & 15
                rcodes[rc] = rcodes.get(rc, 0) + 1
                if done_sending.is_set() and not outstanding:
                    return

    reading = asyncio.create_task(read_loop())
    per_tick = max(1, round(args.rate * args.tick))
    nxt = 0
    start = time.monotonic()
    tick = 0
    while not reading.done():
        now = time.monotonic()
        if now - start >= args.duration:
            break
        if len(outstanding) + per_tick > args.window:
            stats["skipped"] += per_tick
        else:
            batch = []
            for _ in range(per_tick):
                ident = nxt % 65536
                nxt += 1
                outstanding.add(ident)
                batch.append(frames[ident])
            writer.write(b"".join(batch))
            stats["sent"] += per_tick
        try:
            await writer.drain()
        except ConnectionError:
            break
        tick += 1
        delay = start + tick * args.tick - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    elapsed = time.monotonic() - start
    done_sending.set()
    if not outstanding:
        reading.cancel()
    try:
        await asyncio.wait_for(reading, timeout=3)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        pass
    writer.close()
    stats["seconds"] = round(elapsed, 3)
    stats["rcodes"] = rcodes
    stats["lost"] = len(outstanding)
    print(json.dumps(stats))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--name", required=True, help="the name the certificate is checked for")
    p.add_argument("--names", required=True, help="file: one query name per line")
    p.add_argument("--rate", type=float, default=10000)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--tick", type=float, default=0.005)
    p.add_argument("--window", type=int, default=2000)
    args = p.parse_args()
    if args.duration > 600 or args.rate > 200000:
        sys.exit("bounded: at most 600 s and 200000 queries/s")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
