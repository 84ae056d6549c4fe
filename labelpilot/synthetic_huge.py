"""Huge generated images with many small shapes: what sliced inference is for.

The shapes model (labelpilot/shapes_model.py) learnt shapes of 32-53 px (scaled 0.5-1.5x by
its training augmentation) in 160-px images. Sliced inference runs each slice at its own
resolution, so a 20-px shape in a 4096-px image is a 20-px shape in its 640-px slice: a size
the model knows. Unsliced, the whole image is letterboxed to the model's input and the shape
shrinks to a pixel or two.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import numpy as np

from labelpilot.synthetic import CLASS_COLORS, CLASSES, ShapeBox, ShapeImage, _draw, _overlap

SMALL_SIDES = (20, 28)  # px: "20-px shapes"


def make_huge_image(seed: int, size: int = 4096, count: int = 200,
                    sides: tuple[int, int] = SMALL_SIDES) -> ShapeImage:
    """A `size` x `size` noisy background with up to `count` non-overlapping small shapes."""
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    image = np.clip(noise.normal(rng.randrange(100, 160), 8, (size, size, 3)), 0, 255)
    image = image.astype(np.uint8)
    boxes: list[ShapeBox] = []
    for _ in range(count * 20):
        if len(boxes) >= count:
            break
        side = rng.randint(*sides)
        x1, y1 = rng.randint(2, size - side - 2), rng.randint(2, size - side - 2)
        box = ShapeBox(rng.choice(CLASSES), x1, y1, x1 + side, y1 + side)
        if any(_overlap(box, b, margin=8) for b in boxes):
            continue
        _draw(image, box, CLASS_COLORS[box.class_name])
        boxes.append(box)
    return ShapeImage(image, tuple(boxes))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def recall(truth: Sequence[ShapeBox], found: Iterable[tuple[str, Sequence[float]]],
           iou: float = 0.5) -> float:
    """Share of true boxes matched (same class, IoU ≥ `iou`) by a distinct found box
    (class name matched case-insensitively)."""
    candidates = [(name.lower(), tuple(box)) for name, box in found]
    used: set[int] = set()
    hits = 0
    for t in truth:
        best, best_iou = -1, iou
        for k, (name, box) in enumerate(candidates):
            if k in used or name != t.class_name:
                continue
            value = box_iou((t.x1, t.y1, t.x2, t.y2), box)
            if value >= best_iou:
                best, best_iou = k, value
        if best >= 0:
            used.add(best)
            hits += 1
    return hits / len(truth) if truth else 1.0
