"""Whether training can happen: Redis reachable, live RQ workers, queue depth, oldest waiting job.

One answer for /health, /metrics and the webhook replies. `QueueMonitor` asks Redis with short
timeouts and keeps the worker count (the costly part) for a second; whether Redis answers and
the queue's depth are read on every call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue, Worker

from labelpilot.trainers.queue import QUEUE_NAME

NO_WORKER_WARNING = ("no RQ worker is alive: training jobs wait in the queue until one starts "
                     "('labelpilot worker', or 'labelpilot serve' with its worker)")


@dataclass(frozen=True)
class QueueStatus:
    redis_ok: bool
    workers: int = 0
    depth: int = 0
    oldest_waiting_s: float | None = None  # age of the oldest job in the queue
    error: str | None = None  # why Redis could not be asked

    @property
    def warnings(self) -> list[str]:
        if not self.redis_ok:
            return [f"Redis is unreachable: {self.error}"]
        return [NO_WORKER_WARNING] if self.workers == 0 else []

    def as_dict(self) -> dict[str, object]:
        return {"redis": "up" if self.redis_ok else "unreachable", "workers": self.workers,
                "queue_depth": self.depth, "oldest_waiting_s": self.oldest_waiting_s,
                "warnings": self.warnings}


def live_workers(connection: redis.Redis, queue_name: str = QUEUE_NAME) -> int:
    """Workers on the queue. One counts while RQ's registration of it lives (it expires when
    its heartbeats stop; `labelpilot serve` unregisters its own at once when they die)."""
    return len(Worker.all(queue=Queue(queue_name, connection=connection)))


def queue_status(connection: redis.Redis, queue_name: str = QUEUE_NAME,
                 workers: Callable[[], int] | None = None) -> QueueStatus:
    """The queue's state now; `workers`: how to count them (default `live_workers`)."""
    try:
        queue = Queue(queue_name, connection=connection)
        depth = queue.count
        count = workers() if workers else live_workers(connection, queue_name)
        oldest = queue.get_job_ids(0, 1)
        age = None
        if oldest:
            job = queue.fetch_job(oldest[0])
            if job is not None and job.enqueued_at is not None:  # RQ's times are UTC
                enqueued = job.enqueued_at.replace(tzinfo=UTC)
                age = round(max(0.0, (datetime.now(UTC) - enqueued).total_seconds()), 3)
    except redis.RedisError as exc:
        return QueueStatus(redis_ok=False, error=str(exc) or type(exc).__name__)
    return QueueStatus(redis_ok=True, workers=count, depth=depth, oldest_waiting_s=age)


def forget_worker(connection: redis.Redis, name: str) -> bool:
    """Unregister a worker known to be dead (its process was seen exiting), so it stops counting
    at once instead of after its registration expires. True if it was registered."""
    worker = Worker.find_by_key(Worker.redis_worker_namespace_prefix + name,
                                connection=connection)
    if worker is None:
        return False
    worker.register_death()
    return True


def short_timeouts(connection: redis.Redis, seconds: float) -> redis.Redis:
    """A client for the same Redis that gives up after `seconds` (connect and read), at once:
    redis-py's default retries with backoff would take seconds to tell that Redis is down."""
    pool = connection.connection_pool
    kwargs = {**pool.connection_kwargs, "socket_timeout": seconds, "retry": Retry(NoBackoff(), 0)}
    if not issubclass(pool.connection_class, redis.UnixDomainSocketConnection):
        kwargs["socket_connect_timeout"] = seconds
    return redis.Redis(connection_pool=redis.ConnectionPool(
        connection_class=pool.connection_class, **kwargs))


class QueueMonitor:
    """`queue_status` with Redis timeouts of `timeout` s; the worker count is remembered for
    `ttl` s (thread-safe)."""

    def __init__(self, connection: redis.Redis, *, ttl: float = 1.0, timeout: float = 0.25,
                 queue_name: str = QUEUE_NAME):
        self._connection = short_timeouts(connection, timeout)
        self._ttl = ttl
        self._queue_name = queue_name
        self._lock = threading.Lock()
        self._workers: tuple[float, int] | None = None

    def status(self) -> QueueStatus:
        return queue_status(self._connection, self._queue_name, self._worker_count)

    def _worker_count(self) -> int:
        with self._lock:
            if self._workers is None or time.monotonic() - self._workers[0] >= self._ttl:
                self._workers = (time.monotonic(),
                                 live_workers(self._connection, self._queue_name))
            return self._workers[1]
