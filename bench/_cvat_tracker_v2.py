"""FROZEN COPY for `bench.cvat_tracker` only: `labelpilot.adapters.cvat.tracker` as it was
before the occlusion/scale work (state kind labelpilot-template-v2), the "before" baseline.
Do not edit or import it from product code.

The original docstring follows.

A CPU tracker whose whole state is JSON: grayscale template matching around the last box.

CVAT round-trips tracker states through the browser (signed, as plain JSON to us), so the
facade keeps nothing between calls: the state carries the object's appearance (a small
grayscale template of the object *with some context around it*, PNG + base64, a few KB), the
shape as last placed, and the image size. Each step searches a window of about twice the
object's size around its last position with normalised cross-correlation
(`cv2.matchTemplate`, TM_CCOEFF_NORMED) at a few scales (`SCALES`: a growing or shrinking
object is followed) and moves and scales the shape to the best match; below `MIN_SCORE` the
object counts as lost.

The context is what makes a flat-coloured object trackable: its edge against the background
is in the template. A template with no contrast at all (object and surroundings one colour)
makes TM_CCOEFF_NORMED 1.0 everywhere, so then the cue is plain intensity difference instead;
ties always go to the smallest move and scale change, never to the window's corner.

A state's template is untrusted input (CVAT only signs what the browser sends back): it is
refused from its header when it has more pixels than allowed, before decoding.
Rectangles, polygons and masks keep their form: moved, and scaled about their box (no
rotation).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from labelpilot.adapters.cvat.rle import decode_shape_rle, encode_shape_rle
from labelpilot.backends.images import DEFAULT_MAX_PIXELS, ImageError, decode_image

SUPPORTED_SHAPE_TYPES = ("rectangle", "polygon", "mask")
STATE_KIND = "labelpilot-template-v2"
_OLD_KINDS = ("labelpilot-template-v1",)  # no context, one scale: still tracked
TEMPLATE_SIDE = 64  # longest side of the stored template (object + context), pixels
CONTEXT = 0.25  # context kept around the object on each side, as a share of its longer side
SCALES = (1.0, 1.1, 1 / 1.1, 1.21, 1 / 1.21)  # size changes searched per step
MIN_SCORE = 0.3
MIN_CONTRAST = 2.0  # grey-level standard deviation below which a template is flat
# tie-breaks, subtracted from a match score: per object size moved, per log scale change
MOVE_COST = 0.02
SCALE_COST = 0.02


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


def placed(shape: TrackedShape, x1: float, y1: float, factor: float, width: int,
           height: int) -> TrackedShape:
    """`shape` scaled by `factor` about its box's top-left corner, which goes to (x1, y1)."""
    bx1, by1, _, _ = shape_box(shape)
    if factor == 1.0:
        return moved(shape, x1 - bx1, y1 - by1)
    if shape.type != "mask":
        return TrackedShape(shape.type, [
            round((x1 if i % 2 == 0 else y1) + (v - (bx1 if i % 2 == 0 else by1)) * factor, 2)
            for i, v in enumerate(shape.points)])
    try:
        bitmap = decode_shape_rle(shape.points, width, height)
    except ValueError as exc:
        raise TrackingError(str(exc)) from exc
    mx1, my1, mx2, my2 = (round(v) for v in shape.points[-4:])
    old_crop = bitmap[my1:my2 + 1, mx1:mx2 + 1].astype(np.uint8)
    new_w = max(1, round(old_crop.shape[1] * factor))
    new_h = max(1, round(old_crop.shape[0] * factor))
    crop = cv2.resize(old_crop, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    canvas = np.zeros((height, width), bool)
    ox, oy = round(x1), round(y1)
    cx1, cy1 = max(0, ox), max(0, oy)
    cx2, cy2 = min(width, ox + new_w), min(height, oy + new_h)
    if cx2 <= cx1 or cy2 <= cy1:
        raise TrackingError("the tracked mask left the image")
    canvas[cy1:cy2, cx1:cx2] = crop[cy1 - oy:cy2 - oy, cx1 - ox:cx2 - ox] > 0
    points = encode_shape_rle(canvas)
    if points is None:
        raise TrackingError("the tracked mask became empty")
    return TrackedShape("mask", [float(v) for v in points])


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
    pad = round(CONTEXT * max(x2 - x1, y2 - y1))
    tx1, ty1 = max(0, x1 - pad), max(0, y1 - pad)
    tx2, ty2 = min(width, x2 + pad), min(height, y2 + pad)
    scale = min(1.0, TEMPLATE_SIDE / max(tx2 - tx1, ty2 - ty1))
    patch = _gray(image)[ty1:ty2, tx1:tx2]
    if scale < 1.0:
        patch = cv2.resize(patch, (max(2, round((tx2 - tx1) * scale)),
                                   max(2, round((ty2 - ty1) * scale))),
                           interpolation=cv2.INTER_AREA)
    ok, png = cv2.imencode(".png", patch)
    if not ok:
        raise TrackingError("could not encode the template")
    return {"kind": STATE_KIND, "type": shape.type, "points": list(shape.points),
            "image_size": [width, height], "scale": scale,
            # where the object's box lies in the template (template pixels), and its size
            # then (image pixels): what the template's scale is measured against
            "offset": [(x1 - tx1) * scale, (y1 - ty1) * scale], "size": [x2 - x1, y2 - y1],
            "template": base64.b64encode(png.tobytes()).decode()}


def _template(state: dict[str, Any], max_pixels: int) -> np.ndarray:
    """The state's grayscale template; one over `max_pixels` is refused from its header."""
    try:
        data = base64.b64decode(state["template"], validate=True)
        return _gray(decode_image(data, max_pixels=max_pixels))
    except (KeyError, ValueError, TypeError) as exc:
        if isinstance(exc, ImageError):
            raise TrackingError(f"the tracking state's template is unusable: {exc}") from exc
        raise TrackingError(f"the tracking state has no usable template: {exc}") from exc


def _scores(window: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Match quality of `template` at each place of `window`, higher is better, at most 1:
    normalised cross-correlation, or for a template without contrast (where that is 1.0
    everywhere) how close the grey levels are."""
    if float(template.std()) >= MIN_CONTRAST:
        return np.nan_to_num(cv2.matchTemplate(window, template, cv2.TM_CCOEFF_NORMED),
                             nan=0.0)
    sqdiff = cv2.matchTemplate(window.astype(np.float32), template.astype(np.float32),
                               cv2.TM_SQDIFF)
    return 1.0 - np.sqrt(np.maximum(sqdiff, 0) / template.size) / 255.0


def track(image: np.ndarray, state: dict[str, Any], current: TrackedShape | None = None, *,
          max_pixels: int = DEFAULT_MAX_PIXELS
          ) -> tuple[TrackedShape | None, dict[str, Any]]:
    """Find the object on `image`; returns the moved shape (None when lost) and the new state.

    `current` is where the shape is now, when CVAT sends it (the user may have moved it);
    otherwise the state's last position is used. A state's template over `max_pixels`
    (LABELPILOT_MAX_IMAGE_PIXELS) or over the frame's size is refused before decoding.
    """
    if state.get("kind") not in (STATE_KIND, *_OLD_KINDS):
        raise TrackingError("the state was not made by this tracker (start tracking again)")
    height, width = image.shape[:2]
    size_given = state.get("image_size", [])
    if not isinstance(size_given, list | tuple) or list(size_given) != [width, height]:
        raise TrackingError(f"the frame is {width}x{height} but tracking started on a "
                            f"{state.get('image_size')} frame")
    try:
        last = current or TrackedShape(str(state["type"]), [float(v) for v in state["points"]])
        scale = float(state["scale"])
        offset = [float(v) for v in state.get("offset", (0.0, 0.0))][:2]
        size = [float(v) for v in state.get("size", ())][:2]  # v1 states: the template's
    except (KeyError, ValueError, TypeError) as exc:
        raise TrackingError(f"the tracking state is incomplete: {exc}") from exc
    template = _template(state, min(max_pixels, width * height))
    th, tw = template.shape[:2]
    if not size and scale > 0:
        size = [tw / scale, th / scale]
    if not (0 < scale <= 1 and len(offset) == 2 and len(size) == 2 and min(size) > 0
            and all(np.isfinite([*offset, *size]))
            # the object fits in its own template (a forged size would blow the window up)
            and scale * size[0] <= tw + 1 and scale * size[1] <= th + 1):
        raise TrackingError("the tracking state is inconsistent (start tracking again)")
    if not all(np.isfinite(last.points)):
        raise TrackingError("the shape's points must be finite numbers")
    x1, y1, x2, y2 = shape_box(last)
    bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    gray = _gray(image)
    best: tuple[float, float, float, float, float] | None = None  # ranked, raw, x, y, factor
    for factor in SCALES:
        # window pixels per image pixel, so that the object appears at the template's size
        rx, ry = scale * size[0] / (bw * factor), scale * size[1] / (bh * factor)
        if not (0 < rx < 16 and 0 < ry < 16):
            continue
        pad_x, pad_y = max(bw, bh) + tw / rx, max(bw, bh) + th / ry
        sx1, sy1, sx2, sy2 = _pixel_box((x1 - pad_x, y1 - pad_y, x2 + pad_x, y2 + pad_y),
                                        width, height)
        out_w, out_h = round((sx2 - sx1) * rx), round((sy2 - sy1) * ry)
        if out_h < th or out_w < tw or out_w * out_h > 4 * width * height:
            continue  # too small to hold the template, or a window larger than it can be
        window = cv2.resize(gray[sy1:sy2, sx1:sx2], (out_w, out_h),
                            interpolation=cv2.INTER_AREA if rx < 1 else cv2.INTER_LINEAR)
        scores = _scores(window, template)
        # the object's top-left (image pixels) for each place, and its move from where an
        # unmoved object of this size would be (same centre)
        xs = sx1 + (np.arange(scores.shape[1]) + offset[0]) / rx
        ys = sy1 + (np.arange(scores.shape[0]) + offset[1]) / ry
        move = np.hypot(xs[None, :] - (x1 + x2 - bw * factor) / 2,
                        ys[:, None] - (y1 + y2 - bh * factor) / 2) / max(bw, bh)
        ranked = scores - MOVE_COST * move - SCALE_COST * abs(np.log(factor))
        my, mx = np.unravel_index(int(np.argmax(ranked)), ranked.shape)
        candidate = (float(ranked[my, mx]), float(scores[my, mx]), float(xs[mx]),
                     float(ys[my]), factor)
        if best is None or candidate[0] > best[0]:
            best = candidate
    if best is None:
        return None, state
    _, score, new_x1, new_y1, factor = best
    if score < MIN_SCORE:
        return None, {**state, "score": round(score, 4)}
    new_w, new_h = bw * factor, bh * factor
    new_x1 = float(np.clip(new_x1, 0, max(0.0, width - new_w)))
    new_y1 = float(np.clip(new_y1, 0, max(0.0, height - new_h)))
    result = placed(last, new_x1, new_y1, factor, width, height)
    return result, {**state, "type": result.type, "points": result.points,
                    "score": round(score, 4)}
