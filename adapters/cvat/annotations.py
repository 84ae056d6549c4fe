"""CVAT annotations → our `Instance`s and `Sample` labels.

Accepts cvat-sdk models (``LabeledShape``, ``LabeledImage``, ``LabeledTrack``, ``Label``) or
the same objects as plain dicts (``model.to_dict()``, a task's annotations JSON).

- rectangle → box; with ``rotation`` (degrees, clockwise) → rotated box (+ its bounding box)
- polygon → polygon (+ box); mask (shape RLE) → mask + its largest contour as polygon (+ box)
- skeleton → keypoints, ``Keypoint.index`` = the sublabel's position in the label's
  sublabels, score 0 for outside/missing points; box = visible points' extent, padded 5 %
- tag → image-level class; track keyframes (not outside) count as shapes on their frames
  (skeleton tracks are skipped); points, polylines, ellipses and cuboids are skipped.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from labelpilot.adapters.cvat.rle import decode_shape_rle, mask_box
from labelpilot.adapters.cvat.tasks import CVAT_TASKS, cvat_task
from labelpilot.backends.geometry import mask_to_polygon, rotated_corners
from labelpilot.backends.shapes import BBox, Instance, Keypoint, RotatedBox

SKELETON_PAD = 0.05


def get(obj: Any, name: str, default: Any = None) -> Any:
    """A field of a cvat-sdk model or of its dict form."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    try:
        return getattr(obj, name)
    except AttributeError:  # cvat-sdk raises an AttributeError subclass for unset fields
        return default


def text_value(value: Any) -> str:
    """An enum-like cvat-sdk value (ShapeType, LabelType, job state) as its string."""
    return str(getattr(value, "value", value) or "")


@dataclass(frozen=True)
class LabelInfo:
    id: int
    name: str
    type: str
    sublabel_ids: tuple[int, ...] = ()  # keypoint index = position here
    sublabel_names: tuple[str, ...] = ()


SCAN_TAG_PREFIX = "quality:"  # tags labelpilot's quality scan puts on frames


def label_infos(labels: Iterable[Any]) -> dict[int, LabelInfo]:
    """The task's labels by id, without labelpilot's own "quality:*" scan tags: they are
    findings about an image, not labels to train on or to compare predictions with."""
    out = {}
    for label in labels:
        if get(label, "parent_id") or get(label, "has_parent"):
            continue  # a skeleton's sublabel listed on its own
        if str(get(label, "name", "")).startswith(SCAN_TAG_PREFIX):
            continue
        subs = list(get(label, "sublabels", None) or [])
        out[int(get(label, "id"))] = LabelInfo(
            int(get(label, "id")), str(get(label, "name")), text_value(get(label, "type")) or "any",
            tuple(int(get(s, "id")) for s in subs), tuple(str(get(s, "name")) for s in subs))
    return out


@dataclass
class FrameLabels:
    shapes: list[Any] = field(default_factory=list)
    tags: list[Any] = field(default_factory=list)


def by_frame(annotations: Any, last_frame: int | None = None,
             only: Container[int] | None = None) -> dict[int, FrameLabels]:
    """A task's ``LabeledData`` (shapes, tags, tracks) grouped by frame index. Tracks are
    drawn on every frame CVAT draws them on (`track_frames`), up to `last_frame` (the task's
    last frame; unknown: up to each track's last keyframe), on the frames in `only` if given
    (an hour of video holds a track on 86,400 frames: expand only those that are used)."""
    frames: dict[int, FrameLabels] = {}
    for tag in get(annotations, "tags", None) or []:
        frames.setdefault(int(get(tag, "frame")), FrameLabels()).tags.append(tag)
    for shape in get(annotations, "shapes", None) or []:
        frames.setdefault(int(get(shape, "frame")), FrameLabels()).shapes.append(shape)
    for track in get(annotations, "tracks", None) or []:
        if get(track, "elements", None):
            continue  # skeleton tracks: elements carry their own keyframes
        for shape in track_frames(track, last_frame, only):
            frames.setdefault(int(shape["frame"]), FrameLabels()).shapes.append(shape)
    return frames


def labelled_frames(annotations: Any, last_frame: int) -> set[int]:
    """Every frame that holds a label: shapes, tags, and the frames tracks are drawn on."""
    found = {int(get(item, "frame")) for kind in ("tags", "shapes")
             for item in get(annotations, kind, None) or []}
    for track in get(annotations, "tracks", None) or []:
        if get(track, "elements", None):
            continue
        for start, end in _track_spans(track, last_frame):
            found.update(range(start, end + 1))
    return found


def _track_spans(track: Any, last_frame: int | None) -> list[tuple[int, int]]:
    """(first, last) frames of each stretch a track is drawn over, with its keyframe."""
    keys = sorted(get(track, "shapes", None) or [], key=lambda s: int(get(s, "frame")))
    spans = []
    for i, key in enumerate(keys):
        if get(key, "outside", False):
            continue
        start = int(get(key, "frame"))
        end = int(get(keys[i + 1], "frame")) - 1 if i + 1 < len(keys) else \
            max(start, last_frame if last_frame is not None else start)
        spans.append((start, end))
    return spans


def track_frames(track: Any, last_frame: int | None = None,
                 only: Container[int] | None = None) -> list[dict[str, Any]]:
    """A CVAT track's shape on each frame CVAT draws it (of `only`, if given): from each
    visible keyframe up to the next keyframe, rectangles interpolated linearly (other shapes
    held), nothing from an `outside` keyframe on; after a visible last keyframe, up to
    `last_frame`."""
    keys = sorted(get(track, "shapes", None) or [], key=lambda s: int(get(s, "frame")))
    by_start = {int(get(k, "frame")): i for i, k in enumerate(keys)}
    out: list[dict[str, Any]] = []
    for start, end in _track_spans(track, last_frame):
        i = by_start[start]
        key = keys[i]
        nxt = keys[i + 1] if i + 1 < len(keys) else None
        kind = text_value(get(key, "type"))
        a = [float(v) for v in get(key, "points")]
        b = [float(v) for v in get(nxt, "points")] if nxt is not None else a
        for frame in range(start, end + 1):
            if only is not None and frame not in only:
                continue
            t = (frame - start) / (int(get(nxt, "frame")) - start) if nxt is not None else 0.0
            points = [p + t * (q - p) for p, q in zip(a, b, strict=True)] \
                if kind == "rectangle" and len(a) == len(b) else list(a)
            out.append({"type": kind, "points": points, "rotation": get(key, "rotation", 0.0),
                        "label_id": get(track, "label_id"), "frame": frame})
    return out


def _box_of(points: Sequence[tuple[float, float]]) -> BBox:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return BBox(min(xs), min(ys), max(xs), max(ys))


def _pairs(points: Sequence[float]) -> list[tuple[float, float]]:
    return [(float(points[i]), float(points[i + 1])) for i in range(0, len(points) - 1, 2)]


def shape_instance(shape: Any, label: LabelInfo, width: int, height: int) -> Instance | None:
    """One CVAT shape as an `Instance`; None for shape types we do not train on."""
    kind = text_value(get(shape, "type"))
    points = [float(v) for v in (get(shape, "points", None) or [])]
    if kind == "rectangle" and len(points) == 4:
        x1, y1, x2, y2 = min(points[0], points[2]), min(points[1], points[3]), \
            max(points[0], points[2]), max(points[1], points[3])
        rotation = float(get(shape, "rotation", 0.0) or 0.0) % 360
        if min(rotation, 360 - rotation) < 1e-3:
            return Instance(label.name, 1.0, box=BBox(x1, y1, x2, y2))
        rotated = RotatedBox((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1,
                             math.radians(rotation))
        return Instance(label.name, 1.0, box=_box_of(rotated_corners(rotated)), rotated=rotated)
    if kind == "polygon" and len(points) >= 6:
        polygon = tuple(_pairs(points))
        return Instance(label.name, 1.0, box=_box_of(polygon), polygon=polygon)
    if kind == "mask":
        mask = decode_shape_rle(points, width, height)
        box = mask_box(mask)
        if box is None:
            return None
        polygon = tuple(mask_to_polygon(mask))
        return Instance(label.name, 1.0, box=BBox(box[0], box[1], box[2] + 1, box[3] + 1),
                        polygon=polygon if len(polygon) >= 3 else None, mask=mask)
    if kind == "skeleton":
        return _skeleton(shape, label, width, height)
    return None


def _skeleton(shape: Any, label: LabelInfo, width: int, height: int) -> Instance | None:
    index = {sub_id: i for i, sub_id in enumerate(label.sublabel_ids)}
    found: dict[int, Keypoint] = {}
    for element in get(shape, "elements", None) or []:
        i = index.get(int(get(element, "label_id")))
        pts = get(element, "points", None) or []
        if i is None or len(pts) < 2:
            continue
        visible = not get(element, "outside", False)
        found[i] = Keypoint(i, float(pts[0]), float(pts[1]), 1.0 if visible else 0.0)
    keypoints = tuple(found.get(i, Keypoint(i, 0.0, 0.0, 0.0))
                      for i in range(len(label.sublabel_ids)))
    visible_points = [(k.x, k.y) for k in keypoints if k.score > 0]
    if not visible_points:
        return None
    b = _box_of(visible_points)
    pad_x = max(2.0, (b.x2 - b.x1) * SKELETON_PAD)
    pad_y = max(2.0, (b.y2 - b.y1) * SKELETON_PAD)
    box = BBox(max(0.0, b.x1 - pad_x), max(0.0, b.y1 - pad_y), min(float(width), b.x2 + pad_x),
               min(float(height), b.y2 + pad_y))
    return Instance(label.name, 1.0, box=box, keypoints=keypoints)


def frame_labels(frame: FrameLabels, labels: Mapping[int, LabelInfo], width: int,
                 height: int) -> tuple[tuple[Instance, ...], tuple[str, ...]]:
    """A frame's instances and tag names."""
    instances = []
    for shape in frame.shapes:
        label = labels.get(int(get(shape, "label_id")))
        if label is None:
            continue
        instance = shape_instance(shape, label, width, height)
        if instance is not None:
            instances.append(instance)
    tags = tuple(dict.fromkeys(labels[int(get(t, "label_id"))].name for t in frame.tags
                               if int(get(t, "label_id")) in labels))
    return tuple(instances), tags


def instance_task(instance: Instance) -> str:
    if instance.keypoints:
        return "pose"
    if instance.rotated is not None:
        return "obb"
    if instance.polygon or instance.mask is not None:
        return "segment"
    return "detect"


def choose_task(instances: Iterable[Instance], tag_count: int) -> str:
    """The model task that the labels mostly are (ties: pose > segment > obb > detect)."""
    counts = Counter(instance_task(i) for i in instances)
    counts["classify"] = tag_count
    order = tuple(CVAT_TASKS)  # pose, segment, obb, detect, classify
    best = max(order, key=lambda t: (counts[t], -order.index(t)))
    if counts[best] == 0:
        raise ValueError("no rectangles, polygons, masks, skeletons or tags to train on")
    return best


def class_names_for(task: str, labels: Mapping[int, LabelInfo]) -> tuple[str, ...]:
    """Label names a `task` model predicts, in CVAT's label id order (stable across runs)."""
    wanted = cvat_task(task).trains_from
    return tuple(label.name for _, label in sorted(labels.items()) if label.type in wanted)


def keypoint_layout(labels: Mapping[int, LabelInfo]) -> tuple[str, ...]:
    """The keypoint names of the skeleton labels (all must have the same number)."""
    skeletons = [label for label in labels.values() if label.type == "skeleton"]
    counts = {len(s.sublabel_ids) for s in skeletons}
    if len(counts) > 1:
        raise ValueError("skeleton labels with different numbers of points cannot share one "
                         f"pose model ({sorted(counts)})")
    return skeletons[0].sublabel_names if skeletons else ()
