"""Prometheus metrics of one server (its own registry, so several apps in a process stay apart).

Example:
    >>> from rewarddance.serve.metrics import Metrics
    >>> m = Metrics(); m.errors.labels(kind="timeout").inc()
    >>> b'rewarddance_errors_total{kind="timeout"} 1.0' in m.render()
    True
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """Requests and latency by endpoint, batch sizes, queue depth, errors by kind, work per replica."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("rewarddance_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("rewarddance_request_latency_seconds", "HTTP request latency by endpoint",
                                 ["endpoint"], registry=r,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        self.in_flight = Gauge("rewarddance_requests_in_flight", "HTTP requests being handled", registry=r)
        self.queue_depth = Gauge("rewarddance_queue_depth", "requests waiting for a model call", registry=r)
        self.batch_size = Histogram("rewarddance_batch_size", "items (images or videos) per model call",
                                    registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_requests = Histogram("rewarddance_batch_requests", "requests per model call", registry=r,
                                        buckets=(1, 2, 4, 8, 16, 32, 64))
        self.errors = Counter("rewarddance_errors", "error responses by kind", ["kind"], registry=r)
        self.replica_batches = Counter("rewarddance_replica_batches", "model calls by replica", ["replica"],
                                       registry=r)
        self.replica_items = Counter("rewarddance_replica_items", "items scored by replica", ["replica"],
                                     registry=r)
        self.ready = Gauge("rewarddance_ready", "1 once the model is loaded", registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
