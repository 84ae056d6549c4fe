"""`labelpilot predict --ls-project N | --cvat-task N`: predict a whole project as a bulk run
(see `trainers.bulk_run`). Everything the run needs is checked here first (the project, the
token, the label config, the model version), so a bad input ends with one line saying what to
fix and nothing written. Without --wait the run is queued as RQ jobs, one per shard, that
several workers share; `labelpilot jobs` shows its progress. A run of the project that has not
ended is joined (or, when its shards are gone, resumed) instead of started twice."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from labelpilot.settings import Settings
from labelpilot.trainers.bulk_run import BulkRun, active_run, live_shards, progress_line

MAX_SHARDS = 16


class PredictCommandError(ValueError):
    """What to fix before the project can be predicted."""


@dataclass(frozen=True)
class PredictOptions:
    only_missing: bool = False
    model_version: str | None = None
    shards: int | None = None  # default: the workers listening now (at least 1)
    chunk_size: int = 128
    wait: bool = False


def summary(result: dict[str, Any]) -> str:
    """The run's outcome, one fact per line."""
    rate = f", {result['rate']} tasks/s" if result.get("rate") else ""
    lines = [f"run {result['run']} {result['state']}: {result['done']}/{result['total']} tasks "
             f"in {result['seconds']} s{rate}",
             f"  {result['written']} predictions written, {result['present']} tasks held the "
             f"version already, {result['left_out']} left out, {result['failed']} failed"]
    lines += [f"  failed: task {f['item']}: {f['reason']}" for f in result.get("failures", [])]
    return "\n".join(lines)


def _shard_count(connection: redis.Redis, wanted: int | None) -> int:
    from rq import Queue, Worker

    from labelpilot.trainers.queue import QUEUE_NAME

    if wanted is not None:
        if not 1 <= wanted <= MAX_SHARDS:
            raise PredictCommandError(f"--shards must be 1..{MAX_SHARDS}, not {wanted}")
        return wanted
    workers = Worker.count(queue=Queue(QUEUE_NAME, connection=connection))
    return max(1, min(MAX_SHARDS, workers))


def _enqueue_shards(connection: redis.Redis, run: BulkRun, func: str, count: int,
                    description: str) -> list[str]:
    from rq import Queue, Retry

    from labelpilot.trainers.queue import JOB_TIMEOUT, QUEUE_NAME

    queue = Queue(QUEUE_NAME, connection=connection)
    key = run.info()["key"]
    first = int(connection.hincrby(run.info_key, "shards", count)) - count
    ids = []
    for n in range(first, first + count):
        job = queue.enqueue(func, kwargs={"run_id": run.id}, job_id=f"{run.id}-s{n}",
                            job_timeout=JOB_TIMEOUT, result_ttl=7 * 86400,
                            failure_ttl=30 * 86400, retry=Retry(max=2),
                            description=f"{description} (shard {n})",
                            meta={"key": key, "phase": "queued", "run": run.id})
        ids.append(job.id)
    connection.sadd(f"{run.info_key}:jobs", *ids)
    return ids


def _waiting_shards(connection: redis.Redis, run: BulkRun) -> int:
    """Shard jobs of the run that are queued (not started yet)."""
    from rq.job import Job, JobStatus

    ids = [m.decode() if isinstance(m, bytes) else str(m)
           for m in connection.smembers(f"{run.info_key}:jobs")]
    return sum(1 for job in Job.fetch_many(ids, connection=connection)
               if job is not None and job.get_status() in (JobStatus.QUEUED,
                                                           JobStatus.SCHEDULED))


@dataclass(frozen=True)
class _Target:
    key: str
    config: dict[str, Any]
    total: int
    func: str
    description: str


def _label_studio_target(settings: Settings, connection: redis.Redis, project: int,
                         options: PredictOptions) -> _Target:
    from labelpilot.adapters.label_studio.auth import LabelStudioAuthError
    from labelpilot.adapters.label_studio.bulk_predict import (
        resolve_models,
        run_config,
        run_key,
        serving_plan,
    )
    from labelpilot.adapters.label_studio.client import LabelStudioApiError
    from labelpilot.adapters.label_studio.connections import Connections
    from labelpilot.adapters.label_studio.predictor import Predictor
    from labelpilot.jobs import BULK_PREDICT_JOB
    from labelpilot.runtime import model_locator, model_store, source_policy

    connections = Connections(connection, source_policy(settings))
    connections.require_token(project)
    try:
        api = connections.image_source(project).api
        info = api.project(project)
    except RuntimeError as exc:  # no address known (LabelStudioApiError is one too)
        if isinstance(exc, LabelStudioApiError) and exc.status == 404:
            raise PredictCommandError(f"Label Studio has no project {project} (or the token's "
                                      "user cannot see it): check --ls-project") from exc
        if isinstance(exc, LabelStudioApiError | LabelStudioAuthError) and getattr(
                exc, "status", 401) in (401, 403):
            raise PredictCommandError(
                f"Label Studio refused the token ({exc}): set LABEL_STUDIO_API_KEY to a valid "
                "legacy token or personal access token") from exc
        raise PredictCommandError(str(exc)) from exc
    config = str(info.get("label_config") or "")
    plan = serving_plan(config, _defaults(settings))
    store = model_store(settings, connection)
    predictor = Predictor(store, model_locator(settings))
    try:
        version, models = resolve_models(predictor, store, plan, project, options.model_version)
    finally:
        predictor.close()
    return _Target(run_key(project), run_config(project, config, version, models,
                                                options.only_missing),
                   int(info.get("task_number") or 0), BULK_PREDICT_JOB,
                   f"predict LS project {project} with {version}")


def _cvat_target(settings: Settings, connection: redis.Redis, task_id: int,
                 options: PredictOptions) -> _Target:
    from labelpilot.adapters.cvat.bulk_predict import (
        CvatBulkError,
        resolve_model,
        run_key,
        task_labels,
    )
    from labelpilot.adapters.cvat.client import cvat_client, json_body
    from labelpilot.jobs import CVAT_BULK_PREDICT_JOB
    from labelpilot.runtime import cvat_access, model_locator, model_store

    client = cvat_client(cvat_access(settings))
    weights, version, settings_key = resolve_model(
        client, task_id, model_store(settings, connection), model_locator(settings),
        _defaults(settings).model("detect"), options.model_version)
    if not task_labels(client, task_id):
        raise CvatBulkError(f"CVAT task {task_id} has no labels to write shapes with")
    _, response = client.api_client.tasks_api.retrieve_data_meta(task_id,
                                                                 _parse_response=False)
    meta = json_body(response)
    size = int(meta.get("size") or 0) - len(set(meta.get("deleted_frames") or []))
    config = {"task": task_id, "weights": weights, "version": version,
              "only_missing": options.only_missing, "settings_key": settings_key}
    return _Target(run_key(task_id), config, size, CVAT_BULK_PREDICT_JOB,
                   f"predict CVAT task {task_id} with {version}")


def _defaults(settings: Settings) -> Any:
    from labelpilot.runtime import control_defaults

    return control_defaults(settings)


def _same_run(run: BulkRun, config: dict[str, Any]) -> bool:
    mine = run.config
    return all(mine.get(k) == config.get(k) for k in ("version", "only_missing", "task"))


def run_predict_command(settings: Settings, *, ls_project: int | None, cvat_task: int | None,
                        options: PredictOptions,
                        echo: Callable[[str], None] = print) -> str:
    """Check, then start (or join) the run; with `options.wait` work on it here until it ends.
    Returns what to print."""
    from labelpilot.adapters.cvat.bulk_predict import CvatBulkError
    from labelpilot.adapters.label_studio.bulk_predict import BulkPredictError
    from labelpilot.redis_conn import connect

    if (ls_project is None) == (cvat_task is None):
        raise PredictCommandError("give one of --ls-project or --cvat-task")
    if not 1 <= options.chunk_size <= 500:
        raise PredictCommandError(f"--chunk-size must be 1..500, not {options.chunk_size}")
    if options.shards is not None and not 1 <= options.shards <= MAX_SHARDS:
        raise PredictCommandError(f"--shards must be 1..{MAX_SHARDS}, not {options.shards}")
    connection = connect(settings)
    try:
        if cvat_task is not None:
            target = _cvat_target(settings, connection, int(cvat_task), options)
        else:
            target = _label_studio_target(settings, connection, int(ls_project or 0), options)
    except (BulkPredictError, CvatBulkError) as exc:
        raise PredictCommandError(str(exc)) from exc
    run = active_run(connection, target.key)
    outcome = "started"
    if run is not None:
        busy = bool(live_shards(run)) or _waiting_shards(connection, run) > 0
        if not _same_run(run, target.config):
            if busy:
                raise PredictCommandError(
                    f"run {run.id} of {target.key} (model version "
                    f"{run.config.get('version')}) has not ended; wait for it (labelpilot "
                    "jobs) before predicting with other options")
            run.fail("superseded by a run with other options (its shards had stopped)")
            run = None
        else:
            outcome = "joined" if busy else "resumed"
    if run is None:
        run = BulkRun.create(connection, target.key, target.config, total=target.total,
                             chunk_size=options.chunk_size)
    if options.wait:
        return _work_here(settings, run, target, outcome, echo)
    if outcome == "joined" and options.shards is None:
        return f"joined: run {run.id} (see: labelpilot jobs --key {target.key})"
    ids = _enqueue_shards(connection, run, target.func, _shard_count(connection, options.shards),
                          target.description)
    return (f"{outcome}: run {run.id}, {len(ids)} shard job(s) queued "
            f"(see: labelpilot jobs --key {target.key})")


def _work_here(settings: Settings, run: BulkRun, target: _Target, outcome: str,
               echo: Callable[[str], None]) -> str:
    from labelpilot import jobs

    last = [0.0]

    def progress(update: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - last[0] >= 2.0 or update.get("phase") != "predicting":
            last[0] = now
            echo(f"  {progress_line(update)}")

    echo(f"{outcome}: run {run.id}")
    entry = (jobs.bulk_predict_cvat if target.func == jobs.CVAT_BULK_PREDICT_JOB
             else jobs.bulk_predict_label_studio)
    return summary(entry(run.id, progress=progress))
