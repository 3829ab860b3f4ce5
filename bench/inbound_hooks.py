#!/usr/bin/env python3
"""Webhook receiver for bench/inbound_linked.sh WEBHOOKS=1: answers every
POST with 204 and counts them (GET /count). Loopback only; the script stops
it by PID. Signatures are not checked here (relay.sh's webhook_sink does).

  inbound_hooks.py 127.0.0.1:PORT
"""
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COUNT = 0
LOCK = threading.Lock()


class Hook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        global COUNT
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(min(n, 1 << 20))
        with LOCK:
            COUNT += 1
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        body = str(COUNT).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    if not host.startswith("127.") and host != "::1":
        sys.exit("loopback addresses only")
    ThreadingHTTPServer((host, int(port)), Hook).serve_forever()


if __name__ == "__main__":
    main()
