"""Queueing acceptance comparisons: small, frequent jobs (one per submitted annotation or
completed CVAT job) on the training queue, kept apart from the training jobs' bookkeeping.

Their meta has no model `key` (so `/jobs?project=N` and the dashboard's training jobs do not
fill up with them) and their results live an hour, not a week, so Redis stays small however
many annotations arrive.
"""

from __future__ import annotations

from typing import Any

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from labelpilot.trainers.queue import QUEUE_NAME

RESULT_TTL_S = 3600
FAILURE_TTL_S = 7 * 86400
_WAITING = (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED, JobStatus.STARTED)


def queue_comparison(
    connection: redis.Redis,
    func: str,
    job_id: str,
    kwargs: dict[str, Any],
    *,
    description: str,
    meta: dict[str, Any],
    timeout: int = 300,
) -> str:
    """Queue `func` as `job_id` unless that job is still waiting (the same state compared
    twice is harmless: the ledger replaces an annotation's counts); returns the job id."""
    try:
        if Job.fetch(job_id, connection=connection).get_status(refresh=True) in _WAITING:
            return job_id
    except NoSuchJobError:
        pass
    Queue(QUEUE_NAME, connection=connection).enqueue(
        func,
        kwargs=kwargs,
        job_id=job_id,
        job_timeout=timeout,
        result_ttl=RESULT_TTL_S,
        failure_ttl=FAILURE_TTL_S,
        description=description,
        meta=meta,
    )
    return job_id
