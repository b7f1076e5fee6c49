"""Prometheus metrics and the health summary of one appliance process."""
from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Telemetry:
    """Counters for ``/metrics`` and the last sync/error for ``/healthz``.

    One registry per app (not the global default), so several apps in one test process
    do not share counts.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.started = time.time()
        self.requests = Counter("neuroedge_http_requests", "HTTP requests",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("neuroedge_http_request_seconds", "Request latency",
                                 ["route"], registry=self.registry,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.predictions = Counter("neuroedge_predictions", "Predictions by label",
                                   ["label"], registry=self.registry)
        self.errors = Counter("neuroedge_errors", "Refused or failed requests by kind",
                              ["kind"], registry=self.registry)
        self.model_version = Gauge("neuroedge_model_version", "Serving bundle version",
                                   registry=self.registry)
        self.heatmaps_waiting = Gauge("neuroedge_heatmaps_waiting",
                                      "Heat maps queued or being drawn in the background",
                                      registry=self.registry)
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.last_error_detail: str | None = None  # for the admin page, not /healthz
        self.last_error_at: float | None = None
        self.last_sync_at: float | None = None

    def record_error(self, kind: str, message: str | None = None,
                     detail: str | None = None) -> None:
        """Count an error; remember ``message`` (never patient data) for the public
        /healthz, and ``detail`` (addresses, paths) for administrators only."""
        self.errors.labels(kind).inc()
        if message:
            with self._lock:
                self.last_error, self.last_error_at = message, time.time()
                self.last_error_detail = detail

    def uptime(self) -> float:
        return time.time() - self.started
