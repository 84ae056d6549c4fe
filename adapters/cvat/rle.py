"""CVAT's two mask encodings.

- Shape RLE (what CVAT stores for a ``mask`` shape and what interactors return): run lengths
  over the bounding-box crop, row-major, starting with a run of zeros, followed by the
  inclusive box ``[x1, y1, x2, y2]``: ``cvat_sdk.masks`` encodes and decodes it.
- Detector bitmap (what nuclio detectors return in ``"mask"``): the crop's 0/1 values
  flattened row-major, followed by the same inclusive box; CVAT run-length encodes it itself.
"""

from __future__ import annotations

import numpy as np
from cvat_sdk import masks


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive ``(x1, y1, x2, y2)`` of the set pixels, or None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def encode_shape_rle(mask: np.ndarray) -> list[int] | None:
    """Bool H x W mask → CVAT shape RLE + inclusive box (cvat-sdk's encoder); None if empty."""
    if not mask.any():
        return None
    return [int(v) for v in masks.encode_mask(np.asarray(mask, dtype=bool))]


def decode_shape_rle(points: list[float] | list[int], width: int, height: int) -> np.ndarray:
    """CVAT shape RLE + inclusive box → bool H x W mask (cvat-sdk's decoder), after checks
    whose messages say what is wrong; ValueError when inconsistent."""
    if len(points) < 5:
        raise ValueError("a mask needs run lengths followed by [x1, y1, x2, y2]")
    values = [round(float(v)) for v in points]
    *runs, x1, y1, x2, y2 = values
    if not (0 <= x1 <= x2 < width and 0 <= y1 <= y2 < height):
        raise ValueError(f"mask box {[x1, y1, x2, y2]} is outside the {width}x{height} image")
    if any(r < 0 for r in runs):
        raise ValueError("mask run lengths must not be negative")
    crop_w, crop_h = x2 - x1 + 1, y2 - y1 + 1
    if sum(runs) != crop_w * crop_h:
        raise ValueError(f"mask runs cover {sum(runs)} pixels, the box has {crop_w * crop_h}")
    return np.asarray(masks.decode_mask(values, image_width=width, image_height=height),
                      dtype=bool)


def encode_detector_bitmap(mask: np.ndarray) -> list[int] | None:
    """Bool mask → flattened 0/1 crop + inclusive box (nuclio detector ``"mask"``)."""
    box = mask_box(mask)
    if box is None:
        return None
    x1, y1, x2, y2 = box
    crop = mask[y1:y2 + 1, x1:x2 + 1].astype(np.uint8).ravel().tolist()
    return [*crop, x1, y1, x2, y2]
