"""Prometheus metrics shared by the adapters (multi-process safe under gunicorn)."""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from labelpilot.trainers.queue_status import QueueMonitor

REQUESTS = Counter("labelpilot_http_requests_total", "HTTP requests by endpoint and status",
                   ["endpoint", "method", "status"])
LATENCY = Histogram("labelpilot_http_request_seconds", "HTTP request latency", ["endpoint"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
PREDICTIONS = Counter("labelpilot_predictions_total", "Task predictions returned",
                      ["model_version"])
IMAGE_FETCH_ERRORS = Counter("labelpilot_image_fetch_errors_total",
                             "Images that could not be fetched or decoded", ["reason"])
WEBHOOK_EVENTS = Counter("labelpilot_webhook_events_total", "Webhook events received",
                         ["action", "outcome"])


class QueueCollector(Collector):
    """The training queue's state, read from Redis when scraped (so every gunicorn worker
    reports the same values without multiprocess gauge files)."""

    def __init__(self, monitor: QueueMonitor):
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        status = self.monitor.status()
        yield GaugeMetricFamily("labelpilot_redis_up", "1 if Redis answers, else 0",
                                value=int(status.redis_ok))
        if not status.redis_ok:
            return
        yield GaugeMetricFamily("labelpilot_rq_workers", "Live RQ workers on the training queue",
                                value=status.workers)
        yield GaugeMetricFamily("labelpilot_queue_depth", "Training jobs waiting in the queue",
                                value=status.depth)
        yield GaugeMetricFamily("labelpilot_queue_oldest_waiting_seconds",
                                "Age of the oldest waiting training job (0: none waits)",
                                value=status.oldest_waiting_s or 0.0)


def exposition(*extra: Collector) -> tuple[bytes, str]:
    """Metrics text; aggregated over all gunicorn workers when PROMETHEUS_MULTIPROC_DIR is set.
    `extra`: collectors read at scrape time (e.g. `QueueCollector`)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    if extra:
        registry = CollectorRegistry()
        for collector in extra:
            registry.register(collector)
        text += generate_latest(registry)
    return text, CONTENT_TYPE_LATEST
