"""The model-serving objects of a process, built from the settings once, at start-up.

The backends and adapters read no environment: what they need is handed to them. These
builders are the one place that turns `Settings` into those objects (server worker, RQ worker,
CLI), so every process configures them the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import redis

from labelpilot.adapters.cvat.client import CvatAccess
from labelpilot.adapters.label_studio.config import ControlDefaults
from labelpilot.adapters.label_studio.connections import SourcePolicy
from labelpilot.adapters.label_studio.interactive import InteractiveSam
from labelpilot.adapters.label_studio.predictor import Predictor
from labelpilot.adapters.label_studio.video import VideoLimits
from labelpilot.backends.model_cache import ModelCache
from labelpilot.backends.model_ref import ModelLocator
from labelpilot.backends.model_store import ModelStore
from labelpilot.backends.observation import Observer
from labelpilot.backends.sam import RedisEmbeddingStore, SamModels, SamOptions
from labelpilot.backends.served_model import ModelLoader
from labelpilot.settings import Settings, secret

if TYPE_CHECKING:
    from labelpilot.backends.yolo import YoloModel


def model_locator(settings: Settings) -> ModelLocator:
    """MODEL_DIR, LABELPILOT_DOWNLOAD_WEIGHTS and ALLOW_CUSTOM_MODEL_PATH."""
    return ModelLocator(settings.resolved_model_dir, download=settings.download_weights,
                        allow_custom_paths=settings.allow_custom_model_path)


def yolo_max_batch(settings: Settings) -> int:
    """Images per YOLO call: LABELPILOT_MAX_BATCH, 1 with LABELPILOT_BATCH_MODE=loop."""
    return 1 if settings.batch_mode == "loop" else settings.max_batch


def sam_options(settings: Settings) -> SamOptions:
    return SamOptions(default_ref=settings.sam_model, decoder=settings.sam_decoder,
                      cache_mb=settings.sam_cache_mb, max_models=settings.sam_max_models,
                      prewarm_queue=settings.sam_prewarm_queue, device=settings.device)


def build_sam(settings: Settings, connection: redis.Redis | None) -> SamModels:
    """The process's SAM models; embeddings are shared through `connection` (all workers)
    unless LABELPILOT_SAM_REDIS_TTL is 0 or there is no connection."""
    shared = None
    if connection is not None and settings.sam_redis_ttl > 0:
        shared = RedisEmbeddingStore(connection, ttl=settings.sam_redis_ttl,
                                     max_mb=settings.sam_redis_mb)
    return SamModels(sam_options(settings), model_locator(settings), shared)


def build_interactive(settings: Settings, sam: SamModels) -> InteractiveSam:
    """Interactive SAM for the Label Studio endpoints."""
    return InteractiveSam(sam, image_cache_mb=settings.sam_image_cache_mb,
                          prewarm_tasks=settings.sam_prewarm_tasks,
                          max_pixels=settings.max_image_pixels)


def model_loader(settings: Settings) -> ModelLoader:
    """Weights → the model serving them: torch, or the version's export by
    LABELPILOT_RUNTIME (`backends.served_model`)."""
    return ModelLoader(settings.runtime, settings.device, yolo_max_batch(settings))


def build_predictor(settings: Settings, store: ModelStore) -> Predictor:
    """Batch pre-annotation over the YOLO models of this process."""
    # an exported model serves through the same interface (`ServedModel`) as a YoloModel
    models = cast("ModelCache[YoloModel]", ModelCache(model_loader(settings),
                                                      capacity=settings.max_models))
    return Predictor(store, model_locator(settings), models=models,
                     max_models=settings.max_models,
                     device=settings.device, max_batch=yolo_max_batch(settings),
                     max_pixels=settings.max_image_pixels, video=video_limits(settings),
                     observers=build_observers(settings, store.connection, store))


def build_observers(settings: Settings, connection: redis.Redis,
                    store: ModelStore) -> list[Observer]:
    """What watches every predicted image: usage counts always; quality checks and drift
    unless LABELPILOT_WATCH is off."""
    from labelpilot.backends.usage import PredictionCounter

    observers: list[Observer] = [PredictionCounter(connection)]  # always: predictions per day
    watching: list[Observer] = []  # only with LABELPILOT_WATCH (quality checks, drift)
    from functools import partial

    from labelpilot.backends.quality_ledger import QualityLedger, QualityObserver
    from labelpilot.trainers.quality_settings import load_thresholds

    watching.append(QualityObserver(QualityLedger(connection),
                                    partial(load_thresholds, connection)))
    from labelpilot.backends.drift import DriftSettings
    from labelpilot.trainers.drift_monitor import DriftObserver
    from labelpilot.trainers.retraining import RetrainingRequests

    watching.append(DriftObserver(
        connection, store, window=settings.drift_window,
        settings=DriftSettings(alpha=settings.drift_alpha,
                               min_window=min(20, settings.drift_window)),
        requests=RetrainingRequests(connection, partial(queue_drift_training, connection))))
    return observers + (watching if settings.watch else [])


def queue_drift_training(connection: redis.Redis, project: str, _model_key: str,
                         trigger: dict[str, object]) -> str:
    """Queue the retraining a drift's request asks for ("ls-3" → LS project 3, "cvat-task-7"
    → CVAT task 7); its trigger holds the new version for an admin's approval."""
    from labelpilot.jobs import CVAT_JOB, LABEL_STUDIO_JOB

    if project.startswith("ls-"):
        from labelpilot.adapters.label_studio.training import request_project_training

        return request_project_training(connection, LABEL_STUDIO_JOB, int(project[3:]),
                                        trigger).job_id
    from labelpilot.adapters.cvat.training import request_cvat_training

    kind, _, ident = project.removeprefix("cvat-").partition("-")
    return request_cvat_training(connection, CVAT_JOB, kind, int(ident), trigger).job_id


def video_limits(settings: Settings) -> VideoLimits:
    """How large and long videos may be, and which are tracked inside a request."""
    return VideoLimits(max_bytes=settings.max_video_bytes,
                       max_seconds=settings.max_video_seconds,
                       max_pixels=settings.max_image_pixels,
                       inline_frames=settings.video_inline_frames,
                       keyframe_iou=settings.video_keyframe_iou,
                       batch=yolo_max_batch(settings),
                       download_seconds=settings.video_download_seconds)


def model_store(settings: Settings, connection: redis.Redis) -> ModelStore:
    """The versions under MODEL_DIR/store, with their pointers in `connection`."""
    return ModelStore(settings.resolved_model_dir / "store", connection)


def source_policy(settings: Settings) -> SourcePolicy:
    """How images and LS's API are reached (the settings override what /setup says)."""
    return SourcePolicy(url=settings.label_studio_url,
                        token=secret(settings.label_studio_api_key),
                        allowed_hosts=frozenset(settings.allowed_hosts),
                        max_bytes=settings.max_image_bytes,
                        local_files_root=settings.local_files_document_root,
                        download_seconds=settings.image_download_seconds,
                        token_seconds=settings.ls_token_ttl)


def cvat_access(settings: Settings) -> CvatAccess:
    """CVAT_URL and its credentials (training from CVAT, `connect cvat`)."""
    return CvatAccess(settings.cvat_url, secret(settings.cvat_access_token), settings.cvat_user,
                      secret(settings.cvat_password), settings.cvat_org)


def control_defaults(settings: Settings) -> ControlDefaults:
    """The model per task (LABELPILOT_MODEL_<TASK>) and threshold of LS controls whose tags
    do not name them."""
    return ControlDefaults(models=tuple(sorted(settings.task_models_set().items())),
                           score_threshold=settings.score_threshold)
