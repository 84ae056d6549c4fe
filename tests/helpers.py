"""Small helpers shared by tests: generated images with known boxes, box matching."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import cv2

from trainers.synthetic import ShapeBox, make_image


@dataclass(frozen=True)
class GeneratedImage:
    path: Path
    boxes: tuple[ShapeBox, ...]
    size: int


def generate_images(directory: Path, count: int, seed: int, size: int = 160,
                    prefix: str = "img") -> list[GeneratedImage]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    out = []
    for i in range(count):
        sample = make_image(rng, size)
        path = directory / f"{prefix}{seed}_{i}.png"
        cv2.imwrite(str(path), sample.image)
        out.append(GeneratedImage(path, sample.boxes, size))
    return out


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def ls_box(region: dict) -> tuple[float, float, float, float]:
    """An LS rectangle region → pixel xyxy (rotation 0)."""
    v, w, h = region["value"], region["original_width"], region["original_height"]
    x, y = v["x"] * w / 100, v["y"] * h / 100
    return (x, y, x + v["width"] * w / 100, y + v["height"] * h / 100)
