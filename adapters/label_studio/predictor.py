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
from labelpilot.adapters.metrics import IMAGE_FETCH_ERRORS, PREDICTIONS
from labelpilot.backends.errors import ModelNotFoundError, ModelTaskError
from labelpilot.backends.hot_swap import CurrentModels
from labelpilot.backends.images import DEFAULT_MAX_PIXELS, ImageError, decode_image
from labelpilot.backends.model_cache import ModelCache
from labelpilot.backends.model_ref import ModelLocator
from labelpilot.backends.model_store import ModelStore
from labelpilot.backends.yolo import DEFAULT_MAX_BATCH, YoloModel

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


@dataclass(frozen=True)
class _Loaded:
    image: np.ndarray | None
    error: str | None


class Predictor:
    """Shared by all requests of a worker process; models load once through the cache.

    `locator` resolves model refs (MODEL_DIR); without `models`, a cache of at most `max_models`
    (LABELPILOT_MAX_MODELS) YOLO models on `device` with `max_batch` images per call is made.
    Images over `max_pixels` (LABELPILOT_MAX_IMAGE_PIXELS) fail their task.
    """

    def __init__(self, store: ModelStore, locator: ModelLocator, *,
                 models: ModelCache[YoloModel] | None = None, max_models: int = 4,
                 device: str = "", max_batch: int = DEFAULT_MAX_BATCH,
                 max_pixels: int = DEFAULT_MAX_PIXELS, fetch_workers: int = 8):
        self.locator = locator
        self.max_pixels = max_pixels
        self.models: ModelCache[YoloModel] = models or ModelCache(
            partial(YoloModel, device=device, max_batch=max_batch), capacity=max_models)
        self.current = CurrentModels(store, self.models.get)
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
        return thread

    def choice(self, control: ControlSpec, project_id: int | None) -> ModelChoice:
        key = store_key(project_id, control)
        trained = self.current.get(key) if key else None
        if trained is not None:
            return ModelChoice(str(trained.weights), trained.model_version)
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
                choices: dict[ControlSpec, ModelChoice] | None = None) -> list[dict[str, Any]]:
        """`choices`: the models picked for this request already (else picked here)."""
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
        image_keys = sorted({c.image_key for c in plan.controls})
        loaded = self._load_images(tasks, image_keys, source)
        regions: list[list[dict[str, Any]]] = [[] for _ in tasks]
        errors: list[str | None] = [next((loaded[(i, k)].error for k in image_keys
                                          if loaded[(i, k)].error), None)
                                    for i in range(len(tasks))]
        for weights, controls in groups.items():
            for key in sorted({c.image_key for c in controls}):
                ok = [i for i in range(len(tasks)) if loaded[(i, key)].image is not None]
                images = [loaded[(i, key)].image for i in ok]
                threshold = min(c.threshold for c in controls)
                preds = models[weights].predict(images, conf=threshold)  # type: ignore[arg-type]
                for i, pred in zip(ok, preds, strict=True):
                    for control in controls:
                        if control.image_key == key:
                            regions[i].extend(control_results(control, pred))
        out: list[dict[str, Any]] = []
        for task, task_regions, error in zip(tasks, regions, errors, strict=True):
            if error is not None:
                log.warning("task %s not predicted: %s", task.id, error)
                out.append({"model_version": version, "error": f"task {task.id}: {error}"})
                continue
            out.append({"result": task_regions, "score": task_score(task_regions),
                        "model_version": version})
        PREDICTIONS.labels(version).inc(sum(1 for o in out if "result" in o))
        return out

    def _load_images(self, tasks: Sequence[Task], keys: list[str],
                     source: ImageSource) -> dict[tuple[int, str], _Loaded]:
        jobs = {(i, key): self._pool.submit(self._load_one, task, key, source)
                for i, task in enumerate(tasks) for key in keys}
        return {k: f.result() for k, f in jobs.items()}

    def _load_one(self, task: Task, key: str, source: ImageSource) -> _Loaded:
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
            return _Loaded(decode_image(data, max_pixels=self.max_pixels), None)
        except ImageError as exc:
            IMAGE_FETCH_ERRORS.labels("decode").inc()
            return _Loaded(None, f"{url}: {exc}")


def check_compatible(control: ControlSpec, model: YoloModel) -> None:
    """Raise ModelTaskError when the model can't fill the control (task or labels)."""
    wanted = CONTROL_TASKS[control.kind].compatible
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
