"""A CPU tracker whose whole state is JSON: grayscale template matching around the last box.

CVAT round-trips tracker states through the browser (signed, as plain JSON to us), so the
facade keeps nothing between calls: the state carries the object's appearance (a small
grayscale template, PNG + base64, about 2 KB), the shape as last placed, and the image size.
Each step searches a window of twice the object's size around its last position with
normalised cross-correlation (`cv2.matchTemplate`, TM_CCOEFF_NORMED) at the template's scale
and moves the shape by the best offset; below `MIN_SCORE` the object counts as lost.
Rectangles, polygons and masks are moved as a whole (no scale or rotation change).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

SUPPORTED_SHAPE_TYPES = ("rectangle", "polygon", "mask")
STATE_KIND = "labelpilot-template-v1"
TEMPLATE_SIDE = 48  # longest side of the stored template, pixels
MIN_SCORE = 0.3


class TrackingError(ValueError):
    """The shape or state cannot be tracked; the message says why."""


@dataclass(frozen=True)
class TrackedShape:
    type: str
    points: list[float]


def shape_box(shape: TrackedShape) -> tuple[float, float, float, float]:
    """``(x1, y1, x2, y2)`` around the shape, x2/y2 exclusive."""
    p = shape.points
    if shape.type == "rectangle":
        if len(p) != 4:
            raise TrackingError("a rectangle needs 4 numbers [x1, y1, x2, y2]")
        return min(p[0], p[2]), min(p[1], p[3]), max(p[0], p[2]), max(p[1], p[3])
    if shape.type == "polygon":
        if len(p) < 6 or len(p) % 2:
            raise TrackingError("a polygon needs at least 3 (x, y) points")
        return min(p[0::2]), min(p[1::2]), max(p[0::2]), max(p[1::2])
    if shape.type == "mask":
        if len(p) < 5:
            raise TrackingError("a mask needs run lengths followed by [x1, y1, x2, y2]")
        x1, y1, x2, y2 = p[-4:]
        return x1, y1, x2 + 1, y2 + 1  # the mask box is inclusive
    raise TrackingError(f"this tracker does not support shapes of type '{shape.type}' "
                        f"(supported: {', '.join(SUPPORTED_SHAPE_TYPES)})")


def moved(shape: TrackedShape, dx: float, dy: float) -> TrackedShape:
    if shape.type == "mask":  # the run lengths stay, the box moves (whole pixels)
        ix, iy = round(dx), round(dy)
        x1, y1, x2, y2 = shape.points[-4:]
        return TrackedShape("mask", [*shape.points[:-4], x1 + ix, y1 + iy, x2 + ix, y2 + iy])
    return TrackedShape(shape.type, [round(v + (dx if i % 2 == 0 else dy), 2)
                                     for i, v in enumerate(shape.points)])


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image


def _pixel_box(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x2, y2 = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
    if x2 - x1 < 2 or y2 - y1 < 2:
        raise TrackingError(f"the shape's box {list(box)} is too small or outside the image")
    return x1, y1, x2, y2


def init_state(image: np.ndarray, shape: TrackedShape) -> dict[str, Any]:
    """The state for tracking `shape` from this image on."""
    height, width = image.shape[:2]
    x1, y1, x2, y2 = _pixel_box(shape_box(shape), width, height)
    scale = min(1.0, TEMPLATE_SIDE / max(x2 - x1, y2 - y1))
    patch = _gray(image)[y1:y2, x1:x2]
    if scale < 1.0:
        patch = cv2.resize(patch, (max(2, round((x2 - x1) * scale)),
                                   max(2, round((y2 - y1) * scale))),
                           interpolation=cv2.INTER_AREA)
    ok, png = cv2.imencode(".png", patch)
    if not ok:
        raise TrackingError("could not encode the template")
    return {"kind": STATE_KIND, "type": shape.type, "points": list(shape.points),
            "image_size": [width, height], "scale": scale,
            "template": base64.b64encode(png.tobytes()).decode()}


def _template(state: dict[str, Any]) -> np.ndarray:
    try:
        data = base64.b64decode(state["template"])
        template = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    except (KeyError, ValueError, TypeError) as exc:
        raise TrackingError(f"the tracking state has no usable template: {exc}") from exc
    if template is None:
        raise TrackingError("the tracking state's template is not an image")
    return template


def track(image: np.ndarray, state: dict[str, Any],
          current: TrackedShape | None = None) -> tuple[TrackedShape | None, dict[str, Any]]:
    """Find the object on `image`; returns the moved shape (None when lost) and the new state.

    `current` is where the shape is now, when CVAT sends it (the user may have moved it);
    otherwise the state's last position is used.
    """
    if state.get("kind") != STATE_KIND:
        raise TrackingError("the state was not made by this tracker (start tracking again)")
    height, width = image.shape[:2]
    if list(state.get("image_size", [])) != [width, height]:
        raise TrackingError(f"the frame is {width}x{height} but tracking started on a "
                            f"{state.get('image_size')} frame")
    last = current or TrackedShape(str(state["type"]), [float(v) for v in state["points"]])
    template = _template(state)
    scale = float(state["scale"])
    x1, y1, x2, y2 = shape_box(last)
    bw, bh = x2 - x1, y2 - y1
    margin = max(bw, bh)
    sx1, sy1, sx2, sy2 = _pixel_box((x1 - margin, y1 - margin, x2 + margin, y2 + margin),
                                    width, height)
    window = _gray(image)[sy1:sy2, sx1:sx2]
    if scale < 1.0:
        window = cv2.resize(window, (max(1, round((sx2 - sx1) * scale)),
                                     max(1, round((sy2 - sy1) * scale))),
                            interpolation=cv2.INTER_AREA)
    th, tw = template.shape[:2]
    if window.shape[0] < th or window.shape[1] < tw:
        return None, state
    scores = np.nan_to_num(cv2.matchTemplate(window, template, cv2.TM_CCOEFF_NORMED), nan=0.0)
    _, best, _, (mx, my) = cv2.minMaxLoc(scores)
    if best < MIN_SCORE:
        return None, {**state, "score": round(float(best), 4)}
    new_x1, new_y1 = sx1 + mx / scale, sy1 + my / scale
    dx = float(np.clip(new_x1 - x1, -x1, width - x2))
    dy = float(np.clip(new_y1 - y1, -y1, height - y2))
    result = moved(last, dx, dy)
    return result, {**state, "type": result.type, "points": result.points,
                    "score": round(float(best), 4)}
