"""Our shapes → Label Studio result JSON (percent coordinates, brush RLE, choices)."""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from labelpilot.adapters.label_studio.config import ControlSpec
from labelpilot.backends.geometry import instance_mask, mask_to_polygon, rotated_corners
from labelpilot.backends.shapes import Instance, Prediction

KEYPOINT_SIZE_PERCENT = 0.75


def region_id() -> str:
    return secrets.token_urlsafe(8)[:10]


def _base(control: ControlSpec, prediction: Prediction, score: float) -> dict[str, Any]:
    return {
        "id": region_id(),
        "from_name": control.name,
        "to_name": control.to_name,
        "type": control.result_type,
        "original_width": prediction.width,
        "original_height": prediction.height,
        "image_rotation": 0,
        "score": round(float(score), 4),
    }


def rectangle_value(instance: Instance, width: int, height: int) -> dict[str, float]:
    """LS rectangle: top-left corner (before rotation), size in percent, rotation in degrees."""
    if instance.rotated is not None:
        r = instance.rotated
        x, y = rotated_corners(r)[0]
        w, h, rotation = r.width, r.height, math.degrees(r.angle) % 360
    elif instance.box is not None:
        b = instance.box
        x, y, w, h, rotation = b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1, 0.0
    else:
        raise ValueError("instance has no box")
    return {"x": 100 * x / width, "y": 100 * y / height, "width": 100 * w / width,
            "height": 100 * h / height, "rotation": rotation}


def _rectangle(control: ControlSpec, p: Prediction, i: Instance, label: str) -> list[dict]:
    value: dict[str, Any] = {**rectangle_value(i, p.width, p.height), "rectanglelabels": [label]}
    return [{**_base(control, p, i.score), "value": value}]


def polygon_value(points: Sequence[tuple[float, float]], width: int, height: int,
                  label: str) -> dict[str, Any]:
    """LS polygon value: points in percent of the image."""
    pts = [[100 * x / width, 100 * y / height] for x, y in points]
    return {"points": pts, "closed": True, "polygonlabels": [label]}


def brush_value(mask: np.ndarray, label: str) -> dict[str, Any]:
    """LS brush value: label-studio-sdk's RLE of a bool H x W mask."""
    from label_studio_sdk.converter.brush import mask2rle

    return {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255),
            "brushlabels": [label]}


def _polygon(control: ControlSpec, p: Prediction, i: Instance, label: str) -> list[dict]:
    points = list(i.polygon or ()) or (mask_to_polygon(i.mask) if i.mask is not None else [])
    if len(points) < 3:
        return []
    return [{**_base(control, p, i.score),
             "value": polygon_value(points, p.width, p.height, label)}]


def _brush(control: ControlSpec, p: Prediction, i: Instance, label: str) -> list[dict]:
    mask = instance_mask(i, p.width, p.height)
    if not mask.any():
        return []
    return [{**_base(control, p, i.score), "value": brush_value(mask, label)}]


def _keypoints(control: ControlSpec, p: Prediction, i: Instance, _label: str) -> list[dict]:
    out = []
    for k in i.keypoints or ():
        kp_label = control.keypoint_labels.get(k.index)
        if kp_label is None or k.score < control.point_threshold:
            continue
        value = {"x": 100 * k.x / p.width, "y": 100 * k.y / p.height,
                 "width": KEYPOINT_SIZE_PERCENT, "keypointlabels": [kp_label]}
        out.append({**_base(control, p, k.score * i.score), "value": value})
    return out


_REGION_BUILDERS: dict[str, Callable[[ControlSpec, Prediction, Instance, str], list[dict]]] = {
    "rectangle": _rectangle, "obb": _rectangle, "polygon": _polygon, "brush": _brush,
    "keypoint": _keypoints,
}


def control_results(control: ControlSpec, prediction: Prediction) -> list[dict[str, Any]]:
    """All LS regions one control gets from one model prediction (threshold and labels applied)."""
    if control.kind == "choices":
        return _choices(control, prediction)
    build = _REGION_BUILDERS[control.kind]
    regions: list[dict[str, Any]] = []
    for instance in prediction.instances:
        if instance.score < control.threshold:
            continue
        if control.kind == "keypoint":
            label = ""  # keypoint labels come from the keypoint index
        else:
            mapped = control.label_for(instance.class_name)
            if mapped is None:
                continue
            label = mapped
        regions.extend(build(control, prediction, instance, label))
    return regions


def _choices(control: ControlSpec, prediction: Prediction) -> list[dict[str, Any]]:
    for candidate in prediction.classes:
        label = control.label_for(candidate.class_name)
        if label is not None and candidate.score >= control.threshold:
            region = _base(control, prediction, candidate.score)
            for key in ("original_width", "original_height", "image_rotation"):
                region.pop(key)
            region["value"] = {"choices": [label]}
            return [region]
    return []


def task_score(regions: Iterable[dict[str, Any]]) -> float:
    """The model's confidence for a task, in Label Studio's convention: the mean confidence of
    the regions it predicted, and 0.0 when it found nothing (nothing found is no confidence).

    Label Studio reads a prediction's `score` as confidence: its prediction tab shows it as a
    percentage, and its *Uncertainty sampling* serves the task with the lowest score first
    (ascending), so the least certain tasks are labelled first.
    """
    scores = [float(r["score"]) for r in regions if "score" in r]
    if not scores:
        return 0.0
    return round(sum(scores) / len(scores), 4)
