"""Label Studio annotation results → our `Instance` shapes (pixels), for training."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from adapters.label_studio.config import ControlSpec
from backends.geometry import mask_to_polygon
from backends.shapes import BBox, Instance, RotatedBox


def chosen_annotation(task: dict[str, Any]) -> dict[str, Any] | None:
    """The annotation to learn from: ground truth first, else the newest not cancelled."""
    usable = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not usable:
        return None
    usable.sort(key=lambda a: (bool(a.get("ground_truth")), str(a.get("updated_at") or ""),
                               int(a.get("id") or 0)))
    return usable[-1]


def region_instance(region: dict[str, Any], control: ControlSpec, width: int,
                    height: int) -> Instance | None:
    """One LS region of `control` → Instance, or None if it is not a labelled shape of it."""
    if region.get("from_name") != control.name:
        return None
    value = region.get("value") or {}
    labels = value.get(control.result_type) or []
    if not labels or labels[0] not in control.labels:
        return None
    label = labels[0]
    if control.kind in ("rectangle", "obb"):
        x, y = value["x"] * width / 100, value["y"] * height / 100
        w, h = value["width"] * width / 100, value["height"] * height / 100
        angle = math.radians(float(value.get("rotation") or 0))
        if abs(angle) < 1e-9:
            return Instance(label, 1.0, box=BBox(x, y, x + w, y + h))
        cx = x + (w / 2) * math.cos(angle) - (h / 2) * math.sin(angle)
        cy = y + (w / 2) * math.sin(angle) + (h / 2) * math.cos(angle)
        return Instance(label, 1.0, rotated=RotatedBox(cx, cy, w, h, angle))
    if control.kind == "polygon":
        points = tuple((px * width / 100, py * height / 100) for px, py in value["points"])
        return Instance(label, 1.0, polygon=points)
    if control.kind == "brush":
        from label_studio_sdk.converter.brush import decode_rle

        mask = np.asarray(decode_rle(value["rle"])).reshape(height, width, 4)[:, :, 3] > 0
        polygon = tuple(mask_to_polygon(mask))
        return Instance(label, 1.0, polygon=polygon) if len(polygon) >= 3 else None
    return None


def task_instances(task: dict[str, Any], control: ControlSpec, width: int,
                   height: int) -> tuple[tuple[Instance, ...], dict[str, Any] | None]:
    annotation = chosen_annotation(task)
    if annotation is None:
        return (), None
    found = (region_instance(r, control, width, height) for r in annotation.get("result") or [])
    return tuple(i for i in found if i is not None), annotation
