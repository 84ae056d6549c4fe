"""Training jobs on RQ, coalesced per model key.

At most one job per key waits in the queue: further requests join it. A request that arrives
while a job runs queues exactly one follow-up, deferred until the running one ends (also when
it fails), so labels submitted during training are never left out and two trainings of the same
model never run at once.

A training whose process died (worker or host lost: its heartbeats stop) is failed and, unless a
follow-up already waits to train the same labels, queued again as a new job (`MAX_RETRIES`
times) for whichever worker is alive; every worker reaps dead trainings (`reap_all`).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Dependency, Job, JobStatus

from labelpilot.backends.redis_text import as_text

QUEUE_NAME = "labelpilot"
JOB_TIMEOUT = 6 * 3600
_PENDING = "labelpilot:train:pending:{}"
_RUNNING = "labelpilot:train:running:{}"
_ALIVE = "labelpilot:train:alive:{}"
_COALESCED = "labelpilot:train:coalesced"  # job id → requests that joined it
_RUNNING_KEYS = "labelpilot:train:running-keys"  # keys with a running training (for reap_all)
ALIVE_TTL_S = 20  # a training job refreshes this every few seconds while its process lives
_WAITING = (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED)
RETRY_FAILED_AFTER_S = 600  # a failed one-off job is queued again only after this long
MAX_RETRIES = 2  # a training that died with its worker is queued again at most this often


@dataclass(frozen=True)
class Enqueued:
    job_id: str
    outcome: str  # "enqueued" | "coalesced" | "follow-up"


def _text(value: bytes | str | None) -> str | None:
    return None if value is None else as_text(value)


def _job(connection: redis.Redis, job_id: bytes | str | None) -> Job | None:
    if not job_id:
        return None
    try:
        return Job.fetch(str(_text(job_id)), connection=connection)
    except NoSuchJobError:
        return None


def _lock(connection: redis.Redis, key: str) -> Any:
    # a short poll interval: redis-py's default (0.1 s) made webhook acks wait in 100 ms steps
    return connection.lock(f"labelpilot:train:lock:{key}", timeout=10, sleep=0.005,
                           blocking_timeout=5)


def _join_waiting(connection: redis.Redis, key: str) -> Enqueued | None:
    pending = waiting_job(connection, key)
    if pending is None:
        return None
    connection.hincrby(_COALESCED, pending, 1)
    return Enqueued(pending, "coalesced")


def waiting_job(connection: redis.Redis, key: str) -> str | None:
    """The id of the job of `key` that waits to run (queued or deferred), if any."""
    pending = _job(connection, connection.get(_PENDING.format(key)))
    if pending is None or pending.get_status(refresh=True) not in _WAITING:
        return None
    return pending.id


def coalesced_count(connection: redis.Redis, job_id: str) -> int:
    return int(connection.hget(_COALESCED, job_id) or 0)


def request_training(connection: redis.Redis, key: str, func: str, kwargs: dict[str, Any],
                     trigger: dict[str, Any]) -> Enqueued:
    """Queue a training of `key` unless one is already waiting."""
    joined = _join_waiting(connection, key)  # the common case in a burst: no lock needed
    if joined is not None:
        return joined
    with _lock(connection, key):
        joined = _join_waiting(connection, key)
        if joined is not None:
            return joined
        _reap_dead(connection, key)
        joined = _join_waiting(connection, key)  # the dead one's retry
        if joined is not None:
            return joined
        running = _job(connection, connection.get(_RUNNING.format(key)))
        depends = None
        if running is not None and running.get_status(refresh=True) == JobStatus.STARTED:
            depends = Dependency(jobs=[running.id], allow_failure=True)
        job_id = f"train-{key}-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
        job = Queue(QUEUE_NAME, connection=connection).enqueue(
            func, kwargs=kwargs, job_id=job_id, depends_on=depends, job_timeout=JOB_TIMEOUT,
            result_ttl=7 * 86400, failure_ttl=30 * 86400, description=f"train {key}",
            meta={"key": key, "trigger": trigger, "phase": "queued"})
        connection.set(_PENDING.format(key), job.id)
        return Enqueued(job.id, "follow-up" if depends else "enqueued")


# SET alive only while the job is still the key's running one: a stalled job that was reaped
# and retried elsewhere must not make its successor look dead (or itself look alive)
_BEAT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""


def heartbeat(connection: redis.Redis, key: str, job_id: str) -> bool:
    """The running job says it is alive (RQ itself notices a killed worker only much later).
    False when the job is no longer the key's running one (it was reaped and retried)."""
    return bool(connection.eval(_BEAT, 2, _RUNNING.format(key), _ALIVE.format(key), job_id,
                                ALIVE_TTL_S))


class TrainingTakenOver(RuntimeError):
    """This training stalled long enough to be reaped and queued again elsewhere: it must not
    write a version (the retry will)."""


def require_running(connection: redis.Redis, key: str, job_id: str) -> None:
    """Before a training writes its version: raise `TrainingTakenOver` unless it is still the
    key's running job. A Redis that does not answer is asked again for up to `ALIVE_TTL_S`
    (a restart); after that the training fails rather than risk a second version."""
    deadline = time.monotonic() + ALIVE_TTL_S
    while True:
        try:
            current = _text(connection.get(_RUNNING.format(key)))
            break
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)
    if current != job_id:
        raise TrainingTakenOver(
            f"training {job_id} of {key} stopped sending heartbeats and was queued again "
            f"({current or 'no job'} runs it now): this one writes no version")


def reap_dead(connection: redis.Redis, key: str) -> str | None:
    """Mark the key's running job failed if its heartbeat stopped (worker killed, host gone).

    Its follow-up, deferred on it, is released; without one, the training is queued again as
    a new job (see `MAX_RETRIES`). Returns the id of the job marked failed.
    """
    with _lock(connection, key):
        return _reap_dead(connection, key)


def _reap_dead(connection: redis.Redis, key: str) -> str | None:
    from rq.registry import FailedJobRegistry, StartedJobRegistry

    running = _job(connection, connection.get(_RUNNING.format(key)))
    if running is None or running.get_status(refresh=True) != JobStatus.STARTED:
        return None
    if _text(connection.get(_ALIVE.format(key))) == running.id:
        return None
    follow_up = waiting_job(connection, key)
    reason = (f"the training process stopped sending heartbeats for {ALIVE_TTL_S} s "
              "(worker killed or host lost); no version was written")
    running.meta.update({"phase": "failed", "error": reason})
    running.save_meta()
    running.set_status(JobStatus.FAILED)
    queue = Queue(QUEUE_NAME, connection=connection)
    FailedJobRegistry(queue=queue).add(running, ttl=30 * 86400, exc_string=reason)
    # RQ's own abandoned-job cleanup (minutes later) must not see it as started any more
    StartedJobRegistry(queue=queue).remove_executions(running)
    connection.delete(_RUNNING.format(key))
    queue.enqueue_dependents(running)
    if follow_up is None:
        _retry(connection, key, running, queue)
    return running.id


def _retry(connection: redis.Redis, key: str, dead: Job, queue: Queue) -> str | None:
    """Queue the dead training again as a new job (the dead one stays failed, for the record)."""
    attempt = int(dead.meta.get("attempt") or 1)
    if attempt > MAX_RETRIES or not dead.func_name:
        return None
    job_id = f"train-{key}-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
    trigger = {**(dead.meta.get("trigger") or {}), "retry_of": dead.id}
    job = queue.enqueue(
        dead.func_name, args=dead.args, kwargs=dead.kwargs, job_id=job_id,
        job_timeout=dead.timeout or JOB_TIMEOUT, result_ttl=7 * 86400, failure_ttl=30 * 86400,
        description=dead.description, meta={"key": key, "trigger": trigger, "phase": "queued",
                                             "attempt": attempt + 1})
    connection.set(_PENDING.format(key), job.id)
    dead.meta["retried_as"] = job.id
    dead.save_meta()
    return job.id


def reap_all(connection: redis.Redis) -> list[str]:
    """`reap_dead` for every key with a running training; the ids of the jobs found dead.
    Workers call it every few seconds, so a training lost with its host is retried without
    anyone asking."""
    dead = []
    for member in connection.smembers(_RUNNING_KEYS):
        key = str(_text(member))
        if not connection.exists(_RUNNING.format(key)):
            with _lock(connection, key):  # not while one starts (mark_started adds it)
                if not connection.exists(_RUNNING.format(key)):
                    connection.srem(_RUNNING_KEYS, key)
            continue
        found = reap_dead(connection, key)
        if found:
            dead.append(found)
    return dead


def mark_started(connection: redis.Redis, key: str, job_id: str) -> None:
    """Called by the job when it starts: it is no longer the waiting one."""
    with _lock(connection, key):
        if _text(connection.get(_PENDING.format(key))) == job_id:
            connection.delete(_PENDING.format(key))
        connection.set(_RUNNING.format(key), job_id)
        connection.sadd(_RUNNING_KEYS, key)
        heartbeat(connection, key, job_id)


def mark_finished(connection: redis.Redis, key: str, job_id: str) -> None:
    if _text(connection.get(_RUNNING.format(key))) == job_id:
        connection.delete(_RUNNING.format(key), _ALIVE.format(key))


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
    if key:
        with contextlib.suppress(redis.exceptions.LockError):  # another one is reaping it
            reap_dead(connection, key)
        # the key's own pointers: visible even when a dead worker's registry entry is gone
        ids.extend(t for t in (_text(connection.get(_PENDING.format(key))),
                               _text(connection.get(_RUNNING.format(key)))) if t)
    for registry in (StartedJobRegistry, DeferredJobRegistry, FinishedJobRegistry,
                     FailedJobRegistry):
        ids.extend(registry(queue=queue).get_job_ids())
    out = []
    for job in Job.fetch_many(list(dict.fromkeys(ids)), connection=connection):
        if job is None or (key and job.meta.get("key") != key) or not job.meta.get("key"):
            continue  # acceptance comparisons carry no key: not a training's bookkeeping
        status = job.get_status()
        out.append({"id": job.id, "key": job.meta.get("key"),
                    "status": getattr(status, "value", str(status)),
                    "enqueued_at": job.enqueued_at, "ended_at": job.ended_at,
            "meta": job.meta, "coalesced": coalesced_count(connection, job.id),
            "error": (job.exc_info or "").strip().splitlines()[-1:]})
    out.sort(key=lambda j: (j["enqueued_at"] is not None, str(j["enqueued_at"] or ""),
                            str(j["id"])), reverse=True)  # newest first, whatever the id
    return out[:limit]


def enqueue_once(connection: redis.Redis, func: str, job_id: str, kwargs: dict[str, Any], *,
                 description: str, meta: dict[str, Any], timeout: int = JOB_TIMEOUT,
                 retry_after_s: float = RETRY_FAILED_AFTER_S) -> Enqueued:
    """Queue `func` as job `job_id` unless that job already waits or runs (then join it), or
    failed less than `retry_after_s` ago (outcome "failed": asking again does not redo a
    failure at once). Two callers at the same moment queue it once."""
    with _lock(connection, f"enqueue:{job_id}"):
        existing = _job(connection, job_id)
        if existing is not None:
            status = existing.get_status(refresh=True)
            if status in (*_WAITING, JobStatus.STARTED):
                return Enqueued(job_id, "coalesced")
            ended = existing.ended_at.timestamp() if existing.ended_at else 0.0
            if status == JobStatus.FAILED and time.time() - ended < retry_after_s:
                return Enqueued(job_id, "failed")
        Queue(QUEUE_NAME, connection=connection).enqueue(
            func, kwargs=kwargs, job_id=job_id, job_timeout=timeout, result_ttl=7 * 86400,
            failure_ttl=30 * 86400, description=description, meta=meta)
        return Enqueued(job_id, "enqueued")


def failure_reason(connection: redis.Redis, job_id: str) -> str:
    """The last line of a failed job's error (or its meta's `error`)."""
    job = _job(connection, job_id)
    if job is None:
        return "the job is gone"
    lines = (job.exc_info or "").strip().splitlines()
    return str(job.meta.get("error") or (lines[-1] if lines else "no reason recorded"))
