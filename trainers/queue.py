"""Training jobs on RQ, coalesced per model key.

At most one job per key waits in the queue: further requests join it. A request that arrives
while a job runs queues exactly one follow-up, deferred until the running one ends (also when
it fails), so labels submitted during training are never left out and two trainings of the same
model never run at once.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Dependency, Job, JobStatus

QUEUE_NAME = "labelpilot"
JOB_TIMEOUT = 6 * 3600
_PENDING = "labelpilot:train:pending:{}"
_RUNNING = "labelpilot:train:running:{}"
_WAITING = (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED)


@dataclass(frozen=True)
class Enqueued:
    job_id: str
    outcome: str  # "enqueued" | "coalesced" | "follow-up"


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _job(connection: redis.Redis, job_id: bytes | str | None) -> Job | None:
    if not job_id:
        return None
    try:
        return Job.fetch(str(_text(job_id)), connection=connection)
    except NoSuchJobError:
        return None


def request_training(connection: redis.Redis, key: str, func: str, kwargs: dict[str, Any],
                     trigger: dict[str, Any]) -> Enqueued:
    """Queue a training of `key` unless one is already waiting."""
    with connection.lock(f"labelpilot:train:lock:{key}", timeout=10, blocking_timeout=5):
        pending = _job(connection, connection.get(_PENDING.format(key)))
        if pending is not None and pending.get_status(refresh=True) in _WAITING:
            pending.meta.setdefault("coalesced", 0)
            pending.meta["coalesced"] += 1
            pending.save_meta()
            return Enqueued(pending.id, "coalesced")
        running = _job(connection, connection.get(_RUNNING.format(key)))
        depends = None
        if running is not None and running.get_status(refresh=True) == JobStatus.STARTED:
            depends = Dependency(jobs=[running.id], allow_failure=True)
        job_id = f"train-{key}-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
        job = Queue(QUEUE_NAME, connection=connection).enqueue(
            func, kwargs=kwargs, job_id=job_id, depends_on=depends, job_timeout=JOB_TIMEOUT,
            result_ttl=7 * 86400, failure_ttl=30 * 86400, description=f"train {key}",
            meta={"key": key, "trigger": trigger, "phase": "queued", "coalesced": 0})
        connection.set(_PENDING.format(key), job.id)
        return Enqueued(job.id, "follow-up" if depends else "enqueued")


def mark_started(connection: redis.Redis, key: str, job_id: str) -> None:
    """Called by the job when it starts: it is no longer the waiting one."""
    with connection.lock(f"labelpilot:train:lock:{key}", timeout=10, blocking_timeout=5):
        if _text(connection.get(_PENDING.format(key))) == job_id:
            connection.delete(_PENDING.format(key))
        connection.set(_RUNNING.format(key), job_id)


def mark_finished(connection: redis.Redis, key: str, job_id: str) -> None:
    if _text(connection.get(_RUNNING.format(key))) == job_id:
        connection.delete(_RUNNING.format(key))


def jobs(connection: redis.Redis, key: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """Recent training jobs, newest first, with their progress meta."""
    from rq.registry import (
        DeferredJobRegistry,
        FailedJobRegistry,
        FinishedJobRegistry,
        StartedJobRegistry,
    )

    queue = Queue(QUEUE_NAME, connection=connection)
    ids: list[str] = list(queue.get_job_ids())
    if key:  # the key's own pointers: visible even when a dead worker's registry entry is gone
        ids.extend(t for t in (_text(connection.get(_PENDING.format(key))),
                               _text(connection.get(_RUNNING.format(key)))) if t)
    for registry in (StartedJobRegistry, DeferredJobRegistry, FinishedJobRegistry,
                     FailedJobRegistry):
        ids.extend(registry(queue=queue).get_job_ids())
    out = []
    for job in Job.fetch_many(list(dict.fromkeys(ids)), connection=connection):
        if job is None or (key and job.meta.get("key") != key):
            continue
        status = job.get_status()
        out.append({"id": job.id, "key": job.meta.get("key"),
                    "status": getattr(status, "value", str(status)),
                    "enqueued_at": job.enqueued_at, "ended_at": job.ended_at,
            "meta": job.meta, "error": (job.exc_info or "").strip().splitlines()[-1:]})
    out.sort(key=lambda j: str(j["id"]), reverse=True)
    return out[:limit]
