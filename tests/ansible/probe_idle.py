#!/usr/bin/env python3
"""Time a health probe while idle and slow clients hold connections open.

    probe_idle.py https://HOST:PORT/healthz --cacert CA [--idle 4] [--limit 1.0]

Opens --idle TCP connections that never send a byte (no ClientHello) and --idle that
finish the TLS handshake (plain HTTP: connect) and send half a request, then times
three probes from a fresh client. Exits 1 if one takes --limit seconds or more (issue
26: one idle connection stalled every client of the coordinator's cheroot TLS for 10 s).
Standard library only: it runs with the host's python3.
"""
from __future__ import annotations

import argparse
import contextlib
import socket
import ssl
import sys
import time
import urllib.request
from urllib.parse import urlsplit


def _half_request(sock: socket.socket, host: str, context: ssl.SSLContext | None):
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname=host)
    sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n".encode())
    return sock


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--cacert")
    parser.add_argument("--idle", type=int, default=4)
    parser.add_argument("--limit", type=float, default=1.0)
    args = parser.parse_args()
    url = urlsplit(args.url)
    https = url.scheme == "https"
    port = url.port or (443 if https else 80)
    context = ssl.create_default_context(cafile=args.cacert) if https else None
    with contextlib.ExitStack() as stack:
        for _ in range(args.idle):
            stack.enter_context(socket.create_connection((url.hostname, port), 5))
        for _ in range(args.idle):
            sock = socket.create_connection((url.hostname, port), 5)
            stack.enter_context(_half_request(sock, url.hostname, context))
        time.sleep(0.2)
        seconds = []
        for _ in range(3):
            started = time.monotonic()
            with urllib.request.urlopen(args.url, timeout=30, context=context) as answer:
                answer.read()
                status = answer.status
            seconds.append(time.monotonic() - started)
    worst = max(seconds)
    print(f"{args.url}: HTTP {status}, slowest of 3 probes {worst:.3f} s with "
          f"{args.idle} idle and {args.idle} half-sent connections open")
    return 0 if status == 200 and worst < args.limit else 1


if __name__ == "__main__":
    sys.exit(main())
