"""Huge training images → tiles with their labels, the way sliced inference sees them.

A model served with slicing (backends/slicing.py) sees `size`-px slices at their own
resolution, so it trains on the same: every image larger than a slice is cut on sahi's slice
grid; boxes and polygons are clipped to each tile and remnants too small to learn from
(less than `min_visible` of the object, or a side under `min_side` px) are dropped. Tiles with
no labels are mostly background: a stable `empty_keep` share of them is kept. Every tile of an
image shares its split (`Sample.group`), so no part of a holdout image ever trains.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from labelpilot.backends.shapes import BBox, Instance
from labelpilot.backends.slicing import SliceSpec
from labelpilot.trainers.samples import Sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TilePolicy:
    min_visible: float = 0.3  # share of an object's area a tile must hold to keep it
    min_side: float = 4.0  # px: a clipped box thinner than this is dropped
    empty_keep: float = 0.1  # share of tiles without labels that are kept (stable choice)


class TilingError(ValueError):
    """An image that should be tiled could not be read."""


def tile_samples(samples: Sequence[Sample], spec: SliceSpec, directory: Path,
                 policy: TilePolicy = TilePolicy()) -> list[Sample]:
    """Samples larger than a slice → their tiles (written under `directory` as PNG); the
    others unchanged. Instances keep their class; boxes and polygons move to tile pixels."""
    out: list[Sample] = []
    for sample in samples:
        if sample.width <= spec.size and sample.height <= spec.size:
            out.append(sample)
            continue
        out.extend(_tiles(sample, spec, directory, policy))
    return out


def _tiles(sample: Sample, spec: SliceSpec, directory: Path, policy: TilePolicy) -> list[Sample]:
    image = cv2.imread(str(sample.image), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise TilingError(f"{sample.sample_id}: could not read {sample.image.name} to tile it")
    height, width = image.shape[:2]
    sx, sy = width / sample.width, height / sample.height  # labels in the sample's own size
    directory.mkdir(parents=True, exist_ok=True)
    tiles: list[Sample] = []
    for x1, y1, x2, y2 in spec.tiles(width, height):
        window = (x1 / sx, y1 / sy, x2 / sx, y2 / sy)
        kept = tuple(clipped for inst in sample.instances
                     if (clipped := clip_instance(inst, window, policy)) is not None)
        tile_id = f"{sample.sample_id}-x{x1}y{y1}"
        if not kept and not _keep_empty(tile_id, policy.empty_keep):
            continue
        path = directory / f"{tile_id}.png"
        cv2.imwrite(str(path), np.ascontiguousarray(image[y1:y2, x1:x2]))
        tiles.append(replace(
            sample, sample_id=tile_id, image=path, width=round(window[2] - window[0]),
            height=round(window[3] - window[1]), instances=kept,
            provenance={**sample.provenance, "tile": f"{x1},{y1},{x2},{y2}"},
            group=sample.group or sample.sample_id))
    return tiles


def _keep_empty(tile_id: str, share: float) -> bool:
    bucket = int(hashlib.sha1(tile_id.encode()).hexdigest()[:8], 16) % 1000
    return bucket < share * 1000


def clip_instance(instance: Instance, window: tuple[float, float, float, float],
                  policy: TilePolicy = TilePolicy()) -> Instance | None:
    """`instance` in the pixels of `window` (x1, y1, x2, y2), clipped to it; None when too
    little of it is inside. Boxes and polygons; other parts (keypoints, rotated boxes) are
    not tiled."""
    wx1, wy1, wx2, wy2 = window
    box = instance.box
    if box is None and instance.polygon:
        xs, ys = [p[0] for p in instance.polygon], [p[1] for p in instance.polygon]
        box = BBox(min(xs), min(ys), max(xs), max(ys))
    if box is None:
        return None
    cx1, cy1 = max(box.x1, wx1), max(box.y1, wy1)
    cx2, cy2 = min(box.x2, wx2), min(box.y2, wy2)
    if cx2 - cx1 < policy.min_side or cy2 - cy1 < policy.min_side:
        return None
    area = max((box.x2 - box.x1) * (box.y2 - box.y1), 1e-9)
    if (cx2 - cx1) * (cy2 - cy1) / area < policy.min_visible:
        return None
    polygon = None
    if instance.polygon:
        polygon = _clip_polygon(instance.polygon, window)
        if polygon is None:
            return None
    return Instance(instance.class_name, instance.score,
                    box=BBox(cx1 - wx1, cy1 - wy1, cx2 - wx1, cy2 - wy1), polygon=polygon)


def _clip_polygon(points: Sequence[tuple[float, float]],
                  window: tuple[float, float, float, float]
                  ) -> tuple[tuple[float, float], ...] | None:
    """The largest piece of the polygon inside the window, in window pixels (shapely)."""
    from shapely.geometry import MultiPolygon, Polygon, box

    shape = Polygon(points)
    if not shape.is_valid:
        shape = shape.buffer(0)
    piece = shape.intersection(box(*window))
    if isinstance(piece, MultiPolygon):
        piece = max(piece.geoms, key=lambda g: g.area)
    if not isinstance(piece, Polygon) or piece.is_empty or len(piece.exterior.coords) < 4:
        return None
    return tuple((float(x) - window[0], float(y) - window[1])
                 for x, y in list(piece.exterior.coords)[:-1])


def training_slicing(slice_px: int, overlap: float,
                     trigger: Mapping[str, Any]) -> SliceSpec | None:
    """The slicing a training job tiles with: the project setting (`labelpilot settings KEY
    --slice 640`), else what the source noted from its serving config (an LS control's
    model_slice), else none."""
    if slice_px:
        return SliceSpec(int(slice_px), float(overlap))
    noted = trigger.get("model_slice")
    if noted:
        return SliceSpec.parse(noted, trigger.get("model_slice_overlap"))
    return None
