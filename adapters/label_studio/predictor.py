"""Batch pre-annotation: tasks + serving plan → LS predictions, one model call per model."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from adapters.label_studio.config import COMPATIBLE_TASKS, ControlSpec, ServingPlan
from adapters.label_studio.image_source import ImageSource, ImageSourceError
from adapters.label_studio.payloads import Task
from adapters.label_studio.results import control_results, task_score
from adapters.metrics import IMAGE_FETCH_ERRORS, PREDICTIONS
from backends.errors import ModelTaskError
from backends.images import DEFAULT_MAX_PIXELS, ImageError, decode_image
from backends.model_cache import ModelCache
from backends.model_ref import model_version, resolve_model
from backends.yolo import YoloModel

log = logging.getLogger(__name__)


def plan_version(plan: ServingPlan) -> str:
    """The model_version for a config: the same string from /setup and on every prediction."""
    return "+".join(sorted({model_version(ref) for ref in plan.by_model()}))


@dataclass(frozen=True)
class _Loaded:
    image: np.ndarray | None
    error: str | None


class Predictor:
    """Shared by all requests of a worker process; models load once through the cache."""

    def __init__(self, models: ModelCache[YoloModel] | None = None, fetch_workers: int = 8,
                 max_pixels: int | None = None):
        self.models: ModelCache[YoloModel] = models or ModelCache(
            YoloModel, capacity=int(os.environ.get("LABELPILOT_MAX_MODELS", "4")))
        self._pool = ThreadPoolExecutor(max_workers=fetch_workers,
                                        thread_name_prefix="image-fetch")
        self._max_pixels = max_pixels or int(
            os.environ.get("LABELPILOT_MAX_IMAGE_PIXELS", str(DEFAULT_MAX_PIXELS)))

    def model_for(self, ref: str) -> YoloModel:
        return self.models.get(resolve_model(ref))

    def predict(self, tasks: Sequence[Task], plan: ServingPlan,
                source: ImageSource) -> list[dict[str, Any]]:
        version = plan_version(plan)
        groups = plan.by_model()
        models = {ref: self.model_for(ref) for ref in groups}
        for ref, controls in groups.items():
            for control in controls:
                check_compatible(control, models[ref])
        image_keys = sorted({c.image_key for c in plan.controls})
        loaded = self._load_images(tasks, image_keys, source)
        regions: list[list[dict[str, Any]]] = [[] for _ in tasks]
        errors: list[str | None] = [None] * len(tasks)
        for ref, controls in groups.items():
            for key in sorted({c.image_key for c in controls}):
                ok = [i for i, t in enumerate(tasks) if loaded[(i, key)].image is not None]
                for i, _t in enumerate(tasks):
                    if loaded[(i, key)].error:
                        errors[i] = loaded[(i, key)].error
                images = [loaded[(i, key)].image for i in ok]
                threshold = min(c.threshold for c in controls)
                preds = models[ref].predict(images, conf=threshold)  # type: ignore[arg-type]
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
            return _Loaded(decode_image(data, max_pixels=self._max_pixels), None)
        except ImageError as exc:
            IMAGE_FETCH_ERRORS.labels("decode").inc()
            return _Loaded(None, f"{url}: {exc}")


def check_compatible(control: ControlSpec, model: YoloModel) -> None:
    """Raise ModelTaskError when the model can't fill the control (task or labels)."""
    wanted = COMPATIBLE_TASKS[control.kind]
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
