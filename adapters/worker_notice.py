"""What a training webhook's reply says about the workers: a queued job waits for nothing
when no RQ worker is alive, and Label Studio or CVAT would not tell anyone."""

from __future__ import annotations

import logging
from typing import Any

from labelpilot.trainers.queue_status import NO_WORKER_WARNING, QueueMonitor

log = logging.getLogger(__name__)


def worker_notice(monitor: QueueMonitor | None, what: str) -> dict[str, Any]:
    """`{"workers": n}`, plus a warning (also logged at WARNING) when n is 0. `what`: the
    queued thing, for the log line."""
    if monitor is None:
        return {}
    status = monitor.status()
    if not status.redis_ok:
        return {}
    if status.workers:
        return {"workers": status.workers}
    log.warning("%s: %s", what, NO_WORKER_WARNING)
    return {"workers": 0, "warning": NO_WORKER_WARNING}
