"""Harder generated shapes for the active-learning benchmark: imbalanced, cluttered, many sizes.

Same types and classes as `labelpilot.synthetic` (kept apart so that module's source hash,
which keys the cached shapes models, does not change). What makes it harder:

- class imbalance: `CLASS_WEIGHTS` (circle 60 %, square 30 %, triangle 10 % of objects);
- object sizes from small (1/12 of the side) to large (1/2.5 of the side);
- class colours jittered, and one object in `OFF_COLOR_RATE` drawn in another class's colour,
  so the colour alone no longer tells the class;
- clutter that is no class: lines, hollow outlines, ellipses, crosses and blobs, often in the
  class colours, over a textured, shaded background.
"""

from __future__ import annotations

import random

import cv2
import numpy as np

# the easy set's own drawing and spacing rules: the same shapes, only the scene is harder
from labelpilot.synthetic import CLASS_COLORS, CLASSES, ShapeBox, ShapeImage, _draw, _overlap

CLASS_WEIGHTS = {"circle": 0.6, "square": 0.3, "triangle": 0.1}
OFF_COLOR_RATE = 0.25
_DISTRACTORS = ("line", "outline", "ellipse", "cross", "blob")


def make_hard_image(rng: random.Random, size: int = 160, max_objects: int = 4,
                    max_distractors: int = 5) -> ShapeImage:
    """A cluttered image with 1..max_objects labelled shapes (exact boxes) and distractors."""
    noise = np.random.default_rng(rng.randrange(2**32))
    image = _background(noise, rng, size)
    for _ in range(rng.randint(1, max_distractors)):
        _distractor(image, rng, size)
    boxes: list[ShapeBox] = []
    wanted = rng.randint(1, max_objects)
    for _ in range(wanted * 6):
        if len(boxes) >= wanted:
            break
        side = int(size * rng.uniform(1 / 12, 1 / 2.5))
        x1, y1 = rng.randint(1, size - side - 1), rng.randint(1, size - side - 1)
        name = rng.choices(CLASSES, weights=[CLASS_WEIGHTS[c] for c in CLASSES])[0]
        box = ShapeBox(name, x1, y1, x1 + side, y1 + side)
        if any(_overlap(box, b, margin=3) for b in boxes):
            continue
        _draw(image, box, _color(rng, name))
        boxes.append(box)
    return ShapeImage(image, tuple(boxes))


def make_hard_images(count: int, size: int = 160, seed: int = 0) -> list[ShapeImage]:
    rng = random.Random(seed)
    return [make_hard_image(rng, size) for _ in range(count)]


def _background(noise: np.random.Generator, rng: random.Random, size: int) -> np.ndarray:
    base = np.array([rng.randrange(70, 190) for _ in range(3)], dtype=np.float32)
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    shade = rng.uniform(-35, 35) * ramp[None, :] + rng.uniform(-35, 35) * ramp[:, None]
    coarse = cv2.resize(noise.normal(0, 18, (8, 8, 3)).astype(np.float32), (size, size),
                        interpolation=cv2.INTER_CUBIC)
    fine = noise.normal(0, 10, (size, size, 3)).astype(np.float32)
    return np.clip(base + shade[..., None] + coarse + fine, 0, 255).astype(np.uint8)


def _color(rng: random.Random, name: str) -> tuple[int, int, int]:
    if rng.random() < OFF_COLOR_RATE:
        name = rng.choice([c for c in CLASSES if c != name])
    return tuple(int(np.clip(v + rng.randint(-35, 35), 0, 255))  # type: ignore[return-value]
                 for v in CLASS_COLORS[name])


def _any_color(rng: random.Random) -> tuple[int, int, int]:
    if rng.random() < 0.6:  # clutter in the class colours is what makes colour unreliable
        return _color(rng, rng.choice(CLASSES))
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def _distractor(image: np.ndarray, rng: random.Random, size: int) -> None:
    kind = rng.choice(_DISTRACTORS)
    color = _any_color(rng)
    cx, cy = rng.randrange(size), rng.randrange(size)
    r = int(size * rng.uniform(0.04, 0.2))
    if kind == "line":
        end = (rng.randrange(size), rng.randrange(size))
        cv2.line(image, (cx, cy), end, color, rng.randint(1, 4))
    elif kind == "outline":  # a hollow class shape is not an object of that class
        x1, y1 = max(cx - r, 0), max(cy - r, 0)
        cv2.rectangle(image, (x1, y1), (cx + r, cy + r), color, rng.randint(1, 2))
        if rng.random() < 0.5:
            cv2.circle(image, (cx, cy), r, color, 1)
    elif kind == "ellipse":  # elongated: not a circle
        axes = (r, max(2, r // rng.randint(3, 5)))
        cv2.ellipse(image, (cx, cy), axes, rng.uniform(0, 180), 0, 360, color, -1)
    elif kind == "cross":
        t = rng.randint(2, 4)
        cv2.line(image, (cx - r, cy), (cx + r, cy), color, t)
        cv2.line(image, (cx, cy - r), (cx, cy + r), color, t)
    else:  # irregular blob: a random star-shaped polygon
        angles = np.sort(np.array([rng.uniform(0, 2 * np.pi) for _ in range(7)]))
        radii = np.array([r * rng.uniform(0.3, 1.0) for _ in range(7)])
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(image, [pts.astype(np.int32)], color)
