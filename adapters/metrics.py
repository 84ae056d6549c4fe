"""Prometheus metrics shared by the adapters (multi-process safe under gunicorn)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import redis
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

from labelpilot.backends.acceptance import AcceptanceLedger
from labelpilot.backends.quality_ledger import QualityLedger
from labelpilot.trainers.drift_monitor import drift_status
from labelpilot.trainers.queue_status import QueueMonitor
from labelpilot.trainers.retraining import RetrainingRequests

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


class WatchCollector(Collector):
    """What the watchers found, read from Redis at scrape time (the same figures in every
    gunicorn worker): quality findings per project, the acceptance of predictions per model
    version, drift and retraining requests."""

    def __init__(self, quality: QualityLedger, acceptance: AcceptanceLedger,
                 requests: RetrainingRequests, model_keys: Callable[[], list[str]]):
        self.quality = quality
        self.acceptance = acceptance
        self.requests = requests
        self.model_keys = model_keys  # whose drift status to report

    def collect(self) -> Iterator[Metric]:
        try:
            families = list(self._families())
        except redis.RedisError:
            return  # labelpilot_redis_up (QueueCollector) says why
        yield from families

    def _families(self) -> Iterator[Metric]:
        findings = GaugeMetricFamily(
            "labelpilot_quality_findings", "Checked images with each quality finding "
            "(finding=\"checked\": all checked images)", labels=["project", "finding"])
        for project in self.quality.projects():
            for finding, count in self.quality.counts(project).items():
                findings.add_metric([project, finding], count)
        yield findings
        regions = GaugeMetricFamily(
            "labelpilot_acceptance_regions", "Predicted regions annotators kept or deleted, and "
            "regions they added, per model version", labels=["project", "model_version",
                                                             "outcome"])
        rate = GaugeMetricFamily(
            "labelpilot_acceptance_rate", "Share of predicted regions annotators kept "
            "(same label, IoU >= 0.5)", labels=["project", "model_version"])
        annotations = GaugeMetricFamily(
            "labelpilot_acceptance_annotations", "Submitted annotations compared with a "
            "prediction", labels=["project", "model_version"])
        for row in self.acceptance.summary():
            labels = [str(row["project"]), str(row["model_version"])]
            for outcome in ("predicted", "kept", "added", "deleted"):
                regions.add_metric([*labels, outcome], float(row[outcome]))  # type: ignore[arg-type]
            annotations.add_metric(labels, float(row["annotations"]))  # type: ignore[arg-type]
            if row["rate"] is not None:
                rate.add_metric(labels, float(row["rate"]))  # type: ignore[arg-type]
        yield from (regions, rate, annotations)
        drifted = GaugeMetricFamily(
            "labelpilot_drift_detected", "1 if the last drift test of the served version "
            "found the recent images unlike its training images", labels=["model_key",
                                                                         "model_version"])
        p_value = GaugeMetricFamily("labelpilot_drift_p_value", "p-value of the last drift test",
                                    labels=["model_key", "model_version"])
        for key in self.model_keys():
            status = drift_status(self.quality.connection, key)
            if status is not None:
                labels = [key, str(status.get("model_version", ""))]
                drifted.add_metric(labels, float(bool(status.get("drifted"))))
                p_value.add_metric(labels, float(status.get("p_value") or 1.0))
        requests = GaugeMetricFamily(
            "labelpilot_retraining_requests", "Retraining requests raised by drift, by status "
            "(training, ready = waiting for an admin, approved, rejected)",
            labels=["project", "status"])
        by_status: dict[tuple[str, str], int] = {}
        for request in self.requests.list():
            pair = (str(request["project"]), str(request["status"]))
            by_status[pair] = by_status.get(pair, 0) + 1
        for (project, status_name), count in sorted(by_status.items()):
            requests.add_metric([project, status_name], count)
        yield from (drifted, p_value, requests)


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
