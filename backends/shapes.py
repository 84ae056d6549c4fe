"""Platform-neutral prediction types; coordinates are pixels of the EXIF-upright original image."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class BBox:
    """Axis-aligned box, corners in pixels."""

    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True, slots=True)
class RotatedBox:
    """Oriented box: centre, size and angle in radians, clockwise on screen (y points down)."""

    cx: float
    cy: float
    width: float
    height: float
    angle: float


@dataclass(frozen=True, slots=True)
class Keypoint:
    index: int
    x: float
    y: float
    score: float


@dataclass(frozen=True, slots=True, eq=False)
class Instance:
    """One object found by a model; which parts are set depends on the model's task."""

    class_name: str
    score: float
    box: BBox | None = None
    rotated: RotatedBox | None = None
    polygon: tuple[tuple[float, float], ...] | None = None
    mask: np.ndarray | None = None  # bool HxW at the image's size, when the model gives one
    keypoints: tuple[Keypoint, ...] | None = None


@dataclass(frozen=True, slots=True)
class ClassScore:
    class_name: str
    score: float


@dataclass(frozen=True, slots=True)
class Prediction:
    """Everything one model said about one image."""

    width: int
    height: int
    instances: tuple[Instance, ...] = ()
    classes: tuple[ClassScore, ...] = field(default_factory=tuple)  # classification, best first
