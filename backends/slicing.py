"""Sliced inference for huge images with sahi: small objects keep their pixels.

A 20-px object in a 6000x4000 photo vanishes when the photo is letterboxed to the model's
input size. sahi cuts the image into overlapping slices, runs the model on each at the slice's
own resolution, shifts the boxes (and masks) back and merges what the overlaps found twice.
labelpilot wraps the YOLO object it already loaded (no second copy of the weights) in sahi's
ultralytics wrapper and turns sahi's predictions into our `Prediction`.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from labelpilot.backends.errors import ModelTaskError
from labelpilot.backends.shapes import BBox, Instance, Prediction

if TYPE_CHECKING:
    from labelpilot.backends.yolo import YoloModel

MIN_SLICE, MAX_SLICE = 128, 4096
MAX_OVERLAP = 0.5
SLICED_TASKS = ("detect", "segment")  # sahi's ultralytics wrapper: boxes and masks


class SliceSpecError(ValueError):
    """Slicing parameters out of range; the message names the parameter and the range."""


@dataclass(frozen=True)
class SliceSpec:
    """How to slice: `size` px square slices, `overlap` of a slice shared with its neighbour,
    merge predictions that overlap by more than `match_threshold` (intersection over the
    smaller box), and `full_pass`: also run the whole image once, for objects larger than a
    slice (sahi's `perform_standard_pred`)."""

    size: int = 640
    overlap: float = 0.2
    match_threshold: float = 0.5
    full_pass: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise SliceSpecError(f"slice size must be a whole number of pixels, not {self.size!r}")
        if not MIN_SLICE <= self.size <= MAX_SLICE:
            raise SliceSpecError(f"slice size {self.size} is out of range: use {MIN_SLICE} to "
                                 f"{MAX_SLICE} pixels (e.g. the model's training size, 640)")
        if not 0.0 <= self.overlap <= MAX_OVERLAP:
            raise SliceSpecError(f"slice overlap {self.overlap} is out of range: use 0 to "
                                 f"{MAX_OVERLAP} (a fraction of the slice, e.g. 0.2)")
        if not 0.0 < self.match_threshold <= 1.0:
            raise SliceSpecError(f"slice match threshold {self.match_threshold} is out of "
                                 "range: use more than 0 and at most 1 (e.g. 0.5)")

    @classmethod
    def parse(cls, size: object, overlap: object = None) -> SliceSpec:
        """From text (a label config attribute, a CLI option): SliceSpecError when a value
        is not a number or out of range."""
        try:
            pixels = int(str(size).strip())
        except ValueError:
            raise SliceSpecError(f"slice size {str(size)[:40]!r} is not a whole number of "
                                 f"pixels (use {MIN_SLICE} to {MAX_SLICE}, e.g. 640)") from None
        if overlap is None or str(overlap).strip() == "":
            return cls(pixels)
        try:
            fraction = float(str(overlap).strip())
        except ValueError:
            raise SliceSpecError(f"slice overlap {str(overlap)[:40]!r} is not a number (use 0 "
                                 f"to {MAX_OVERLAP}, e.g. 0.2)") from None
        return cls(pixels, fraction)

    def tiles(self, width: int, height: int) -> list[tuple[int, int, int, int]]:
        """The slice windows (x1, y1, x2, y2) sahi uses for an image of this size."""
        from sahi.slicing import get_slice_bboxes

        return [(int(a), int(b), int(c), int(d)) for a, b, c, d in get_slice_bboxes(
            image_height=height, image_width=width, slice_height=self.size,
            slice_width=self.size, overlap_height_ratio=self.overlap,
            overlap_width_ratio=self.overlap, auto_slice_resolution=False)]


def sliced_predict(model: YoloModel, image: np.ndarray, spec: SliceSpec, *,
                   conf: float = 0.25) -> Prediction:
    """Run `model` over `image` (BGR) slice by slice with sahi; boxes and polygons in pixels
    of the whole image, merged across slices (sahi's greedy NMM). An image no larger than a
    slice takes the model's usual path."""
    from sahi.predict import get_sliced_prediction

    if model.task not in SLICED_TASKS:
        raise ModelTaskError(f"sliced inference serves {' and '.join(SLICED_TASKS)} models; "
                             f"'{model.weights}' is a {model.task} model: remove model_slice")
    height, width = image.shape[:2]
    if width <= spec.size and height <= spec.size:  # one slice: the usual path
        return model.predict([image], conf=conf)[0]
    with model.lock:  # sahi's wrapper keeps the last batch's outputs on itself
        wrapper = _wrapper(model)
        wrapper.image_size = spec.size  # slices at their own resolution
        result = get_sliced_prediction(
            image[:, :, ::-1], wrapper, slice_height=spec.size, slice_width=spec.size,
            overlap_height_ratio=spec.overlap, overlap_width_ratio=spec.overlap,
            perform_standard_pred=spec.full_pass, postprocess_match_threshold=spec.match_threshold,
            verbose=0, batch_size=_slices_per_call(model), confidence_threshold=conf)
    segment = model.task == "segment"
    instances = tuple(_instance(p, segment) for p in result.object_prediction_list)
    return Prediction(width, height, instances)


def _slices_per_call(model: YoloModel) -> int:
    """Slices per forward pass: the model's batch on a GPU; one on a CPU, where a batch of
    16 640-px slices measured 1.3x slower than slice by slice (2 cores, bench/slicing.py)."""
    return model.max_batch if str(model.device).startswith("cuda") else 1


def _instance(prediction: Any, segment: bool) -> Instance:
    x1, y1, x2, y2 = (float(v) for v in prediction.bbox.to_xyxy())
    polygon = None
    if segment and prediction.mask is not None and prediction.mask.segmentation:
        # the largest ring: a merged mask can come back as several pieces
        ring = max(prediction.mask.segmentation, key=_ring_area)
        polygon = tuple((float(ring[k]), float(ring[k + 1])) for k in range(0, len(ring) - 1, 2))
    return Instance(str(prediction.category.name), float(prediction.score.value),
                    box=BBox(x1, y1, x2, y2), polygon=polygon)


def _ring_area(ring: list[float]) -> float:
    xs, ys = np.asarray(ring[0::2], float), np.asarray(ring[1::2], float)
    if len(xs) < 3 or len(xs) != len(ys):
        return 0.0
    return float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2)


_wrappers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_wrappers_lock = threading.Lock()


def _wrapper(model: YoloModel) -> Any:
    """sahi's ultralytics wrapper around the model's loaded YOLO object, made once per model."""
    with _wrappers_lock:
        wrapper = _wrappers.get(model)
        if wrapper is None:
            wrapper = _batched_wrapper_class()(model=model.ultralytics, device=model.device,
                                               confidence_threshold=0.25)
            _wrappers[model] = wrapper
        return wrapper


_BATCHED: type | None = None


def _batched_wrapper_class() -> type:
    """sahi's `UltralyticsDetectionModel`, with each batch of slices in ONE forward pass:
    ultralytics runs a list one image at a time unless `batch` says otherwise."""
    global _BATCHED
    if _BATCHED is None:
        from sahi.models.ultralytics import UltralyticsDetectionModel

        class BatchedUltralytics(UltralyticsDetectionModel):
            def perform_batch_inference(self, images: list[np.ndarray]) -> None:
                kwargs: dict[str, Any] = {"verbose": False, "conf": self.confidence_threshold,
                                          "device": self.device, "batch": len(images)}
                if self.image_size is not None:
                    kwargs["imgsz"] = self.image_size
                results = self.model([img[:, :, ::-1] for img in images], **kwargs)  # to BGR
                self._original_predictions = self._extract_predictions(results)
                self._original_shapes = [img.shape for img in images]

        _BATCHED = BatchedUltralytics
    return _BATCHED
