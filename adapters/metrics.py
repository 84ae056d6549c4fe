"""Prometheus metrics shared by the adapters (multi-process safe under gunicorn)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

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


def exposition() -> tuple[bytes, str]:
    """Metrics text; aggregated over all gunicorn workers when PROMETHEUS_MULTIPROC_DIR is set."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
