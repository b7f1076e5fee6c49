"""The clients of ``make bench``: keep-alive HTTP connections posting slices as fast as
they are answered, each request timed from its first byte sent to its answer read."""
from __future__ import annotations

import http.client
import statistics
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

BOUNDARY = "neuroedge-bench-boundary"


@dataclass(frozen=True)
class Target:
    """Where a server takes one slice per POST, and the headers it needs."""

    url: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)


def multipart(image: bytes, filename: str = "slice.jpg", field: str = "image") -> bytes:
    """A form with one file field, as a browser or a PACS script posts it."""
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode() + image + f"\r\n--{BOUNDARY}--\r\n".encode()


@dataclass
class Result:
    """Latencies (ms) of the answered requests, failures, and the wall time."""

    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    seconds: float = 0.0

    def merge(self, other: "Result") -> None:
        self.latencies += other.latencies
        self.failures += other.failures
        self.seconds += other.seconds

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile of the latencies (nearest rank), ms."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]

    @property
    def rate(self) -> float:
        """Answered uploads per second."""
        return len(self.latencies) / self.seconds if self.seconds else 0.0


class Connection:
    """One keep-alive connection posting bodies to ``target``."""

    def __init__(self, target: Target) -> None:
        parts = urlsplit(target.url)
        self._conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        self._path = target.path
        self._headers = {**target.headers, "Content-Type":
                         f"multipart/form-data; boundary={BOUNDARY}"}

    def post(self, body: bytes) -> tuple[int, float]:
        """Status and latency (ms) of one POST."""
        start = time.perf_counter()
        self._conn.request("POST", self._path, body=body, headers=self._headers)
        response = self._conn.getresponse()
        response.read()
        return response.status, (time.perf_counter() - start) * 1000

    def close(self) -> None:
        self._conn.close()


def hammer(target: Target, bodies: list[bytes], clients: int, seconds: float) -> Result:
    """``clients`` connections, each posting ``bodies`` in turn (each client starting at
    its own offset) for ``seconds``; every answer is waited for before the next post."""
    results = [Result() for _ in range(clients)]
    stop = time.perf_counter() + seconds

    def client(index: int) -> None:
        conn, mine, i = Connection(target), results[index], index * len(bodies) // clients
        try:
            while time.perf_counter() < stop:
                status, ms = conn.post(bodies[i % len(bodies)])
                if status == 201:
                    mine.latencies.append(ms)
                else:
                    mine.failures += 1
                i += 1
        finally:
            conn.close()
    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = Result(seconds=time.perf_counter() - start)
    for one in results:
        total.latencies += one.latencies
        total.failures += one.failures
    return total


def series(target: Target, bodies: list[bytes], connections: int) -> tuple[float, int]:
    """Seconds until every slice of ``bodies`` is answered, posted over ``connections``
    connections at once (as a browser sends a folder); and how many failed."""
    todo = list(enumerate(bodies))
    lock, failed = threading.Lock(), [0]

    def client() -> None:
        conn = Connection(target)
        try:
            while True:
                with lock:
                    if not todo:
                        return
                    _, body = todo.pop(0)
                if conn.post(body)[0] != 201:
                    with lock:
                        failed[0] += 1
        finally:
            conn.close()
    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, failed[0]


def median(values: list[float]) -> float:
    """The median, 0 for none."""
    return statistics.median(values) if values else 0.0
