"""A YOLO model (any task) as a cvat-sdk detection function.

    cvat-cli --server-host URL --auth USER task auto-annotate TASK_ID \\
        --function-module labelpilot.adapters.cvat.functions.detection \\
        -p model=str:/models/best.pt [-p conf=float:0.3] [-p score_attribute=bool:true]

``model`` is a path (or an ultralytics name on a connected machine); its class names become
the spec's labels (matched to the task's labels by name). ``score_attribute=true`` declares a
text attribute ``score`` carrying the confidence (the task's labels must then have it too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cvat_sdk.auto_annotation as cvataa
import PIL.Image
from cvat_sdk import models
from labelpilot.adapters.cvat.detector import POINT_THRESHOLD, Detection, detect
from labelpilot.adapters.cvat.functions import pil_to_bgr
from labelpilot.adapters.cvat.rle import encode_shape_rle
from labelpilot.adapters.cvat.spec import SCORE_ATTRIBUTE, LabelSpec, model_labels, skeleton_svg
from labelpilot.backends.geometry import instance_mask, mask_to_polygon
from labelpilot.backends.model_ref import resolve_model
from labelpilot.backends.offline import configure_ultralytics
from labelpilot.backends.shapes import Instance
from labelpilot.backends.yolo import YoloModel


def sdk_label(label: LabelSpec, score_attribute: bool) -> models.PatchedLabelRequest:
    attributes = [cvataa.text_attribute_spec(SCORE_ATTRIBUTE, 0)] if score_attribute else []
    if label.type == "skeleton":
        return cvataa.skeleton_label_spec(
            label.name, label.id, [cvataa.keypoint_spec(n, i)
                                   for i, n in enumerate(label.keypoints)],
            attributes=attributes, svg=skeleton_svg(label.keypoints, label.edges))
    return cvataa.label_spec(label.name, label.id, type=label.type, attributes=attributes)


@dataclass(frozen=True)
class YoloDetectionFunction:
    """cvat-sdk's DetectionFunction protocol over a loaded `YoloModel`."""

    model: YoloModel
    labels: tuple[LabelSpec, ...]
    spec: cvataa.DetectionFunctionSpec
    conf: float | None = None
    score_attribute: bool = False

    def detect(self, context: cvataa.DetectionFunctionContext,
               image: PIL.Image.Image) -> list[cvataa.DetectionAnnotation]:
        threshold = context.conf_threshold if context.conf_threshold is not None else self.conf
        detection = detect(self.model, pil_to_bgr(image), threshold)
        return sdk_shapes(detection, self.labels, self.score_attribute,
                          context.conv_mask_to_poly)


def _floats(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values]


def _extra(score: float, score_attribute: bool) -> dict[str, Any]:
    extra: dict[str, Any] = {"score": float(score)}
    if score_attribute:
        extra["attributes"] = [models.AttributeValRequest(spec_id=0, value=f"{score:.4f}")]
    return extra


def _shape(instance: Instance, label: LabelSpec, width: int, height: int,
           score_attribute: bool, to_polygon: bool) -> cvataa.DetectionAnnotation | None:
    extra = _extra(instance.score, score_attribute)
    if label.type == "skeleton":
        by_index = {k.index: k for k in instance.keypoints or ()}
        elements = []
        for index in range(len(label.keypoints)):
            point = by_index.get(index)
            visible = point is not None and point.score >= POINT_THRESHOLD
            xy = [float(point.x), float(point.y)] if point is not None else [0.0, 0.0]
            elements.append(cvataa.keypoint(index, xy, outside=not visible))
        return cvataa.skeleton(label.id, elements, **extra)
    if label.type == "mask":
        mask = instance_mask(instance, width, height)
        if to_polygon:
            polygon = list(instance.polygon or ()) or mask_to_polygon(mask)
            if len(polygon) < 3:
                return None
            return cvataa.polygon(label.id, _floats([v for xy in polygon for v in xy]), **extra)
        points = encode_shape_rle(mask)
        return cvataa.mask(label.id, _floats(points), **extra) if points else None
    if instance.rotated is not None:
        r = instance.rotated
        return cvataa.rectangle(label.id, _floats([r.cx - r.width / 2, r.cy - r.height / 2,
                                                   r.cx + r.width / 2, r.cy + r.height / 2]),
                                rotation=float(math.degrees(r.angle) % 360), **extra)
    if instance.box is None:
        return None
    b = instance.box
    return cvataa.rectangle(label.id, _floats([b.x1, b.y1, b.x2, b.y2]), **extra)


def sdk_shapes(detection: Detection, labels: Sequence[LabelSpec], score_attribute: bool = False,
               to_polygon: bool = False) -> list[cvataa.DetectionAnnotation]:
    """`detect`'s result as cvat-sdk requests (frame 0, label ids from our spec)."""
    by_name = {label.name: label for label in labels}
    p = detection.prediction
    out: list[cvataa.DetectionAnnotation] = []
    for instance in p.instances:
        label = by_name.get(instance.class_name)
        if label is None:
            continue
        shape = _shape(instance, label, p.width, p.height, score_attribute, to_polygon)
        if shape is not None:
            out.append(shape)
    if p.classes and p.classes[0].score >= detection.threshold and \
            p.classes[0].class_name in by_name:
        best = p.classes[0]
        out.append(cvataa.tag(by_name[best.class_name].id,
                              **({"attributes": _extra(best.score, True)["attributes"]}
                                 if score_attribute else {})))
    return out


def create(model: str, conf: float | None = None, score_attribute: bool = False,
           device: str = "") -> YoloDetectionFunction:
    """The factory cvat-cli calls with the ``-p`` parameters."""
    configure_ultralytics()

    loaded = YoloModel(resolve_model(model), device=device or None)
    labels = model_labels(loaded.task, loaded.class_names,
                          loaded.keypoint_count)
    spec = cvataa.DetectionFunctionSpec(labels=[sdk_label(label, score_attribute)
                                                for label in labels])
    return YoloDetectionFunction(loaded, labels, spec, conf, score_attribute)
