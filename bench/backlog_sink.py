#!/usr/bin/env python3
"""A counting SMTP sink for bench/backlog.sh: accepts every message, counts
each RCPT TO address it accepted a message for, and rewrites a JSON summary
({"messages", "distinct", "duplicates"}) to --stats every 200 ms. Optional
--delay-ms before each final reply (a slow MX). Loopback only; runs until
killed.

    bench/backlog_sink.py --port 12640 --stats /tmp/sink.json [--delay-ms 0]
"""
import argparse
import asyncio
import collections
import json
import os

counts = collections.Counter()
messages = 0


async def session(reader, writer, delay):
    global messages

    def send(line):
        writer.write(line.encode() + b"\r\n")

    send("220 sink.bench.test ESMTP backlog sink")
    rcpts = []
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            cmd = line.decode("latin-1").strip()
            verb = cmd[:4].upper()
            if verb in ("EHLO", "HELO"):
                send("250-sink.bench.test\r\n250-PIPELINING\r\n250 8BITMIME")
            elif verb == "MAIL":
                rcpts = []
                send("250 2.1.0 ok")
            elif verb == "RCPT":
                addr = cmd[cmd.find("<") + 1:cmd.rfind(">")].lower()
                rcpts.append(addr)
                send("250 2.1.5 ok")
            elif verb == "DATA":
                send("354 go ahead")
                await writer.drain()
                while True:
                    data = await reader.readline()
                    if not data:
                        return
                    if data == b".\r\n":
                        break
                if delay:
                    await asyncio.sleep(delay / 1000)
                messages += 1
                for a in rcpts:
                    counts[a] += 1
                send("250 2.0.0 ok")
            elif verb == "RSET":
                rcpts = []
                send("250 2.0.0 ok")
            elif verb == "QUIT":
                send("221 2.0.0 bye")
                await writer.drain()
                return
            else:
                send("250 2.0.0 ok")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


async def report(path):
    while True:
        summary = {
            "messages": messages,
            "distinct": len(counts),
            "duplicates": sum(n - 1 for n in counts.values()),
        }
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(summary, f)
        os.replace(tmp, path)
        await asyncio.sleep(0.2)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--stats", required=True)
    p.add_argument("--delay-ms", type=int, default=0)
    a = p.parse_args()
    server = await asyncio.start_server(
        lambda r, w: session(r, w, a.delay_ms), "127.0.0.1", a.port, limit=1 << 20
    )
    asyncio.ensure_future(report(a.stats))
    async with server:
        await server.serve_forever()


asyncio.run(main())
