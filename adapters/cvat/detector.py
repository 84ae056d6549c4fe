"""Detector calls: a YOLO model on one image (optionally a region of it) → CVAT shapes.

`detect` is shared by the nuclio facade and the cvat-sdk detection function; `nuclio_shapes`
renders its result (through `labelpilot.adapters.cvat.shapes`) the way CVAT's lambda manager
reads a nuclio detector's reply.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from labelpilot.adapters.cvat.shapes import CvatAnnotation, cvat_shapes, nuclio_json
from labelpilot.adapters.cvat.spec import LabelSpec
from labelpilot.backends.shapes import Prediction
from labelpilot.backends.slicing import SLICED_TASKS, SliceSpec, sliced_predict
from labelpilot.backends.yolo import YoloModel

DEFAULT_THRESHOLD = 0.25


@dataclass(frozen=True)
class Roi:
    """A region of interest in pixels: ``[x1, y1, x2, y2]``, x2/y2 exclusive."""

    x1: int
    y1: int
    x2: int
    y2: int

    @classmethod
    def clipped(cls, values: Sequence[float], width: int, height: int) -> Roi:
        if len(values) != 4 or not all(math.isfinite(v) for v in values):
            raise ValueError(f"roi {list(values)} must be 4 finite numbers [x1, y1, x2, y2]")
        x1, y1 = max(0, math.floor(values[0])), max(0, math.floor(values[1]))
        x2, y2 = min(width, math.ceil(values[2])), min(height, math.ceil(values[3]))
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"roi {list(values)} does not overlap the {width}x{height} image")
        return cls(x1, y1, x2, y2)


@dataclass(frozen=True)
class Detection:
    prediction: Prediction  # in the coordinates of the (cropped) image the model saw
    offset: tuple[int, int]  # add to every coordinate to get full-image pixels
    threshold: float


def detect(model: YoloModel, image: np.ndarray, threshold: float | None = None,
           roi: Roi | None = None, slicing: SliceSpec | None = None) -> Detection:
    """Run `model` on `image` (BGR), or only on `roi` of it, keeping scores ≥ `threshold`;
    `slicing` (the key's `labelpilot settings --slice`): slice by slice, for huge images
    (detect and segment models; others take the usual path)."""
    conf = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    offset = (0, 0)
    if roi is not None:
        image = np.ascontiguousarray(image[roi.y1:roi.y2, roi.x1:roi.x2])
        offset = (roi.x1, roi.y1)
    if slicing is not None and model.task in SLICED_TASKS:
        prediction = sliced_predict(model, image, slicing, conf=conf)
    else:
        (prediction,) = model.predict([image], conf=conf)
    return Detection(prediction, offset, conf)


def cvat_annotations(detection: Detection, labels: Sequence[LabelSpec]) -> list[CvatAnnotation]:
    """`detect`'s result as CVAT annotations in full-image pixels (see `cvat_shapes`)."""
    return cvat_shapes(detection.prediction, labels, detection.threshold, detection.offset)


def nuclio_shapes(detection: Detection, labels: Sequence[LabelSpec]) -> list[dict[str, Any]]:
    """The list a nuclio detector returns: one dict per shape or tag, labels by name."""
    return nuclio_json(cvat_annotations(detection, labels))
