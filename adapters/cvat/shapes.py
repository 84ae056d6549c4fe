"""Our predictions as CVAT shapes: one conversion, two serialisers.

`cvat_shapes` dispatches once on what each prediction holds (skeleton, mask, rotated box, box;
the best class as a tag) and gives frozen, platform-shaped records in full-image pixels.
`nuclio_json` renders them as a nuclio detector's reply (read by CVAT's lambda manager) and
`sdk_requests` as cvat-sdk request models (``cvat-cli task auto-annotate``, agents).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import cvat_sdk.auto_annotation as cvataa
import numpy as np
from cvat_sdk import models

from labelpilot.adapters.cvat.rle import encode_detector_bitmap, encode_shape_rle
from labelpilot.adapters.cvat.spec import SCORE_ATTRIBUTE, LabelSpec
from labelpilot.backends.geometry import instance_mask, mask_to_polygon
from labelpilot.backends.shapes import Instance, Prediction

POINT_THRESHOLD = 0.5  # keypoints scored below this are sent as outside


def score_text(score: float) -> str:
    """The confidence as the ``score`` text attribute carries it."""
    return f"{score:.4f}"


def _shift(points: Sequence[tuple[float, float]], offset: tuple[int, int]) -> tuple[float, ...]:
    return tuple(float(v) + offset[i % 2] for xy in points for i, v in enumerate(xy))


@dataclass(frozen=True, eq=False)
class CvatMask:
    """A bool mask over the image the model saw, placed at `offset` in the full image."""

    bitmap: np.ndarray
    offset: tuple[int, int]
    outline: tuple[tuple[float, float], ...] = ()  # the model's own polygon, if it gave one

    def polygon(self) -> tuple[float, ...]:
        """Flat outline in full-image pixels: the model's polygon, else the mask's contour."""
        return _shift(list(self.outline) or mask_to_polygon(self.bitmap), self.offset)

    def _placed(self, encoded: list[int] | None) -> list[int] | None:
        if encoded is None:
            return None
        dx, dy = self.offset
        *values, x1, y1, x2, y2 = encoded
        return [*values, x1 + dx, y1 + dy, x2 + dx, y2 + dy]

    def detector_bitmap(self) -> list[int] | None:
        """Nuclio's ``"mask"``: 0/1 crop + inclusive box; None when empty."""
        return self._placed(encode_detector_bitmap(self.bitmap))

    def shape_rle(self) -> list[int] | None:
        """CVAT's stored mask: run lengths over the crop + inclusive box; None when empty."""
        return self._placed(encode_shape_rle(self.bitmap))


@dataclass(frozen=True)
class CvatPoint:
    """One skeleton element: the keypoint with sublabel id `index`."""

    index: int
    name: str
    x: float
    y: float
    outside: bool


@dataclass(frozen=True, eq=False)
class CvatShape:
    """One shape in full-image pixels; which fields are set depends on `type`."""

    type: Literal["rectangle", "mask", "skeleton"]
    label: LabelSpec
    score: float
    points: tuple[float, ...] = ()  # rectangle: x1, y1, x2, y2 before rotating about the centre
    rotation: float | None = None  # degrees clockwise; None: an axis-aligned box
    mask: CvatMask | None = None
    elements: tuple[CvatPoint, ...] = ()


@dataclass(frozen=True)
class CvatTag:
    label: LabelSpec
    score: float


CvatAnnotation = CvatShape | CvatTag


def _skeleton(instance: Instance, label: LabelSpec, offset: tuple[int, int]) -> CvatShape:
    dx, dy = offset
    by_index = {k.index: k for k in instance.keypoints or ()}
    elements = []
    for index, name in enumerate(label.keypoints):
        point = by_index.get(index)
        visible = point is not None and point.score >= POINT_THRESHOLD
        x, y = (point.x + dx, point.y + dy) if point is not None else (0.0, 0.0)
        elements.append(CvatPoint(index, name, x, y, outside=not visible))
    return CvatShape("skeleton", label, instance.score, elements=tuple(elements))


def _shape(instance: Instance, label: LabelSpec, width: int, height: int,
           offset: tuple[int, int]) -> CvatShape | None:
    if label.type == "skeleton":
        return _skeleton(instance, label, offset)
    if label.type == "mask":
        mask = CvatMask(instance_mask(instance, width, height), offset, instance.polygon or ())
        return CvatShape("mask", label, instance.score, mask=mask)
    if instance.rotated is not None:
        r = instance.rotated
        corners = [(r.cx - r.width / 2, r.cy - r.height / 2),
                   (r.cx + r.width / 2, r.cy + r.height / 2)]
        return CvatShape("rectangle", label, instance.score, _shift(corners, offset),
                         rotation=math.degrees(r.angle) % 360)
    if instance.box is None:
        return None
    b = instance.box
    return CvatShape("rectangle", label, instance.score,
                     _shift([(b.x1, b.y1), (b.x2, b.y2)], offset))


def cvat_shapes(prediction: Prediction, labels: Sequence[LabelSpec], threshold: float,
                offset: tuple[int, int] = (0, 0)) -> list[CvatAnnotation]:
    """One model's output on one image as CVAT annotations. Labels match by class name (others
    are dropped); `offset` is where the image the model saw lies in the full image; the best
    class becomes a tag when it scores at least `threshold`."""
    by_name = {label.name: label for label in labels}
    p = prediction
    out: list[CvatAnnotation] = []
    for instance in p.instances:
        label = by_name.get(instance.class_name)
        shape = None if label is None else _shape(instance, label, p.width, p.height, offset)
        if shape is not None:
            out.append(shape)
    if p.classes and p.classes[0].score >= threshold and p.classes[0].class_name in by_name:
        out.append(CvatTag(by_name[p.classes[0].class_name], p.classes[0].score))
    return out


# ---------------------------------------------------------------- nuclio detector reply


def _rounded(points: Sequence[float]) -> list[float]:
    return [round(v, 2) for v in points]


def _nuclio(item: CvatAnnotation) -> dict[str, Any] | None:
    body: dict[str, Any] = {
        "label": item.label.name, "type": "tag" if isinstance(item, CvatTag) else item.type,
        "confidence": score_text(item.score),
        "attributes": [{"name": SCORE_ATTRIBUTE, "value": score_text(item.score)}]}
    if isinstance(item, CvatTag):
        return body
    if item.type == "skeleton":
        body["elements"] = [{"label": e.name, "type": "points", "points": _rounded([e.x, e.y]),
                             "outside": int(e.outside)} for e in item.elements]
    elif item.mask is not None:
        bitmap = item.mask.detector_bitmap()
        if bitmap is None:
            return None
        body["mask"] = bitmap
        body["points"] = _rounded(item.mask.polygon())  # used when CVAT converts to polygons
    else:
        body["points"] = _rounded(item.points)
        body["rotation"] = 0 if item.rotation is None else round(item.rotation, 4)
    return body


def nuclio_json(items: Sequence[CvatAnnotation]) -> list[dict[str, Any]]:
    """The list a nuclio detector returns: one dict per shape or tag, labels by name, every
    item with ``confidence`` and the ``score`` attribute."""
    return [body for body in map(_nuclio, items) if body is not None]


# ---------------------------------------------------------------- cvat-sdk requests


def _floats(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values]


def _sdk(item: CvatAnnotation, score_attribute: bool,
         to_polygon: bool) -> cvataa.DetectionAnnotation | None:
    attributes = {"attributes": [models.AttributeValRequest(
        spec_id=0, value=score_text(item.score))]} if score_attribute else {}
    if isinstance(item, CvatTag):
        return cvataa.tag(item.label.id, **attributes)
    extra: dict[str, Any] = {"score": float(item.score), **attributes}
    label_id = item.label.id
    if item.type == "skeleton":
        return cvataa.skeleton(label_id, [cvataa.keypoint(e.index, _floats([e.x, e.y]),
                                                          outside=e.outside)
                                          for e in item.elements], **extra)
    if item.mask is not None:
        if to_polygon:
            polygon = item.mask.polygon()
            return cvataa.polygon(label_id, _floats(polygon), **extra) \
                if len(polygon) >= 6 else None
        rle = item.mask.shape_rle()
        return cvataa.mask(label_id, _floats(rle), **extra) if rle else None
    if item.rotation is not None:
        extra = {"rotation": float(item.rotation), **extra}
    return cvataa.rectangle(label_id, _floats(item.points), **extra)


def sdk_requests(items: Sequence[CvatAnnotation], score_attribute: bool = False,
                 to_polygon: bool = False) -> list[cvataa.DetectionAnnotation]:
    """cvat-sdk requests (frame 0, label ids from our spec); masks as shape RLE, or as polygons
    when `to_polygon`. ``score_attribute`` adds the ``score`` text attribute (spec id 0)."""
    return [r for r in (_sdk(item, score_attribute, to_polygon) for item in items)
            if r is not None]
