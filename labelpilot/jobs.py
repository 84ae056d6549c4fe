"""Training jobs, composed: the RQ entry points a worker imports by name (`LABEL_STUDIO_JOB`,
`CVAT_JOB`) and the hooks that queue them.

An entry point's Redis connection is the running job's own (outside RQ, as with `labelpilot
train --wait`, the configured one); the adapters get every dependency explicitly. Adapters
never import this module: whoever enqueues is handed the job's name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import redis

if TYPE_CHECKING:
    from labelpilot.adapters.cvat.webhook import TrainingRequest
    from labelpilot.adapters.label_studio.acceptance import AnnotationHook
    from labelpilot.adapters.label_studio.blueprint import PropagationHook, TrainingHook
    from labelpilot.adapters.label_studio.connections import Connections, SourcePolicy
    from labelpilot.adapters.label_studio.propagation import PropagationRequest
    from labelpilot.adapters.label_studio.video import LongVideoHook, VideoJobRequest
    from labelpilot.settings import Settings
    from labelpilot.trainers.bulk_run import BulkRun

log = logging.getLogger(__name__)
LABEL_STUDIO_JOB = "labelpilot.jobs.train_label_studio"
CVAT_JOB = "labelpilot.jobs.train_cvat"
LABEL_ERRORS_JOB = "labelpilot.jobs.label_errors_label_studio"
CVAT_LABEL_ERRORS_JOB = "labelpilot.jobs.label_errors_cvat"
VIDEO_JOB = "labelpilot.jobs.track_video_label_studio"
PROPAGATE_JOB = "labelpilot.jobs.propagate_label_studio"
PROGRESS_EVERY_S = 1.0  # how often a video job writes its frame count to its meta


def job_connection() -> redis.Redis:
    """The running RQ job's connection; the configured Redis outside a worker."""
    from rq import get_current_job

    job = get_current_job()
    if job is not None:
        return job.connection
    from labelpilot.redis_conn import get_redis

    return get_redis()


def label_studio_job() -> tuple[Settings, redis.Redis, SourcePolicy, Connections]:
    """What every Label Studio job starts from: the settings, the job's Redis, how LS is
    reached, and the projects' LS connections (each job checks its project's token)."""
    from labelpilot.adapters.label_studio.connections import Connections
    from labelpilot.runtime import source_policy
    from labelpilot.settings import load_settings

    settings = load_settings()
    connection = job_connection()
    policy = source_policy(settings)
    return settings, connection, policy, Connections(connection, policy)


def train_label_studio(project_id: int, trigger: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a Label Studio project's model from its current annotations."""
    from labelpilot.adapters.label_studio.training import train_project, training_ended
    from labelpilot.runtime import control_defaults, model_locator, model_store, video_limits

    settings, connection, policy, connections = label_studio_job()
    try:
        connections.require_token(project_id)
        images = connections.image_source(project_id)
        return train_project(project_id, images, connection, model_store(settings, connection),
                             trigger, locator=model_locator(settings),
                             device=settings.device, max_pixels=settings.max_image_pixels,
                             defaults=control_defaults(settings), video=video_limits(settings))
    finally:
        training_ended(connection, project_id, policy.token_seconds)


def label_errors_label_studio(project_id: int, trigger: dict[str, Any] | None = None,
                              options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Find the likely wrong annotations of an LS project and mark them for review."""
    from labelpilot.adapters.label_studio.review import LabelStudioReview
    from labelpilot.adapters.label_studio.training import LabelStudioSource, training_ended
    from labelpilot.runtime import control_defaults, model_locator, model_store, video_limits
    from labelpilot.trainers.label_error_job import ErrorParams, run_label_error_job

    settings, connection, policy, connections = label_studio_job()
    params = ErrorParams.from_mapping(options or {})
    try:
        connections.require_token(project_id)
        images = connections.image_source(project_id)
        source = LabelStudioSource(project_id, images, settings.max_image_pixels,
                                   control_defaults(settings), video_limits(settings))
        log.info("label errors ls-%s (trigger %s)", project_id, trigger)
        return run_label_error_job(source, LabelStudioReview(images.api, project_id),
                                   connection, model_store(settings, connection), params,
                                   locator=model_locator(settings), device=settings.device)
    finally:
        training_ended(connection, project_id, policy.token_seconds)


def label_errors_cvat(kind: str, ident: int, trigger: dict[str, Any] | None = None,
                      options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Find the likely wrong labels of a CVAT task or project and open issues on them."""
    from labelpilot.adapters.cvat.client import cvat_client
    from labelpilot.adapters.cvat.review import CvatReview
    from labelpilot.adapters.cvat.training import CvatSource
    from labelpilot.runtime import cvat_access, model_locator, model_store
    from labelpilot.settings import load_settings
    from labelpilot.trainers.label_error_job import ErrorParams, run_label_error_job

    settings = load_settings()
    connection = job_connection()
    params = ErrorParams.from_mapping(options or {})
    connect = partial(cvat_client, cvat_access(settings))
    source = CvatSource(kind, int(ident), connect, task_type="detect",
                        default_models=settings.task_models_set())
    log.info("label errors cvat-%s-%s (trigger %s)", kind, ident, trigger)
    return run_label_error_job(source, CvatReview(connect()), connection,
                               model_store(settings, connection), params,
                               locator=model_locator(settings), device=settings.device)


def train_cvat(kind: str, ident: int, trigger: dict[str, Any] | None = None,
               snapshot: str | None = None, task_type: str | None = None) -> dict[str, Any]:
    """Train a CVAT task's or project's model from its labels (or from a saved `snapshot`)."""
    from labelpilot.adapters.cvat import training
    from labelpilot.adapters.cvat.client import cvat_client
    from labelpilot.runtime import cvat_access, model_locator, model_store
    from labelpilot.settings import load_settings

    settings = load_settings()
    connection = job_connection()
    return training.train_cvat(kind, ident, connection, model_store(settings, connection),
                               trigger, snapshot=snapshot, task_type=task_type,
                               locator=model_locator(settings), device=settings.device,
                               connect=partial(cvat_client, cvat_access(settings)),
                               default_models=settings.task_models_set())


def track_video_label_studio(request: dict[str, Any]) -> dict[str, Any]:
    """Track a long clip of an LS task and post the prediction (queued by /predict)."""
    import time

    from rq import get_current_job

    from labelpilot.adapters.label_studio.video import VideoJobRequest
    from labelpilot.adapters.label_studio.video_job import run_video_job
    from labelpilot.backends.yolo import YoloModel
    from labelpilot.runtime import control_defaults, video_limits, yolo_max_batch

    settings, _, _, connections = label_studio_job()
    job = get_current_job()
    wanted = VideoJobRequest(**request)
    if wanted.project_id is None:
        raise ValueError("a video job needs the project id")
    connections.require_token(wanted.project_id)
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if job is None or (now - last[0] < PROGRESS_EVERY_S and done < total):
            return
        last[0] = now
        job.meta.update({"phase": "tracking", "done": done, "total": total})
        job.save_meta()

    model = YoloModel(wanted.weights, device=settings.device,
                      max_batch=yolo_max_batch(settings))
    result = run_video_job(wanted, connections.get(wanted.project_id).label_config or "",
                           connections.image_source(wanted.project_id), model,
                           video_limits(settings), defaults=control_defaults(settings),
                           progress=progress)
    if job is not None:
        job.meta.update({"phase": "done", **{k: v for k, v in result.items() if k != "task"}})
        job.save_meta()
    return result


def queue_video_job(connection: redis.Redis, request: VideoJobRequest) -> str:
    """Queue the tracking of a long clip (one job per task, control and model version)."""
    from dataclasses import asdict

    from labelpilot.adapters.label_studio.video import VideoTaskError
    from labelpilot.adapters.label_studio.video_job import video_job_id
    from labelpilot.trainers.queue import RETRY_FAILED_AFTER_S, enqueue_once, failure_reason

    queued = enqueue_once(
        connection, VIDEO_JOB, video_job_id(request), {"request": asdict(request)},
        description=f"track the video of LS task {request.task_id}",
        meta={"key": f"ls-{request.project_id}", "phase": "queued", "task": request.task_id})
    if queued.outcome == "failed":
        raise VideoTaskError(
            f"tracking job {queued.job_id} failed: {failure_reason(connection, queued.job_id)} "
            f"(asking again after {RETRY_FAILED_AFTER_S // 60} minutes retries it)")
    log.info("task %s: video tracking job %s %s", request.task_id, queued.job_id,
             queued.outcome)
    return queued.job_id


def video_hook(connection: redis.Redis) -> LongVideoHook:
    """What /predict calls for a clip too long to track inside the request."""
    return partial(queue_video_job, connection)


def propagate_label_studio(request: dict[str, Any]) -> dict[str, Any]:
    """Fill the keyframes of a submitted LS video annotation (queued by its webhook)."""
    from rq import get_current_job

    from labelpilot.adapters.label_studio.config import parse_label_config
    from labelpilot.adapters.label_studio.propagation import (
        PropagationRequest,
        propagate_annotation,
    )
    from labelpilot.backends.yolo import YoloModel
    from labelpilot.runtime import control_defaults, video_limits, yolo_max_batch

    settings, connection, _, connections = label_studio_job()
    wanted = PropagationRequest(**request)
    connections.require_token(wanted.project_id)
    plan = parse_label_config(connections.get(wanted.project_id).label_config or "",
                              control_defaults(settings))
    job = get_current_job()
    if job is not None:
        job.meta.update({"phase": "propagating"})
        job.save_meta()
    model = YoloModel(wanted.weights, device=settings.device,
                      max_batch=yolo_max_batch(settings))
    result = propagate_annotation(wanted, plan, connections.image_source(wanted.project_id),
                                  model, video_limits(settings), connection)
    if job is not None:
        job.meta.update({"phase": "done", **result})
        job.save_meta()
    return result


def queue_propagation(connection: redis.Redis, request: PropagationRequest,
                      digest: str) -> str:
    """One job per annotation state: the same submitted result never fills twice."""
    from dataclasses import asdict

    from labelpilot.trainers.queue import enqueue_once

    queued = enqueue_once(
        connection, PROPAGATE_JOB,
        f"propagate-ls-{request.project_id}-{request.annotation_id}-{digest[:10]}",
        {"request": asdict(request)},
        description=f"fill the video keyframes of LS annotation {request.annotation_id}",
        meta={"key": f"ls-{request.project_id}", "phase": "queued",
              "annotation": request.annotation_id})
    return queued.job_id


def propagation_hook(connection: redis.Redis) -> PropagationHook:
    """What an LS annotation webhook calls for a video annotation to fill."""
    return partial(queue_propagation, connection)


def label_studio_hook(connection: redis.Redis) -> TrainingHook:
    """What an LS training webhook calls: count the event, queue `train_label_studio`."""
    from labelpilot.adapters.label_studio.training import on_training_event

    return partial(on_training_event, connection=connection, job_func=LABEL_STUDIO_JOB)


def cvat_hook(connection: redis.Redis) -> TrainingRequest:
    """What a CVAT training webhook calls: `(kind, ident, trigger)` → queue `train_cvat`."""
    from labelpilot.adapters.cvat.training import request_cvat_training

    return partial(request_cvat_training, connection, CVAT_JOB)


ACCEPTANCE_JOB = "labelpilot.jobs.acceptance_label_studio"


def acceptance_label_studio(request: dict[str, Any]) -> dict[str, Any]:
    """Compare a submitted LS annotation with labelpilot's prediction (acceptance rate)."""
    from labelpilot.adapters.label_studio.acceptance import AcceptanceRequest, measure_annotation
    from labelpilot.adapters.label_studio.config import ConfigError, parse_label_config
    from labelpilot.backends.acceptance import AcceptanceLedger
    from labelpilot.runtime import control_defaults

    settings, connection, _, connections = label_studio_job()
    wanted = AcceptanceRequest(**request)
    connections.require_token(wanted.project_id)
    controls = None
    try:  # compare only what labelpilot predicts (not text areas, ratings, ...)
        config = connections.get(wanted.project_id).label_config or ""
        plan = parse_label_config(config, control_defaults(settings)) if config else None
        controls = frozenset(c.name for c in plan.controls) if plan else None
    except ConfigError:
        pass
    return measure_annotation(wanted, connections.image_source(wanted.project_id).api,
                              AcceptanceLedger(connection), controls=controls)


def acceptance_hook(connection: redis.Redis) -> AnnotationHook:
    """What an LS annotation webhook calls: queue `acceptance_label_studio`."""
    from labelpilot.adapters.label_studio.acceptance import queue_acceptance

    return partial(queue_acceptance, connection, job_func=ACCEPTANCE_JOB)


SCAN_JOB = "labelpilot.jobs.scan_label_studio"
CVAT_SCAN_JOB = "labelpilot.jobs.scan_cvat"


def scan_label_studio(project_id: int, trigger: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check every image of an LS project (quality scan) and mark the findings on its tasks."""
    from labelpilot.adapters.label_studio.scan import LabelStudioScan
    from labelpilot.adapters.label_studio.training import queue_key, training_ended
    from labelpilot.trainers.band_settings import load_band_mapping
    from labelpilot.trainers.quality_settings import load_thresholds
    from labelpilot.trainers.scan import run_scan

    settings, connection, policy, connections = label_studio_job()
    try:
        connections.require_token(project_id)
        scan = LabelStudioScan(connections.image_source(project_id), project_id)
        project = queue_key(project_id)
        log.info("quality scan %s (trigger %s)", project, trigger)
        return run_scan(project, scan.items(), scan, connection,
                        load_thresholds(connection, project),
                        max_pixels=settings.max_image_pixels, total=scan.total,
                        bands=load_band_mapping(connection, project))
    finally:
        training_ended(connection, project_id, policy.token_seconds)


def scan_cvat(task_id: int, trigger: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check every frame of a CVAT task (quality scan) and tag the findings on its frames."""
    from labelpilot.adapters.cvat.client import cvat_client
    from labelpilot.adapters.cvat.scan import CvatScan
    from labelpilot.runtime import cvat_access
    from labelpilot.settings import load_settings
    from labelpilot.trainers.band_settings import load_band_mapping
    from labelpilot.trainers.quality_settings import load_thresholds
    from labelpilot.trainers.scan import run_scan

    settings = load_settings()
    connection = job_connection()
    scan = CvatScan(cvat_client(cvat_access(settings)), int(task_id))
    log.info("quality scan %s (trigger %s)", scan.key, trigger)
    return run_scan(scan.key, scan.items(), scan, connection,
                    load_thresholds(connection, scan.key),
                    max_pixels=settings.max_image_pixels, total=scan.total,
                    bands=load_band_mapping(connection, scan.key))


def acceptance_cvat(job_id: int, task_id: int) -> dict[str, Any]:
    """Compare a completed CVAT job's frames with what labelpilot's detector returned."""
    from labelpilot.adapters.cvat.acceptance import measure_job
    from labelpilot.adapters.cvat.client import cvat_client
    from labelpilot.backends.acceptance import AcceptanceLedger
    from labelpilot.runtime import cvat_access
    from labelpilot.settings import load_settings

    settings = load_settings()
    connection = job_connection()
    return measure_job(cvat_client(cvat_access(settings)), int(job_id), int(task_id),
                       connection, AcceptanceLedger(connection),
                       max_pixels=settings.max_image_pixels)


def queue_scan_label_studio(connection: redis.Redis, project_id: int,
                            trigger: dict[str, Any] | None = None) -> str:
    """Queue (or join) the quality scan of an LS project; the job's id."""
    from labelpilot.adapters.label_studio.scan import request_scan

    return request_scan(connection, SCAN_JOB, project_id,
                        trigger or {"event": "demo"}).job_id


BULK_PREDICT_JOB = "labelpilot.jobs.bulk_predict_label_studio"
CVAT_BULK_PREDICT_JOB = "labelpilot.jobs.bulk_predict_cvat"


def bulk_progress(shard: str) -> Callable[[dict[str, Any]], None]:
    """A shard's progress into its RQ job's meta (what `labelpilot jobs`, /jobs and the
    dashboard show); outside RQ (`predict --wait`) nothing."""
    from rq import get_current_job

    job = get_current_job()

    def update(progress: dict[str, Any]) -> None:
        if job is not None:
            job.meta.update({**progress, "shard": shard})
            job.save_meta()

    return update


def shard_name() -> str:
    """The RQ job's id, or one for a shard run by the CLI."""
    import os
    import uuid

    from rq import get_current_job

    job = get_current_job()
    return job.id if job is not None else f"cli-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _load_in_background(load: Callable[[str], object], weights: list[str]) -> None:
    """Load the run's models while the shard lists the tasks (the first chunk waits less)."""
    import threading

    def run() -> None:
        for ref in weights:
            try:
                load(ref)
            except Exception as exc:  # the first chunk loads it again and reports it
                log.warning("could not preload %s: %s", ref, exc)

    threading.Thread(target=run, name="bulk-preload", daemon=True).start()


PERMANENT_STATUSES = (401, 403, 404)  # the token died, the project or task is gone


def _permanent(exc: BaseException) -> bool:
    """Whether a shard's error ends the run for every shard (retrying cannot help): the
    platform refused the token or lost the project/task, or the run's setup is bad."""
    from cvat_sdk.api_client.exceptions import ApiException

    from labelpilot.adapters.cvat.bulk_predict import CvatBulkError
    from labelpilot.adapters.label_studio.bulk_predict import BulkPredictError
    from labelpilot.adapters.label_studio.client import LabelStudioApiError
    from labelpilot.adapters.label_studio.config import ConfigError

    if isinstance(exc, BulkPredictError | CvatBulkError | ConfigError):
        return True
    return isinstance(exc, LabelStudioApiError | ApiException) and getattr(
        exc, "status", None) in PERMANENT_STATUSES


def _shard_failed(run: BulkRun, shard: str, exc: BaseException) -> None:
    """A permanent error fails the run; any other one only stops this shard: its heartbeat
    goes at once, so the others take its chunks over, and RQ's retry (same job id, same shard
    name) rejoins the run while it is active."""
    if _permanent(exc):
        run.fail(f"{type(exc).__name__}: {exc}")
    else:
        run.stop_beating(shard)
        log.warning("bulk run %s: shard %s stopped (%s: %s); the others take its chunks over",
                    run.id, shard, type(exc).__name__, exc)


def bulk_predict_label_studio(run_id: str,
                              progress: Callable[[dict[str, Any]], None] | None = None
                              ) -> dict[str, Any]:
    """One shard of a bulk prediction of an LS project (`labelpilot predict --ls-project`):
    claims chunks of the run until none is left."""
    from labelpilot.adapters.label_studio.bulk_predict import (
        LabelStudioChunks,
        list_tasks,
        pinned_choices,
        serving_plan,
    )
    from labelpilot.runtime import build_predictor, control_defaults, model_store
    from labelpilot.trainers.bulk_run import BulkRun, run_shard

    settings, connection, _, connections = label_studio_job()
    run = BulkRun(connection, run_id)
    config = run.config
    project = int(config["project"])
    shard = shard_name()
    predictor = None
    try:
        plan = serving_plan(config["label_config"], control_defaults(settings))
        source = connections.image_source(project)
        predictor = build_predictor(settings, model_store(settings, connection))
        handler = LabelStudioChunks(predictor, plan, pinned_choices(plan, config["models"]),
                                    source, project, config["version"], connection)
        _load_in_background(predictor.models.get,
                            [m["weights"] for m in config["models"].values()])
        page = max(100, 2 * int(run.info()["chunk_size"]))  # the first chunk waits for a page
        return run_shard(run, shard, lambda: list_tasks(source.api, project, config["version"],
                                                        bool(config["only_missing"]), page),
                         handler, progress=progress or bulk_progress(shard))
    except Exception as exc:
        _shard_failed(run, shard, exc)
        raise
    finally:
        if predictor is not None:
            predictor.close()


def bulk_predict_cvat(run_id: str, progress: Callable[[dict[str, Any]], None] | None = None
                      ) -> dict[str, Any]:
    """One shard of a bulk prediction of a CVAT task (`labelpilot predict --cvat-task`)."""
    from labelpilot.adapters.cvat.bulk_predict import CvatChunks, list_frames, task_labels
    from labelpilot.adapters.cvat.client import cvat_client
    from labelpilot.adapters.cvat.training import store_key
    from labelpilot.backends.yolo import YoloModel
    from labelpilot.runtime import cvat_access, yolo_max_batch
    from labelpilot.settings import load_settings
    from labelpilot.trainers.bulk_run import BulkRun, run_shard
    from labelpilot.trainers.slice_settings import ProjectSlicing

    settings = load_settings()
    connection = job_connection()
    run = BulkRun(connection, run_id)
    config = run.config
    task_id = int(config["task"])
    shard = shard_name()
    try:
        client = cvat_client(cvat_access(settings))
        model = YoloModel(config["weights"], device=settings.device,
                          max_batch=yolo_max_batch(settings))  # loads it
        slicing = ProjectSlicing(connection).get(  # a bad stored value: not sliced, logged
            str(config.get("settings_key") or store_key("task", task_id)))
        handler = CvatChunks(client, task_id, model, task_labels(client, task_id),
                             settings.score_threshold, connection, settings.max_image_pixels,
                             slicing)
        return run_shard(run, shard, lambda: list_frames(client, task_id,
                                                         bool(config["only_missing"])),
                         handler, progress=progress or bulk_progress(shard))
    except Exception as exc:
        _shard_failed(run, shard, exc)
        raise
