"""Detector calls: a YOLO model on one image (optionally a region of it) → CVAT shapes.

`detect` is shared by the nuclio facade and the cvat-sdk detection function; `nuclio_shapes`
renders its result the way CVAT's lambda manager reads a nuclio detector's reply.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from labelpilot.adapters.cvat.rle import encode_detector_bitmap
from labelpilot.adapters.cvat.spec import SCORE_ATTRIBUTE, LabelSpec
from labelpilot.backends.geometry import instance_mask, mask_to_polygon
from labelpilot.backends.shapes import Instance, Prediction
from labelpilot.backends.yolo import YoloModel

DEFAULT_THRESHOLD = 0.25
POINT_THRESHOLD = 0.5  # keypoints scored below this are sent as outside


@dataclass(frozen=True)
class Roi:
    """A region of interest in pixels: ``[x1, y1, x2, y2]``, x2/y2 exclusive."""

    x1: int
    y1: int
    x2: int
    y2: int

    @classmethod
    def clipped(cls, values: Sequence[float], width: int, height: int) -> Roi:
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
           roi: Roi | None = None) -> Detection:
    """Run `model` on `image` (BGR), or only on `roi` of it, keeping scores ≥ `threshold`."""
    conf = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    offset = (0, 0)
    if roi is not None:
        image = np.ascontiguousarray(image[roi.y1:roi.y2, roi.x1:roi.x2])
        offset = (roi.x1, roi.y1)
    (prediction,) = model.predict([image], conf=conf)
    return Detection(prediction, offset, conf)


def _score(value: float) -> str:
    return f"{value:.4f}"


def _common(label: str, kind: str, score: float) -> dict[str, Any]:
    return {"label": label, "type": kind, "confidence": _score(score),
            "attributes": [{"name": SCORE_ATTRIBUTE, "value": _score(score)}]}


def _shift(points: Sequence[tuple[float, float]], offset: tuple[int, int]) -> list[float]:
    return [round(float(v) + offset[i % 2], 2) for xy in points for i, v in enumerate(xy)]


def _instance_shape(instance: Instance, label: LabelSpec, width: int, height: int,
                    offset: tuple[int, int]) -> dict[str, Any] | None:
    dx, dy = offset
    body = _common(label.name, label.type, instance.score)
    if label.type == "skeleton":
        points = instance.keypoints or ()
        by_index = {k.index: k for k in points}
        body["elements"] = []
        for index, name in enumerate(label.keypoints):
            point = by_index.get(index)
            visible = point is not None and point.score >= POINT_THRESHOLD
            x, y = (point.x + dx, point.y + dy) if point is not None else (0.0, 0.0)
            body["elements"].append({"label": name, "type": "points",
                                     "points": [round(x, 2), round(y, 2)],
                                     "outside": 0 if visible else 1})
        return body
    if label.type == "mask":
        mask = instance_mask(instance, width, height)
        bitmap = encode_detector_bitmap(mask)
        if bitmap is None:
            return None
        bitmap[-4:] = [bitmap[-4] + dx, bitmap[-3] + dy, bitmap[-2] + dx, bitmap[-1] + dy]
        body["mask"] = bitmap
        polygon = list(instance.polygon or ()) or mask_to_polygon(mask)
        body["points"] = _shift(polygon, offset)  # used when CVAT converts masks to polygons
        return body
    if instance.rotated is not None:
        r = instance.rotated
        body["points"] = _shift([(r.cx - r.width / 2, r.cy - r.height / 2),
                                 (r.cx + r.width / 2, r.cy + r.height / 2)], offset)
        body["rotation"] = round(math.degrees(r.angle) % 360, 4)
        return body
    if instance.box is None:
        return None
    b = instance.box
    body["points"] = _shift([(b.x1, b.y1), (b.x2, b.y2)], offset)
    body["rotation"] = 0
    return body


def nuclio_shapes(detection: Detection, labels: Sequence[LabelSpec]) -> list[dict[str, Any]]:
    """The list a nuclio detector returns: one dict per shape or tag, labels by name."""
    by_name = {label.name: label for label in labels}
    p = detection.prediction
    out: list[dict[str, Any]] = []
    for instance in p.instances:
        label = by_name.get(instance.class_name)
        if label is None:
            continue
        shape = _instance_shape(instance, label, p.width, p.height, detection.offset)
        if shape is not None:
            out.append(shape)
    if p.classes and p.classes[0].score >= detection.threshold:
        best = p.classes[0]
        if best.class_name in by_name:
            out.append(_common(best.class_name, "tag", best.score))
    return out
