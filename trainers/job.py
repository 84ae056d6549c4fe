"""The training job, whatever platform its labels come from: `run_training_job` runs it from any
`LabelSource`; `running_job` is the bookkeeping around it."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from labelpilot.backends.errors import ModelNotFoundError
from labelpilot.backends.model_ref import ModelLocator
from labelpilot.backends.model_store import ModelStore
from labelpilot.trainers import queue
from labelpilot.trainers.pipeline import (
    Progress,
    TrainParams,
    TrainRequest,
    run_training,
    scratch_model,
)
from labelpilot.trainers.retraining import RetrainingRequests
from labelpilot.trainers.samples import Sample, Skipped
from labelpilot.trainers.settings import load_params
from labelpilot.trainers.source import LabelSource, TrainSpec

log = logging.getLogger(__name__)


@contextmanager
def running_job(connection: redis.Redis, key: str) -> Iterator[Progress]:
    """Inside an RQ job: progress into the job's meta (and a readable log line), a heartbeat
    so a killed worker's job turns failed quickly, and the coalescing pointers kept right.
    Outside RQ (tests, `--wait`) progress is only logged."""
    from rq import get_current_job

    job = get_current_job()

    def progress(update: dict[str, Any]) -> None:
        if job is not None and update.get("phase") == "writing":
            # a stalled training that was reaped and retried elsewhere writes nothing
            queue.require_running(connection, key, job.id)
        if job is not None:
            job.meta.update(update)
            try:
                job.save_meta()
            except redis.RedisError as exc:  # a Redis restart must not cost the training
                log.warning("progress not recorded: %s", exc)
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
                    if not queue.heartbeat(connection, key, job_id):
                        log.warning("%s: this training was taken over by a retry", key)
                        return
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


def run_training_job(source: LabelSource, connection: redis.Redis, store: ModelStore,
                     trigger: Mapping[str, Any] | None = None, *, locator: ModelLocator,
                     device: str = "") -> dict[str, Any]:
    """One training job: pull the source's current labels, train, evaluate, write a version
    and promote it if the gate allows. Returns the version's info (see `run_training`).
    `locator` finds the default weights (MODEL_DIR); `device`: where to train (LABELPILOT_DEVICE;
    empty: CUDA when present, else CPU)."""
    from rq import get_current_job

    job = get_current_job()
    with running_job(connection, source.key) as progress, tempfile.TemporaryDirectory(
            prefix=f"{source.key}-") as tmp:
        try:
            pulled = source.write_samples(Path(tmp), progress)
            spec = source.describe(pulled.samples)
            request = train_request(spec, pulled.samples, store,
                                    load_params(connection, source.key),
                                    {**(trigger or {}), "job": job.id if job else None}, locator,
                                    device, skipped=pulled.skipped)
            return run_training(request, store, progress)
        except Exception as exc:
            answered = (trigger or {}).get("request")  # a drift's retraining request
            if answered:
                RetrainingRequests(connection).fail(str(answered), f"the training failed: {exc}")
            raise


def train_request(spec: TrainSpec, samples: Sequence[Sample], store: ModelStore,
                  params: TrainParams, trigger: Mapping[str, Any], locator: ModelLocator,
                  device: str = "", skipped: Sequence[Skipped] = ()) -> TrainRequest:
    """Start from the promoted version, else from the spec's default weights, else from the
    task's YAML. The default weights serve until a version is promoted, so they are also what
    a candidate has to beat."""
    current = store.current(spec.model_key)
    start, serving = default_weights(spec, locator)
    return TrainRequest(key=spec.model_key, task=spec.task, class_names=spec.class_names,
                        samples=samples, keypoint_count=spec.keypoint_count,
                        base_model=str(current.weights) if current else start,
                        serving_weights=serving, params=params, device=device,
                        trigger={**trigger, **spec.notes}, skipped=tuple(skipped))


def default_weights(spec: TrainSpec, locator: ModelLocator) -> tuple[str, str | None]:
    """(weights a first version starts from, weights serving now) for a key with no version."""
    if spec.default_model:
        try:
            resolved = locator.resolve(spec.default_model)
        except ModelNotFoundError as exc:
            log.warning("%s; training %s from scratch", exc, spec.model_key)
        else:
            return resolved, None if resolved.endswith((".yaml", ".yml")) else resolved
    return scratch_model(spec.task), None
