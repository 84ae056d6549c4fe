"""Generated shape images with exact labels: a dataset a from-scratch YOLO learns in minutes.

Used by the tests (real training, no downloaded weights) and by the offline demo.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

CLASSES = ("circle", "square", "triangle")
# One colour per class (BGR): colour and shape both tell the class, so a from-scratch model
# learns in a couple of minutes on CPU.
CLASS_COLORS = {"circle": (40, 40, 230), "square": (40, 200, 40), "triangle": (230, 120, 30)}


@dataclass(frozen=True)
class ShapeBox:
    class_name: str
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class ShapeImage:
    image: np.ndarray  # BGR
    boxes: tuple[ShapeBox, ...]


def make_image(rng: random.Random, size: int = 192, max_objects: int = 3) -> ShapeImage:
    """A noisy background with 1..max_objects non-overlapping filled shapes."""
    noise = np.random.default_rng(rng.randrange(2**32))
    base = rng.randrange(90, 170)
    image = np.clip(noise.normal(base, 8, (size, size, 3)), 0, 255).astype(np.uint8)
    boxes: list[ShapeBox] = []
    for _ in range(rng.randint(1, max_objects) * 4):
        if len(boxes) >= max_objects:
            break
        side = rng.randint(size // 5, size // 3)
        x1, y1 = rng.randint(2, size - side - 2), rng.randint(2, size - side - 2)
        box = ShapeBox(rng.choice(CLASSES), x1, y1, x1 + side, y1 + side)
        if any(_overlap(box, b) for b in boxes):
            continue
        _draw(image, box, CLASS_COLORS[box.class_name])
        boxes.append(box)
    return ShapeImage(image, tuple(boxes))


def _overlap(a: ShapeBox, b: ShapeBox, margin: float = 4) -> bool:
    return not (a.x2 + margin < b.x1 or b.x2 + margin < a.x1 or
                a.y2 + margin < b.y1 or b.y2 + margin < a.y1)


def _draw(image: np.ndarray, box: ShapeBox, color: tuple[int, int, int]) -> None:
    x1, y1, x2, y2 = (int(v) for v in (box.x1, box.y1, box.x2, box.y2))
    if box.class_name == "circle":
        cv2.circle(image, ((x1 + x2) // 2, (y1 + y2) // 2), (x2 - x1) // 2, color, -1)
    elif box.class_name == "square":
        cv2.rectangle(image, (x1, y1), (x2, y2), color, -1)
    else:
        pts = np.array([[(x1 + x2) // 2, y1], [x2, y2], [x1, y2]], dtype=np.int32)
        cv2.fillPoly(image, [pts], color)


def write_detection_dataset(root: Path, n_train: int, n_val: int, *, size: int = 192,
                            seed: int = 0) -> Path:
    """Write a YOLO-format detection dataset; returns the data.yaml path."""
    rng = random.Random(seed)
    for split, count in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            sample = make_image(rng, size)
            cv2.imwrite(str(root / "images" / split / f"{i:04d}.png"), sample.image)
            lines = [
                f"{CLASSES.index(b.class_name)} {(b.x1 + b.x2) / 2 / size:.6f} "
                f"{(b.y1 + b.y2) / 2 / size:.6f} {(b.x2 - b.x1) / size:.6f} "
                f"{(b.y2 - b.y1) / size:.6f}"
                for b in sample.boxes
            ]
            (root / "labels" / split / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASSES))
    data.write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\n"
                    f"names:\n{names}\n")
    return data
