"""Prometheus counters of one coordinator process (one registry per app, so several
apps in one test process do not share counts)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class Telemetry:
    """Prometheus counters of one coordinator process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("neuroedge_coord_http_requests", "HTTP requests",
                                ["route", "status"], registry=self.registry)
        self.updates = Counter("neuroedge_coord_updates", "Updates by outcome",
                               ["outcome"], registry=self.registry)
        self.bytes_received = Counter("neuroedge_coord_update_bytes", "Update bytes received",
                                      registry=self.registry)
        self.latest_version = Gauge("neuroedge_coord_latest_version",
                                    "Latest published bundle version", registry=self.registry)
