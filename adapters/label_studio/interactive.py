"""Interactive `/predict` (``params.context``): LS clicks/boxes → SAM → one brush/polygon region.

LS sends the clicked smart regions in percent of the image; we turn them into a pixel `Prompt`,
ask the process's SAM models (`InteractiveSam`, built once by the composition layer), and
answer with exactly one region (an empty `result` list makes the LS UI fail, LS #6866), or a
4xx that says what to change.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from labelpilot.adapters.http_errors import ApiError
from labelpilot.adapters.label_studio.annotations import ls_rectangle
from labelpilot.adapters.label_studio.image_source import ImageSource, ImageSourceError
from labelpilot.adapters.label_studio.payloads import ContextRegion, Task
from labelpilot.adapters.label_studio.results import brush_value, polygon_value, region_id
from labelpilot.adapters.label_studio.sam_config import SamSetup, SamTarget
from labelpilot.backends.bands import BandMapping
from labelpilot.backends.embedding_cache import EmbeddingCache
from labelpilot.backends.errors import BackendError, ModelLoadError
from labelpilot.backends.geometry import mask_to_polygon, rotated_corners
from labelpilot.backends.images import DEFAULT_MAX_PIXELS, ImageError, decode_image
from labelpilot.backends.interactive import MaskResult, PointPrompt, Prompt
from labelpilot.backends.sam import SamInteractor, SamModels
from labelpilot.backends.shapes import BBox

log = logging.getLogger(__name__)
POLYGON_TOLERANCE = 1.5  # pixels


class _KeypointValue(BaseModel):
    model_config = ConfigDict(extra="ignore")
    x: float
    y: float


class _RectangleValue(BaseModel):
    model_config = ConfigDict(extra="ignore")
    x: float
    y: float
    width: float
    height: float
    rotation: float = 0.0


@dataclass(frozen=True)
class Click:
    """What the annotator asked for, in pixels of the image."""

    prompt: Prompt
    label: str | None  # from the clicked region, when it has one
    to_name: str | None


def _label(region: ContextRegion) -> str | None:
    labels = region.value.get(region.type)
    if isinstance(labels, list) and labels and isinstance(labels[0], str):
        return labels[0]
    return None


def _rectangle_bbox(value: _RectangleValue, width: int, height: int) -> BBox:
    """SAM takes an upright box: the bounds of the (maybe rotated) LS rectangle."""
    shape = ls_rectangle(value.x, value.y, value.width, value.height, value.rotation, width,
                         height)
    if isinstance(shape, BBox):
        return shape
    corners = rotated_corners(shape)
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    return BBox(min(xs), min(ys), max(xs), max(ys))


def click_from_context(regions: Sequence[ContextRegion], width: int, height: int) -> Click:
    """Keypoints (±) and/or a box → a `Prompt`; raises ValueError saying what is wrong."""
    points: list[PointPrompt] = []
    box: BBox | None = None
    label: str | None = None
    to_name: str | None = None
    for region in regions:
        try:
            if region.type == "keypointlabels":
                kp = _KeypointValue.model_validate(region.value)
                points.append(PointPrompt(kp.x * width / 100, kp.y * height / 100,
                                          region.is_positive))
            elif region.type == "rectanglelabels":
                box = _rectangle_bbox(_RectangleValue.model_validate(region.value), width,
                                      height)  # SAM takes one box: the last one drawn
            else:
                continue
        except ValidationError as exc:
            where = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
            raise ValueError(f"context region of type {region.type} has no usable value "
                             f"({where}: need numbers in percent)") from exc
        label = label or _label(region)
        to_name = to_name or region.to_name
    if not points and box is None:
        kinds = sorted({r.type for r in regions}) or ["none"]
        raise ValueError("the context has no keypoint or rectangle to prompt SAM with (got "
                         f"{', '.join(kinds)}): click with a smart KeyPointLabels or "
                         "RectangleLabels tool")
    return Click(Prompt(tuple(points), box), label, to_name)


def mask_region(mask: MaskResult, target: SamTarget, label: str, to_name: str,
                width: int, height: int) -> dict[str, Any]:
    """One LS region: brush RLE (label-studio-sdk's encoder) or a simplified polygon."""
    region: dict[str, Any] = {
        "id": region_id(), "from_name": target.name, "to_name": to_name,
        "type": target.result_type, "original_width": width, "original_height": height,
        "image_rotation": 0, "score": round(mask.score, 4), "readonly": False,
    }
    if target.kind == "brush":
        region["value"] = brush_value(mask.mask, label)
        return region
    points = mask_to_polygon(mask.mask, POLYGON_TOLERANCE)
    if len(points) < 3:
        raise ValueError("the mask is too small for a polygon")
    region["value"] = polygon_value(points, width, height, label)
    return region


def _read_only(image: np.ndarray) -> np.ndarray:
    image.setflags(write=False)  # shared between requests
    return image


@dataclass(frozen=True)
class ClickAnswer:
    body: dict[str, Any]
    embedding_source: str  # memory | redis | waited | encoded (see SamInteractor.embedding)
    seconds_segment: float  # embedding (cache or encoder) + decoder


class InteractiveSam:
    """Interactive SAM for the LS endpoints of one worker process, over its `SamModels`.

    `image_cache_mb` (LABELPILOT_SAM_IMAGE_CACHE_MB): decoded images of recent clicks kept,
    so later clicks skip the decode; `prewarm_tasks` (LABELPILOT_SAM_PREWARM_TASKS): tasks of
    one batch `/predict` whose embeddings are computed ahead of clicks; `max_pixels`
    (LABELPILOT_MAX_IMAGE_PIXELS): larger images are refused.
    """

    def __init__(self, models: SamModels, *, image_cache_mb: float = 128,
                 prewarm_tasks: int = 16, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.models = models
        self.prewarm_limit = prewarm_tasks
        self.max_pixels = max_pixels
        self._images: EmbeddingCache[np.ndarray] = EmbeddingCache(
            int(image_cache_mb * 2**20), lambda image: image.nbytes)
        self._prewarm_fetch = ThreadPoolExecutor(max_workers=2,
                                                 thread_name_prefix="sam-prewarm-fetch")

    def fetch_image(self, task: Task, setup: SamSetup, source: ImageSource,
                    bands: BandMapping | None = None) -> np.ndarray:
        url = task.data.get(setup.image_key)
        if url is None:
            raise ApiError(422, f"task data has no '{setup.image_key}' field (the config reads "
                                f"${setup.image_key})")
        try:
            data = source.fetch(str(url), task.id)
            digest = hashlib.blake2b(data, digest_size=16)
            digest.update(str(bands).encode())  # the same file under another mapping differs
            key = digest.digest()
            image, _ = self._images.get_or_compute(key, lambda: _read_only(
                decode_image(data, max_pixels=self.max_pixels, bands=bands)))
            return image
        except (ImageSourceError, ImageError) as exc:
            raise ApiError(422, f"task {task.id}: {exc}") from exc

    def interactor_for(self, setup: SamSetup) -> SamInteractor:
        try:
            return self.models.get(setup.model_ref, untrusted=True)
        except ModelLoadError as exc:
            raise ApiError(503, str(exc)) from exc
        except BackendError as exc:
            raise ApiError(422, str(exc)) from exc

    def version(self, setup: SamSetup) -> str:
        """The SAM part of the model_version (cheap: no model load); 422 when misconfigured."""
        try:
            return self.models.spec(setup.model_ref, untrusted=True).version
        except BackendError as exc:
            raise ApiError(422, str(exc)) from exc

    def answer_click(self, task: Task, regions: Sequence[ContextRegion],
                     setups: dict[str, SamSetup], source: ImageSource,
                     version: str, bands: BandMapping | None = None) -> ClickAnswer:
        """The `/predict` answer to one interactive request, or ApiError (`bands`: the
        project's band mapping)."""
        named = next((r.to_name for r in regions if r.to_name in setups), None)
        setup = setups[named] if named else next(iter(setups.values()))
        image = self.fetch_image(task, setup, source, bands)
        height, width = image.shape[:2]
        try:
            click = click_from_context(regions, width, height)
            target, label = setup.target_for(click.label)
        except ValueError as exc:
            raise ApiError(422, str(exc)) from exc
        if label is None:
            raise ApiError(422, f"the clicked region has no label and output control "
                                f"'{target.name}' has several: pick a label before clicking")
        sam = self.interactor_for(setup)
        started = time.perf_counter()
        try:
            mask, source_of_embedding = sam.segment_with_info(image, click.prompt)
        except BackendError as exc:
            raise ApiError(422, str(exc)) from exc
        seconds = time.perf_counter() - started
        if not mask.mask.any():
            raise ApiError(422, "SAM found no object for this prompt (empty mask): click "
                                "inside the object, add positive points, or draw a box around "
                                "it", embedding=source_of_embedding)
        try:
            region = mask_region(mask, target, label, setup.to_name, width, height)
        except ValueError as exc:
            raise ApiError(422, f"{exc}: click inside a larger object or use a brush "
                                "control") from exc
        body = {"results": [{"result": [region], "score": region["score"],
                             "model_version": version}]}
        return ClickAnswer(body, source_of_embedding, seconds)

    def prewarm_tasks(self, tasks: Sequence[Task], setups: dict[str, SamSetup],
                      source: ImageSource, bands: BandMapping | None = None) -> int:
        """Queue the embeddings of these tasks' images (background; never fails the request).

        Only the first `prewarm_tasks` tasks of a request: "retrieve predictions" on a whole
        project must not evict the cache or keep the CPU busy for an hour.
        """
        chosen = list(tasks)[: self.prewarm_limit]
        for setup in setups.values():
            for task in chosen:
                self._prewarm_fetch.submit(self._prewarm_one, task, setup, source, bands)
        return len(chosen) * len(setups)

    def _prewarm_one(self, task: Task, setup: SamSetup, source: ImageSource,
                     bands: BandMapping | None = None) -> None:
        try:
            sam = self.models.get(setup.model_ref, untrusted=True)
            image = self.fetch_image(task, setup, source, bands)
        except (ApiError, BackendError) as exc:
            log.warning("SAM prewarm of task %s skipped: %s", task.id,
                        getattr(exc, "message", exc))
            return
        sam.prewarm(image)

    def preload(self) -> threading.Thread | None:
        """Load the default SAM (LABELPILOT_SAM_MODEL) in the background at worker start, when
        one is set."""
        ref = self.models.options.default_ref.strip()
        if not ref:
            return None

        def run() -> None:
            try:
                self.models.get()
            except Exception as exc:  # a bad default must not stop the worker
                log.warning("could not preload SAM %s: %s", ref, exc)

        thread = threading.Thread(target=run, name="sam-preload", daemon=True)
        thread.start()
        return thread

    def health(self) -> dict[str, Any]:
        """This worker's SAM models and embedding cache, for /health."""
        stats = self.models.embeddings.stats()
        return {"models": self.models.loaded(), "cache": {
            "entries": stats.entries, "mb": round(stats.bytes / 2**20, 1),
            "max_mb": round(stats.max_bytes / 2**20, 1), "hits": stats.hits,
            "misses": stats.misses, "computes": stats.computes, "evictions": stats.evictions}}
