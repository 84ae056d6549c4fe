"""The bookkeeping every training job does, whatever platform its labels come from."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from labelpilot.trainers import queue
from labelpilot.trainers.pipeline import Progress

log = logging.getLogger(__name__)


@contextmanager
def running_job(connection: redis.Redis, key: str) -> Iterator[Progress]:
    """Inside an RQ job: progress into the job's meta (and a readable log line), a heartbeat
    so a killed worker's job turns failed quickly, and the coalescing pointers kept right.
    Outside RQ (tests, `--wait`) progress is only logged."""
    from rq import get_current_job

    job = get_current_job()

    def progress(update: dict[str, Any]) -> None:
        if job is not None:
            job.meta.update(update)
            job.save_meta()
        if update.get("phase") == "training" and update.get("epoch"):
            log.info("%s: epoch %s/%s %s", key, update["epoch"], update["epochs"],
                     {k: v for k, v in (update.get("metrics") or {}).items()
                      if "mAP" in k or "accuracy" in k})
        else:
            log.info("%s: %s", key, update)

    stop = threading.Event()
    if job is not None:
        queue.mark_started(connection, key, job.id)
        job_id = job.id

        def beat() -> None:
            while not stop.wait(queue.ALIVE_TTL_S / 4):
                try:
                    queue.heartbeat(connection, key, job_id)
                except redis.RedisError as exc:
                    log.warning("heartbeat failed: %s", exc)

        threading.Thread(target=beat, name="train-heartbeat", daemon=True).start()
    try:
        progress({"phase": "exporting", "pid": os.getpid(), "host": socket.gethostname()})
        yield progress
    except Exception as exc:
        progress({"phase": "failed", "error": str(exc)})
        raise
    finally:
        stop.set()
        if job is not None:
            queue.mark_finished(connection, key, job.id)
