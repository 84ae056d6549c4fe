"""Batch pre-annotation: tasks + serving plan → LS predictions, one model call per model."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from labelpilot.adapters.label_studio.config import (
    CONTROL_TASKS,
    ControlSpec,
    ServingPlan,
    store_key,
)
from labelpilot.adapters.label_studio.image_source import ImageSource, ImageSourceError
from labelpilot.adapters.label_studio.payloads import Task
from labelpilot.adapters.label_studio.results import control_results, task_score
from labelpilot.adapters.label_studio.video import (
    LongVideoHook,
    VideoJobRequest,
    VideoLimits,
    VideoTaskError,
    fetch_clip,
    track_clip,
)
from labelpilot.adapters.metrics import IMAGE_FETCH_ERRORS, PREDICTIONS
from labelpilot.backends.bands import BandMapping
from labelpilot.backends.errors import ModelNotFoundError, ModelTaskError
from labelpilot.backends.hot_swap import CurrentModels
from labelpilot.backends.images import DEFAULT_MAX_PIXELS, ImageError, decode_image_info
from labelpilot.backends.model_cache import ModelCache
from labelpilot.backends.model_ref import ModelLocator
from labelpilot.backends.model_store import ModelStore
from labelpilot.backends.observation import Observation, Observer, notify
from labelpilot.backends.shapes import Prediction
from labelpilot.backends.slicing import SLICED_TASKS, sliced_predict
from labelpilot.backends.tracking import TrackerError, TrackerSpec, make_tracker
from labelpilot.backends.yolo import DEFAULT_MAX_BATCH, YoloModel
from labelpilot.trainers.band_settings import ProjectBands

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelChoice:
    """The weights serving a control right now, and the version string LS sees for them.

    `weights` is None when there is nothing to serve yet (default weights absent, no trained
    version): /setup still answers, so LS can connect and training can start from labels.
    """

    weights: str | None
    version: str
    missing: str = ""  # why there are no weights, for the person who can fix it
    key: str | None = None  # the model-store key when a trained version serves


@dataclass(frozen=True)
class _Loaded:
    image: np.ndarray | None
    error: str | None
    bands: int = 3  # bands in the source file


class Predictor:
    """Shared by all requests of a worker process; models load once through the cache.

    `locator` resolves model refs (MODEL_DIR); without `models`, a cache of at most `max_models`
    (LABELPILOT_MAX_MODELS) YOLO models on `device` with `max_batch` images per call is made.
    Images over `max_pixels` (LABELPILOT_MAX_IMAGE_PIXELS) fail their task. `observers` see
    every predicted image (see `backends.observation`).
    """

    def __init__(self, store: ModelStore, locator: ModelLocator, *,
                 models: ModelCache[YoloModel] | None = None, max_models: int = 4,
                 device: str = "", max_batch: int = DEFAULT_MAX_BATCH,
                 max_pixels: int = DEFAULT_MAX_PIXELS, fetch_workers: int = 8,
                 video: VideoLimits | None = None, observers: Sequence[Observer] = ()):
        self.locator = locator
        self.observers = tuple(observers)  # told about every predicted image (quality, drift)
        self.max_pixels = max_pixels
        self.video = video or VideoLimits(max_pixels=max_pixels, batch=max_batch)
        self.models: ModelCache[YoloModel] = models or ModelCache(
            partial(YoloModel, device=device, max_batch=max_batch), capacity=max_models)
        self.current = CurrentModels(store, self.models.get)
        self.bands = ProjectBands(store.connection)  # per-project band mappings, cached
        self.preloading: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=fetch_workers,
                                        thread_name_prefix="image-fetch")

    def preload(self, refs: Sequence[str],
                first: Callable[[], None] | None = None) -> threading.Thread:
        """Load models in the background so the first request does not pay for it.

        `first` runs before the models (cheap warm-ups that /setup needs within LS's 3 s).
        """

        def run() -> None:
            if first is not None:
                first()
            for ref in refs:
                try:
                    self.models.get(self.locator.resolve(ref))
                except Exception as exc:  # a bad default must not stop the worker
                    log.warning("could not preload %s: %s", ref, exc)

        thread = threading.Thread(target=run, name="preload", daemon=True)
        thread.start()
        self.preloading = thread
        return thread

    def close(self, timeout: float = 60.0) -> None:
        """Stop the hot-swap listener and wait for background loads (tests, clean exits)."""
        self.current.stop(timeout)
        if self.preloading is not None:
            self.preloading.join(timeout)

    def choice(self, control: ControlSpec, project_id: int | None) -> ModelChoice:
        key = store_key(project_id, control)
        trained = self.current.get(key) if key else None
        if trained is not None:
            return ModelChoice(str(trained.weights), trained.model_version, key=key)
        try:
            # a model_path comes from the label config: confined to MODEL_DIR (ModelRefRefused)
            untrusted = control.explicit_model
            return ModelChoice(self.locator.resolve(control.model_ref, untrusted=untrusted),
                               self.locator.version(control.model_ref, untrusted=untrusted))
        except ModelNotFoundError as exc:
            hint = (" — or label tasks and press Start training to train one" if key else "")
            return ModelChoice(None, f"untrained-{control.name}", f"{exc}{hint}")

    def choices(self, plan: ServingPlan, project_id: int | None
                ) -> dict[ControlSpec, ModelChoice]:
        return {c: self.choice(c, project_id) for c in plan.controls}

    @staticmethod
    def version_of(choices: dict[ControlSpec, ModelChoice]) -> str:
        """The model_version for a project: the same string from /setup and on predictions."""
        return "+".join(sorted({choice.version for choice in choices.values()}))

    def version(self, plan: ServingPlan, project_id: int | None) -> str:
        return self.version_of(self.choices(plan, project_id))

    def predict(self, tasks: Sequence[Task], plan: ServingPlan, source: ImageSource,
                project_id: int | None = None,
                choices: dict[ControlSpec, ModelChoice] | None = None,
                long_video: LongVideoHook | None = None) -> list[dict[str, Any]]:
        """`choices`: the models picked for this request already (else picked here);
        `long_video`: queues the tracking of a clip too long to track inside the request
        (without it, such a task fails with the reason)."""
        choices = choices if choices is not None else self.choices(plan, project_id)
        version = self.version_of(choices)
        groups: dict[str, list[ControlSpec]] = {}
        for control, choice in choices.items():
            if choice.weights is None:
                log.warning("control '%s' not predicted: %s", control.name, choice.missing)
                continue
            groups.setdefault(choice.weights, []).append(control)
        if not groups:
            raise ModelNotFoundError("; ".join(sorted({c.missing for c in choices.values()})))
        models = {weights: self.models.get(weights) for weights in groups}
        for weights, controls in groups.items():
            for control in controls:
                check_compatible(control, models[weights])
        image_keys = sorted({c.image_key for c in plan.controls if c.video is None})
        loaded = self._load_images(tasks, image_keys, source, project_id)
        regions: list[list[dict[str, Any]]] = [[] for _ in tasks]
        errors: list[str | None] = [next((loaded[(i, k)].error for k in image_keys
                                          if loaded[(i, k)].error), None)
                                    for i in range(len(tasks))]
        queued: list[str | None] = [None] * len(tasks)
        inline_left = self.video.inline_frames  # for the whole request: LS waits 100 s
        for weights, controls in groups.items():
            for control in (c for c in controls if c.video is not None):
                for i, task in enumerate(tasks):
                    if errors[i] is None and queued[i] is None:
                        try:
                            found = self._track(task, control, models[weights], source,
                                                VideoJobRequest(project_id, task.id, task.data,
                                                                control.name, weights, version),
                                                long_video, inline_left)
                        except VideoTaskError as exc:
                            errors[i] = str(exc)
                            continue
                        if isinstance(found, str):
                            queued[i] = found
                        else:
                            regions[i].extend(found[0])
                            inline_left -= found[1]
            for control in (c for c in controls if c.slicing is not None):
                self._predict_sliced(control, models[weights], tasks, loaded, regions)
            unsliced = [c for c in controls if c.slicing is None]
            for key in sorted({c.image_key for c in unsliced if c.video is None}):
                ok = [i for i in range(len(tasks)) if loaded[(i, key)].image is not None]
                images = [loaded[(i, key)].image for i in ok]
                threshold = min(c.threshold for c in unsliced)
                if self.observers and project_id is not None:  # features: from the same pass
                    preds, features = models[weights].predict_with_features(
                        images, conf=threshold)  # type: ignore[arg-type]
                    choice = choices[controls[0]]
                    notify(self.observers, [
                        _observation(project_id, choice, tasks[i], loaded[(i, key)], pred,
                                     features[n] if features.shape[1] else None)
                        for n, (i, pred) in enumerate(zip(ok, preds, strict=True))])
                else:
                    preds = models[weights].predict(images, conf=threshold)  # type: ignore[arg-type]
                for i, pred in zip(ok, preds, strict=True):
                    for control in unsliced:
                        if control.image_key == key and control.video is None:
                            regions[i].extend(control_results(control, pred))
        out: list[dict[str, Any]] = []
        for task, task_regions, error, job in zip(tasks, regions, errors, queued, strict=True):
            if error is not None:
                log.warning("task %s not predicted: %s", task.id, error)
                out.append({"model_version": version, "error": f"task {task.id}: {error}"})
                continue
            if job is not None:  # no "result": LS stores nothing now; the job posts it
                out.append({"model_version": version, "job": job})
                continue
            out.append({"result": task_regions, "score": task_score(task_regions),
                        "model_version": version})
        PREDICTIONS.labels(version).inc(sum(1 for o in out if "result" in o))
        return out

    @staticmethod
    def _predict_sliced(control: ControlSpec, model: YoloModel, tasks: Sequence[Task],
                        loaded: dict[tuple[int, str], _Loaded],
                        regions: list[list[dict[str, Any]]]) -> None:
        """A control with model_slice: each image slice by slice (sahi), at the control's
        threshold; the other controls keep the batched path."""
        assert control.slicing is not None
        for i in range(len(tasks)):
            image = loaded[(i, control.image_key)].image
            if image is not None:
                pred = sliced_predict(model, image, control.slicing, conf=control.threshold)
                regions[i].extend(control_results(control, pred))

    def _track(self, task: Task, control: ControlSpec, model: YoloModel, source: ImageSource,
               request: VideoJobRequest, long_video: LongVideoHook | None, inline_left: int
               ) -> tuple[list[dict[str, Any]], int] | str:
        """The task's video regions and its frame count, or the id of the job that will track
        it: a clip longer than what is left of the request's inline frames
        (LABELPILOT_VIDEO_INLINE_FRAMES for all the request's tasks together)."""
        clip = fetch_clip(task, control, source, self.video)
        if clip.frames > inline_left:
            if long_video is None:
                raise VideoTaskError(
                    f"the video has {clip.frames} frames, more than "
                    f"LABELPILOT_VIDEO_INLINE_FRAMES={self.video.inline_frames} tracked inside "
                    "a request, and no worker queue is configured for longer clips")
            return long_video(request)
        return track_clip(clip, control, model, self.video), clip.frames

    def band_mapping(self, project_id: int | None) -> BandMapping | None:
        """The LS project's band mapping (`labelpilot settings ls-N --bands`), cached."""
        return self.bands.get(f"ls-{project_id}") if project_id is not None else None

    def _load_images(self, tasks: Sequence[Task], keys: list[str], source: ImageSource,
                     project_id: int | None = None) -> dict[tuple[int, str], _Loaded]:
        bands = self.band_mapping(project_id)
        jobs = {(i, key): self._pool.submit(self._load_one, task, key, source, bands)
                for i, task in enumerate(tasks) for key in keys}
        return {k: f.result() for k, f in jobs.items()}

    def _load_one(self, task: Task, key: str, source: ImageSource,
                  bands: BandMapping | None = None) -> _Loaded:
        url = task.data.get(key)
        if url is None:
            IMAGE_FETCH_ERRORS.labels("missing").inc()
            return _Loaded(None, f"task data has no '{key}' field (the config reads ${key})")
        try:
            data = source.fetch(str(url), task.id)
        except ImageSourceError as exc:
            IMAGE_FETCH_ERRORS.labels("fetch").inc()
            return _Loaded(None, str(exc))
        try:
            decoded = decode_image_info(data, max_pixels=self.max_pixels, bands=bands)
            return _Loaded(decoded.image, None, decoded.bands)
        except ImageError as exc:
            IMAGE_FETCH_ERRORS.labels("decode").inc()
            return _Loaded(None, f"{url}: {exc}")


def _observation(project_id: int, choice: ModelChoice, task: Task, loaded: _Loaded,
                 pred: Prediction, features: np.ndarray | None = None) -> Observation:
    assert loaded.image is not None
    confidences = tuple(i.score for i in pred.instances) or tuple(c.score for c in pred.classes[:1])
    return Observation(project=f"ls-{project_id}", model_key=choice.key,
                       model_version=choice.version, item="" if task.id is None else str(task.id),
                       image=loaded.image, bands=loaded.bands, features=features,
                       confidences=confidences)


def check_compatible(control: ControlSpec, model: YoloModel) -> None:
    """Raise ModelTaskError when the model can't fill the control (task, labels, tracker)."""
    if control.video is not None:
        try:
            make_tracker(TrackerSpec(control.video.tracker, control.video.tracker_params))
        except TrackerError as exc:
            raise ModelTaskError(f"control '{control.name}': {exc}") from exc
    wanted = CONTROL_TASKS[control.kind].compatible
    if control.slicing is not None and model.task not in SLICED_TASKS:
        raise ModelTaskError(
            f"control '{control.name}' has model_slice, which serves {'/'.join(SLICED_TASKS)} "
            f"models, but '{control.model_ref}' is a {model.task} model")
    if model.task not in wanted:
        raise ModelTaskError(
            f"control '{control.name}' needs a {'/'.join(sorted(wanted))} model, but "
            f"'{control.model_ref}' is a {model.task} model: set model_path on the control")
    if control.kind == "keypoint":
        return
    classes = {c.lower() for c in model.class_names}
    if not classes & set(control.label_map):
        raise ModelTaskError(
            f"none of the labels {list(control.labels)} of control '{control.name}' match the "
            f"classes of '{control.model_ref}' ({', '.join(model.class_names[:20])}): name "
            "labels after model classes or add predicted_values=\"class1,class2\" to a Label")
