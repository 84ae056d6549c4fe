"""Shape conversions shared by the adapters (rasterising, corners of rotated boxes)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from labelpilot.backends.shapes import Instance, RotatedBox


def rotated_corners(box: RotatedBox) -> list[tuple[float, float]]:
    """Corners in drawing order, starting at the corner that is top-left before rotation."""
    cos, sin = math.cos(box.angle), math.sin(box.angle)
    hw, hh = box.width / 2, box.height / 2
    local = [(-hw, -hh), (hw, -hh), (hw, hh), (-hw, hh)]
    return [(box.cx + x * cos - y * sin, box.cy + x * sin + y * cos) for x, y in local]


def instance_mask(instance: Instance, width: int, height: int) -> np.ndarray:
    """A bool mask at image size: the model's own mask, else the polygon filled."""
    if instance.mask is not None:
        return instance.mask
    mask = np.zeros((height, width), dtype=np.uint8)
    if instance.polygon:
        pts = np.round(np.asarray(instance.polygon, dtype=np.float64)).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1)
    return mask.astype(bool)


def mask_to_polygon(mask: np.ndarray, tolerance: float = 1.0) -> list[tuple[float, float]]:
    """Largest outer contour of a mask, simplified by `tolerance` pixels."""
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    if not contours:
        return []
    largest = max(contours, key=cv2.contourArea)
    approx = cv2.approxPolyDP(largest, tolerance, True).reshape(-1, 2)
    return [(float(x), float(y)) for x, y in approx]
