"""Do annotators keep what the model predicted? Compare a prediction with the submitted
annotation, region by region, and keep running totals per project and model version.

Platform-neutral: the adapters parse Label Studio / CVAT results into `Region`s at the edge.
A predicted region is *kept* when one submitted region of the same control and label overlaps
it with IoU >= the threshold (one-to-one, best total overlap first: Hungarian assignment);
predicted regions not kept count as *deleted*, submitted regions left over as *added*. A label
change is therefore one deletion plus one addition, which is what it costs an annotator.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import redis

from labelpilot.backends.shapes import BBox

DEFAULT_IOU = 0.5
POINT_TOLERANCE = 0.02  # a keypoint is kept within 2 % of the image diagonal
RASTER_SIZE = 256  # polygons without an image size are compared on a canvas this big


@dataclass(frozen=True, eq=False)
class Region:
    """One predicted or submitted region, in pixels of an image `width` x `height`.

    Exactly one geometry is set; none at all means an image-level choice (classification),
    which is kept when the same choice is submitted.
    """

    control: str  # the tool it belongs to (LS from_name, CVAT shape type)
    label: str
    box: BBox | None = None
    polygon: tuple[tuple[float, float], ...] | None = None  # also rotated boxes (corners)
    mask: np.ndarray | None = None  # bool, height x width
    point: tuple[float, float] | None = None
    width: int = 0
    height: int = 0

    @property
    def kind(self) -> str:
        if self.point is not None:
            return "point"
        if self.box is None and self.polygon is None and self.mask is None:
            return "choice"
        return "area"


@dataclass(frozen=True)
class Comparison:
    """How one submitted annotation treated one prediction (region counts)."""

    predicted: int
    kept: int
    added: int
    deleted: int

    def as_dict(self) -> dict[str, int]:
        return {
            "predicted": self.predicted,
            "kept": self.kept,
            "added": self.added,
            "deleted": self.deleted,
        }


def _box_iou(a: BBox, b: BBox) -> float:
    w = min(a.x2, b.x2) - max(a.x1, b.x1)
    h = min(a.y2, b.y2) - max(a.y1, b.y1)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
    return inter / union if union > 0 else 0.0


def _canvas(a: Region, b: Region) -> tuple[int, int, float]:
    """(width, height, scale) of the raster both regions are drawn on."""
    width, height = max(a.width, b.width), max(a.height, b.height)
    for r in (a, b):
        if r.mask is not None:
            height, width = r.mask.shape[:2]
            return width, height, 1.0
    if width <= 0 or height <= 0:  # no size known: fit both shapes' extent on a small canvas
        xs = [p[0] for r in (a, b) for p in _outline(r)]
        ys = [p[1] for r in (a, b) for p in _outline(r)]
        width, height = math.ceil(max(xs, default=1)), math.ceil(max(ys, default=1))
    scale = min(1.0, RASTER_SIZE * 4 / max(width, height, 1))  # bound the raster's cost
    return max(1, int(width * scale) + 1), max(1, int(height * scale) + 1), scale


def _outline(region: Region) -> list[tuple[float, float]]:
    if region.polygon:
        return list(region.polygon)
    if region.box is not None:
        b = region.box
        return [(b.x1, b.y1), (b.x2, b.y1), (b.x2, b.y2), (b.x1, b.y2)]
    return []


def _raster(region: Region, width: int, height: int, scale: float) -> np.ndarray:
    if region.mask is not None:
        return region.mask.astype(bool)
    canvas = np.zeros((height, width), dtype=np.uint8)
    points = np.round(np.asarray(_outline(region), dtype=np.float64) * scale).astype(np.int32)
    if len(points) >= 3:
        cv2.fillPoly(canvas, [points], 1)
    return canvas.astype(bool)


def region_iou(a: Region, b: Region) -> float:
    """Overlap of two area regions: exact for two boxes, else on a shared raster."""
    if a.box is not None and b.box is not None:
        return _box_iou(a.box, b.box)
    width, height, scale = _canvas(a, b)
    ma, mb = _raster(a, width, height, scale), _raster(b, width, height, scale)
    if ma.shape != mb.shape:  # a mask at another size than the other shape's image
        return 0.0
    union = np.count_nonzero(ma | mb)
    return float(np.count_nonzero(ma & mb)) / union if union else 0.0


def similarity(a: Region, b: Region) -> float:
    """How alike two regions are, in [0, 1]; 0 when they cannot be the same object."""
    if a.control != b.control or a.label != b.label or a.kind != b.kind:
        return 0.0
    if a.kind == "choice":
        return 1.0
    if a.kind == "point":
        assert a.point is not None and b.point is not None
        diagonal = math.hypot(max(a.width, b.width), max(a.height, b.height)) or 100.0
        distance = math.dist(a.point, b.point) / diagonal
        return 1.0 - distance / POINT_TOLERANCE if distance <= POINT_TOLERANCE else 0.0
    return region_iou(a, b)


def compare(
    predicted: Sequence[Region], submitted: Sequence[Region], iou: float = DEFAULT_IOU
) -> Comparison:
    """Kept / added / deleted regions of one annotation against one prediction.

    `iou`: the least overlap that counts as kept (keypoints: within `POINT_TOLERANCE` of the
    diagonal; choices: the same choice)."""
    if not predicted or not submitted:
        return Comparison(len(predicted), 0, len(submitted), len(predicted))
    scores = np.array([[similarity(p, s) for s in submitted] for p in predicted])
    eligible = np.where(scores >= iou - 1e-9, scores, 0.0)
    eligible[scores <= 0] = 0.0
    from scipy.optimize import linear_sum_assignment  # 0.5 s to import: not at start-up

    rows, cols = linear_sum_assignment(eligible, maximize=True)
    kept = int(sum(1 for r, c in zip(rows, cols, strict=True) if eligible[r, c] > 0))
    return Comparison(len(predicted), kept, len(submitted) - kept, len(predicted) - kept)


_FIELDS = ("annotations", "predicted", "kept", "added", "deleted")
_SEP = "\x1f"
# Replace one annotation's contribution atomically: subtract its previous counts (if any),
# add the new ones, remember the new ones. KEYS: annotation key, totals hash.
# ARGV: field prefix, ttl seconds, entry json, then predicted kept added deleted.
_RECORD = """
local old = redis.call('GET', KEYS[1])
if old then
  local prev = cjson.decode(old)
  local p = prev['prefix']
  redis.call('HINCRBY', KEYS[2], p .. 'annotations', -1)
  for _, f in ipairs({'predicted', 'kept', 'added', 'deleted'}) do
    redis.call('HINCRBY', KEYS[2], p .. f, 0 - tonumber(prev[f]))
  end
end
local fields = {'predicted', 'kept', 'added', 'deleted'}
if ARGV[3] ~= '' then
  redis.call('HINCRBY', KEYS[2], ARGV[1] .. 'annotations', 1)
  for i, f in ipairs(fields) do
    redis.call('HINCRBY', KEYS[2], ARGV[1] .. f, tonumber(ARGV[3 + i]))
  end
  redis.call('HSET', KEYS[2], ARGV[1] .. 'updated_at', ARGV[8])
  redis.call('SET', KEYS[1], ARGV[3], 'EX', tonumber(ARGV[2]))
else
  redis.call('DEL', KEYS[1])
end
return old and 1 or 0
"""


class AcceptanceLedger:
    """Running acceptance totals per (project, model version) in Redis.

    Idempotent per annotation: recording an annotation again (LS ANNOTATION_UPDATED, a CVAT
    job completed twice) replaces its earlier counts. Memory is bounded: the totals hold one
    hash field per (project, version, figure), and each annotation's last counts live under a
    key that expires after `remember_s` (an update after that counts as a new annotation).
    """

    TOTALS = "labelpilot:acceptance:totals"
    IGNORED = "labelpilot:acceptance:ignored"

    def __init__(self, connection: redis.Redis, *, remember_s: int = 180 * 86400):
        self.connection = connection
        self.remember_s = remember_s
        self._record = connection.register_script(_RECORD)

    def _key(self, project: str, annotation_id: str | int) -> str:
        return f"labelpilot:acceptance:annotation:{project}:{annotation_id}"

    def record(
        self, project: str, model_version: str, annotation_id: str | int, comparison: Comparison
    ) -> bool:
        """Count one annotation; True when it replaced an earlier count of the same one."""
        prefix = f"{project}{_SEP}{model_version}{_SEP}"
        entry = json.dumps({"prefix": prefix, **comparison.as_dict()})
        counts = [comparison.predicted, comparison.kept, comparison.added, comparison.deleted]
        replaced = self._record(
            keys=[self._key(project, annotation_id), self.TOTALS],
            args=[prefix, self.remember_s, entry, *counts, f"{time.time():.3f}"],
        )
        return bool(replaced)

    def forget(self, project: str, annotation_id: str | int) -> bool:
        """Take a deleted annotation out of the totals; True when it had been counted."""
        replaced = self._record(
            keys=[self._key(project, annotation_id), self.TOTALS],
            args=["", self.remember_s, "", 0, 0, 0, 0, "0"],
        )
        return bool(replaced)

    def ignore(self, project: str, reason: str) -> None:
        """Count an annotation that could not be compared (no labelpilot prediction, ...)."""
        self.connection.hincrby(self.IGNORED, f"{project}{_SEP}{reason}", 1)

    def ignored(self, project: str | None = None) -> dict[str, dict[str, int]]:
        """project → reason → annotations not compared."""
        out: dict[str, dict[str, int]] = {}
        for field, value in self.connection.hgetall(self.IGNORED).items():
            name, _, reason = _text(field).partition(_SEP)
            if project is None or name == project:
                out.setdefault(name, {})[reason] = int(value)
        return out

    def summary(self, project: str | None = None) -> list[dict[str, object]]:
        """One row per (project, model_version): annotations, predicted, kept, added, deleted,
        rate (kept / predicted, None before any predicted region), updated_at (unix s)."""
        counts: dict[tuple[str, str], dict[str, int]] = {}
        updated: dict[tuple[str, str], float] = {}
        for field, value in self.connection.hgetall(self.TOTALS).items():
            parts = _text(field).split(_SEP)
            if len(parts) != 3 or (project is not None and parts[0] != project):
                continue
            key = (parts[0], parts[1])
            if parts[2] == "updated_at":
                updated[key] = float(value)
            else:
                counts.setdefault(key, dict.fromkeys(_FIELDS, 0))[parts[2]] = int(value)
        out: list[dict[str, object]] = []
        for (name, version), figures in sorted(counts.items()):
            if figures["annotations"] <= 0:
                continue  # every annotation of it was deleted or moved to another version
            predicted = figures["predicted"]
            out.append(
                {
                    "project": name,
                    "model_version": version,
                    **figures,
                    "rate": round(figures["kept"] / predicted, 4) if predicted else None,
                    "updated_at": updated.get((name, version)),
                }
            )
        return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
