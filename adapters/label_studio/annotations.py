"""Label Studio annotation results → our `Instance` shapes (pixels), for training."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from labelpilot.adapters.label_studio.config import ControlSpec
from labelpilot.backends.geometry import mask_to_polygon, rotated_corners
from labelpilot.backends.keyframes import interpolate
from labelpilot.backends.shapes import BBox, Instance, Keypoint, RotatedBox
from labelpilot.backends.tracks import Keyframe


def chosen_annotation(task: dict[str, Any]) -> dict[str, Any] | None:
    """The annotation to learn from: ground truth first, else the newest not cancelled."""
    usable = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not usable:
        return None
    usable.sort(key=lambda a: (bool(a.get("ground_truth")), str(a.get("updated_at") or ""),
                               int(a.get("id") or 0)))
    return usable[-1]


def ls_rectangle(x: float, y: float, w: float, h: float, rotation: float, width: int,
                 height: int) -> BBox | RotatedBox:
    """An LS rectangle (percent; rotated in degrees about its top-left corner) in pixels."""
    x, y, w, h = x * width / 100, y * height / 100, w * width / 100, h * height / 100
    angle = math.radians(rotation)
    if abs(angle) < 1e-9:
        return BBox(x, y, x + w, y + h)
    cx = x + (w / 2) * math.cos(angle) - (h / 2) * math.sin(angle)
    cy = y + (w / 2) * math.sin(angle) + (h / 2) * math.cos(angle)
    return RotatedBox(cx, cy, w, h, angle)


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
        shape = ls_rectangle(value["x"], value["y"], value["width"], value["height"],
                             float(value.get("rotation") or 0), width, height)
        if isinstance(shape, BBox):
            return Instance(label, 1.0, box=shape)
        return Instance(label, 1.0, rotated=shape)
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


def video_boxes(annotation: dict[str, Any], control: ControlSpec, width: int, height: int,
                last_frame: int) -> dict[int, list[Instance]]:
    """A VideoRectangle control's `videorectangle` regions → the boxes on each frame (1-based),
    drawn from their keyframes as LS's editor draws them (`keyframes.interpolate`; a keyframe
    without `enabled` counts as disabled), clipped to the frame. Regions whose label is not
    one of the control's are left out."""
    frames: dict[int, list[Instance]] = {}
    for region in annotation.get("result") or []:
        if region.get("from_name") != control.name:
            continue
        value = region.get("value") or {}
        labels = value.get("labels") or []
        if not labels or labels[0] not in control.labels:
            continue
        keyframes = sequence_keyframes(value.get("sequence") or [], width, height)
        for frame, box in interpolate(keyframes, last_frame).items():
            clipped = BBox(max(box.x1, 0), max(box.y1, 0), min(box.x2, width),
                           min(box.y2, height))
            if clipped.x2 - clipped.x1 >= 1 and clipped.y2 - clipped.y1 >= 1:
                frames.setdefault(frame, []).append(Instance(labels[0], 1.0, box=clipped))
    return frames


def sequence_keyframes(sequence: list[dict[str, Any]], width: int, height: int
                       ) -> list[Keyframe]:
    """LS sequence items (percent boxes) → pixel keyframes in frame order; items without a
    frame number >= 1 or a box are dropped; of two on one frame the later wins (the editor
    keeps one)."""
    out = []
    for item in sequence:
        try:
            frame = int(item["frame"])
            shape = ls_rectangle(float(item["x"]), float(item["y"]), float(item["width"]),
                                 float(item["height"]), float(item.get("rotation") or 0),
                                 width, height)
        except (KeyError, TypeError, ValueError):
            continue
        if frame < 1:
            continue
        if isinstance(shape, RotatedBox):  # the box around it: videos train upright boxes
            xs, ys = zip(*rotated_corners(shape), strict=True)
            shape = BBox(min(xs), min(ys), max(xs), max(ys))
        out.append(Keyframe(frame, shape, bool(item.get("enabled", False))))
    return sorted({k.frame: k for k in out}.values(), key=lambda k: k.frame)


def task_choices(task: dict[str, Any], control: ControlSpec
                 ) -> tuple[tuple[str, ...], dict[str, Any] | None]:
    """The image-level labels chosen in a Choices control (classification)."""
    annotation = chosen_annotation(task)
    if annotation is None:
        return (), None
    chosen: list[str] = []
    for region in annotation.get("result") or []:
        if region.get("from_name") == control.name:
            chosen += [c for c in (region.get("value") or {}).get("choices") or []
                       if c in control.labels and c not in chosen]
    return tuple(chosen), annotation


def task_poses(task: dict[str, Any], control: ControlSpec, boxes: ControlSpec | None,
               width: int, height: int) -> tuple[tuple[Instance, ...], dict[str, Any] | None]:
    """KeyPointLabels points grouped into objects (pose training).

    LS keypoints are loose points; each goes to the smallest box of the paired RectangleLabels
    control that contains it (that box's label is the object's class). Without boxes, all
    points of the image form one object of class `POSE_CLASS`.
    """
    annotation = chosen_annotation(task)
    if annotation is None:
        return (), None
    index_of = {label: i for i, label in control.keypoint_labels.items()}
    regions = annotation.get("result") or []
    objects: list[tuple[Instance | None, dict[int, Keypoint]]] = []
    if boxes is not None:
        found = (region_instance(r, boxes, width, height) for r in regions)
        objects = [(i, {}) for i in found if i is not None and i.box is not None]
    loose: dict[int, Keypoint] = {}
    for region in regions:
        value = region.get("value") or {}
        labels = value.get("keypointlabels") or []
        if region.get("from_name") != control.name or not labels or labels[0] not in index_of:
            continue
        point = Keypoint(index_of[labels[0]], value["x"] * width / 100,
                         value["y"] * height / 100, 1.0)
        owner = _smallest_box_containing(objects, point)
        target = owner if owner is not None else loose
        target.setdefault(point.index, point)
    poses = [Instance(box.class_name, 1.0, box=box.box, keypoints=tuple(points.values()))
             for box, points in objects if box is not None and points]
    if loose and not objects:
        poses.append(Instance(POSE_CLASS, 1.0, keypoints=tuple(loose.values())))
    return tuple(poses), annotation


POSE_CLASS = "object"


def _smallest_box_containing(objects: list[tuple[Instance | None, dict[int, Keypoint]]],
                             point: Keypoint) -> dict[int, Keypoint] | None:
    best: tuple[float, dict[int, Keypoint]] | None = None
    for instance, points in objects:
        box = instance.box if instance is not None else None
        if box is None or not (box.x1 <= point.x <= box.x2 and box.y1 <= point.y <= box.y2):
            continue
        area = (box.x2 - box.x1) * (box.y2 - box.y1)
        if best is None or area < best[0]:
            best = (area, points)
    return best[1] if best is not None else None
