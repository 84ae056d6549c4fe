"""A CPU tracker whose whole state is JSON: template matching around a predicted position.

CVAT round-trips tracker states through the browser (signed, as plain JSON to us), so the
facade keeps nothing between calls: the state carries the object's appearance (a small
one-channel template of the object *with some context around it*, PNG + base64, a few KB), the
shape as last placed, the image size, and since v3 a motion and confidence memory: the velocity
from the last confident steps, how many frames the object has been lost, and a reference match
score (a running mean of confident scores).

The template's channel is the grey level, or (v3) the colour direction that best separates the
object from its context when that beats the grey level (`_colour_projection`: an object of a
luminance close to its background's is still found); both are smoothed before matching.

Each step predicts the box with a constant-velocity model, searches a window around the
prediction at the template's scale with normalised cross-correlation (TM_CCOEFF_NORMED), then
refines the size (`FINE_SCALES`, 0.83-1.21 in steps of 3-5 %) in a small window around that
match (coarse to fine). A match is confident when its score reaches `KEEP_SCORE` times the
reference score (and `MIN_SCORE`); only then does the shape move and scale. Only a clearly
good match (`GOOD_SCORE` times the reference) updates the velocity and lets the template learn
(slowly, `LEARN_RATE`): an object sliding behind an occluder neither slows the motion model
down nor teaches the template the occluder, and gradual growth or shrinkage is followed
without drift. A frame without a confident match (the object is hidden) counts as lost: no
shape (CVAT shows nothing on that frame), the shape coasts at the last good velocity, the
search window around it widens with every lost frame, and a match reaching `REACQUIRE_SCORE`
times the reference picks the object up again; after `MAX_LOST` lost frames (2 s at 12 fps)
the tracker gives up (no shape, no search). An object leaving the image is followed while at
least half of it is inside (the image is extended by its mean colour for the search), then
lost; once its predicted box is wholly outside, it is given up at once.

A template with no contrast at all (object and surroundings one colour) makes TM_CCOEFF_NORMED
1.0 everywhere, so then the cue is plain intensity difference instead; ties always go to the
smallest move from the prediction and the smallest scale change, never to the window's corner.

A state's template is untrusted input (CVAT only signs what the browser sends back): it is
refused from its header when it has more pixels than allowed, before decoding. States of kinds
v1 (no context, one scale) and v2 (grey template, no motion memory) are still tracked.
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
STATE_KIND = "labelpilot-template-v3"
# v1: no context, one scale; v2: grey template, no motion memory. Both still tracked.
_OLD_KINDS = ("labelpilot-template-v1", "labelpilot-template-v2")
TEMPLATE_SIDE = 64  # longest side of the stored template (object + context), pixels
CONTEXT = 0.25  # context kept around the object on each side, as a share of its longer side
FINE_SCALES = (1 / 1.21, 0.87, 0.91, 0.955, 1.045, 1.1, 1.15, 1.21)  # refined around a match
FINE_RADIUS = 0.12  # the refining window's reach around the coarse match, in object sides
SEARCH = 1.0  # the coarse window's reach around the prediction, in object sides ...
WIDEN = 0.5  # ... plus this much per lost frame ...
MAX_SEARCH = 3.0  # ... up to this
MIN_SCORE = 0.3
KEEP_SCORE = 0.8  # a confident match scores at least this share of the reference score
REACQUIRE_SCORE = 0.8  # the share a lost object's match needs to be picked up again
GOOD_SCORE = 0.93  # the share above which the velocity and the template learn from a match
LEARN_RATE = 0.1  # how much of the new appearance a confident frame blends in
REF_RATE = 0.2  # how fast the reference score follows confident scores
VELOCITY_RATE = 0.5  # how fast the velocity follows confident moves
MAX_LOST = 24  # lost frames after which the tracker gives up
MIN_VISIBLE = 0.5  # share of the predicted box inside the image to count as still there
MIN_CONTRAST = 2.0  # grey-level standard deviation below which a template is flat
BLUR = 1.0  # Gaussian sigma (template pixels) smoothing template and window before matching
MIN_COLOUR_GAP = 20.0  # object-context colour distance needed for a colour channel ...
COLOUR_OVER_GREY = 2.0  # ... which must be this many times the grey-level difference
COLOUR_CONTRAST = 100.0  # the colour channel's object-context difference, grey levels
_GREY = (0.114, 0.587, 0.299)  # BGR weights of cv2's grey conversion
# tie-breaks, subtracted from a match score: per object size moved from the prediction, per
# log scale change
MOVE_COST = 0.02
SCALE_COST = 0.1


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


def _channel(image: np.ndarray, colour: Sequence[float] | None) -> np.ndarray:
    """The one channel templates are matched in: the grey level, or w . BGR + bias."""
    if colour is None or image.ndim == 2:
        return _gray(image)
    matrix = np.array([colour], dtype=np.float32)
    return cv2.transform(np.ascontiguousarray(image), matrix).reshape(image.shape[:2])


def _colour_projection(crop: np.ndarray, box: tuple[int, int, int, int]
                       ) -> list[float] | None:
    """Weights and bias of the colour direction from the context's mean colour to the object's
    (in `crop`, the object at `box`), when it separates them clearly better than the grey
    level does; None to match in grey."""
    if crop.ndim != 3 or crop.shape[2] != 3:
        return None
    inside = np.zeros(crop.shape[:2], bool)
    inside[box[1]:box[3], box[0]:box[2]] = True
    if inside.all() or not inside.any():
        return None
    pixels = crop.reshape(-1, 3).astype(np.float64)
    flat = inside.ravel()
    outside_mean = pixels[~flat].mean(axis=0)
    gap_vector = pixels[flat].mean(axis=0) - outside_mean
    gap = float(np.linalg.norm(gap_vector))
    if gap < MIN_COLOUR_GAP or gap < COLOUR_OVER_GREY * abs(float(np.dot(_GREY, gap_vector))):
        return None
    weights = gap_vector / gap * min(1.0, COLOUR_CONTRAST / gap)
    contrast = float(np.dot(weights, gap_vector))
    bias = 128.0 - float(np.dot(weights, outside_mean)) - contrast / 2
    return [round(float(v), 6) for v in (*weights, bias)]


def _encode(patch: np.ndarray) -> str:
    ok, png = cv2.imencode(".png", patch)
    if not ok:
        raise TrackingError("could not encode the template")
    return base64.b64encode(png.tobytes()).decode()


def init_state(image: np.ndarray, shape: TrackedShape) -> dict[str, Any]:
    """The state for tracking `shape` from this image on."""
    height, width = image.shape[:2]
    x1, y1, x2, y2 = _pixel_box(shape_box(shape), width, height)
    pad = round(CONTEXT * max(x2 - x1, y2 - y1))
    tx1, ty1 = max(0, x1 - pad), max(0, y1 - pad)
    tx2, ty2 = min(width, x2 + pad), min(height, y2 + pad)
    scale = min(1.0, TEMPLATE_SIDE / max(tx2 - tx1, ty2 - ty1))
    crop = image[ty1:ty2, tx1:tx2]
    colour = _colour_projection(crop, (x1 - tx1, y1 - ty1, x2 - tx1, y2 - ty1))
    patch = _channel(crop, colour)
    if scale < 1.0:
        patch = cv2.resize(patch, (max(2, round((tx2 - tx1) * scale)),
                                   max(2, round((ty2 - ty1) * scale))),
                           interpolation=cv2.INTER_AREA)
    state: dict[str, Any] = {
        "kind": STATE_KIND, "type": shape.type, "points": list(shape.points),
        "image_size": [width, height], "scale": scale,
        # where the object's box lies in the template (template pixels), and its size
        # then (image pixels): what the template's scale is measured against
        "offset": [(x1 - tx1) * scale, (y1 - ty1) * scale], "size": [x2 - x1, y2 - y1],
        "template": _encode(patch), "velocity": [0.0, 0.0], "lost": 0}
    if colour is not None:
        state["colour"] = colour
    return state


def _template(state: dict[str, Any], max_pixels: int) -> np.ndarray:
    """The state's template; one over `max_pixels` is refused from its header."""
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


@dataclass(frozen=True)
class _Memory:
    """What a state says beyond the template: its geometry, channel and motion memory."""

    scale: float
    offset: tuple[float, float]  # the object's top-left in the template, template pixels
    size: tuple[float, float]  # the object's size the template was cut at, image pixels
    colour: list[float] | None
    velocity: tuple[float, float]
    lost: int
    ref: float | None


def _finite(values: Any, count: int) -> list[float]:
    numbers = [float(v) for v in values]
    if len(numbers) != count or not all(np.isfinite(numbers)):
        raise ValueError(f"expected {count} finite numbers")
    return numbers


def _memory(state: dict[str, Any], template: np.ndarray, width: int, height: int) -> _Memory:
    th, tw = template.shape[:2]
    try:
        scale = float(state["scale"])
        offset = _finite(state.get("offset", (0.0, 0.0)), 2)
        size = [float(v) for v in state.get("size", ())][:2]  # v1 states: the template's
        if not size and scale > 0:
            size = [tw / scale, th / scale]
        size = _finite(size, 2)
        colour = _finite(state["colour"], 4) if state.get("colour") is not None else None
        vx, vy = _finite(state.get("velocity", (0.0, 0.0)), 2)
        lost = int(state.get("lost", 0))
        ref = float(state["ref"]) if state.get("ref") is not None else None
    except (KeyError, ValueError, TypeError) as exc:
        raise TrackingError(f"the tracking state is incomplete: {exc}") from exc
    if not (0 < scale <= 1 and min(size) > 0
            # the object fits in its own template (a forged size would blow the window up)
            and scale * size[0] <= tw + 1 and scale * size[1] <= th + 1
            and (colour is None or (max(map(abs, colour[:3])) <= 4 and abs(colour[3]) <= 4096))
            and max(abs(vx), abs(vy)) <= max(width, height) and lost >= 0
            and (ref is None or 0 <= ref <= 1)):
        raise TrackingError("the tracking state is inconsistent (start tracking again)")
    return _Memory(scale, (offset[0], offset[1]), (size[0], size[1]), colour, (vx, vy),
                   min(lost, MAX_LOST + 1), ref)


@dataclass(frozen=True)
class _Match:
    ranked: float
    score: float
    x: float  # the object's top-left, image pixels (may lie outside the image)
    y: float
    factor: float


def _search(image: np.ndarray, template: np.ndarray, memory: _Memory,
            box: tuple[float, float, float, float], factor: float, reach: float,
            predicted: tuple[float, float]) -> _Match | None:
    """The best place for the object, `factor` times the size of `box` (x, y, w, h) and
    centred within `reach` image pixels of the box's centre; ranked by score less the move
    from the `predicted` centre and the scale change. The image is extended by its mean
    beyond its edges, so an object leaving it is followed while enough of it shows."""
    height, width = image.shape[:2]
    th, tw = template.shape[:2]
    bx, by, bw, bh = box
    ow, oh = bw * factor, bh * factor
    rx, ry = memory.scale * memory.size[0] / ow, memory.scale * memory.size[1] / oh
    if not (0 < rx < 16 and 0 < ry < 16):
        return None
    ox, oy = bx + (bw - ow) / 2 - memory.offset[0] / rx, by + (bh - oh) / 2 - memory.offset[1] / ry
    wx1, wy1 = ox - reach, oy - reach  # the window: every template place within reach
    wx2, wy2 = ox + reach + tw / rx, oy + reach + th / ry
    sx1, sy1 = max(0, int(np.floor(wx1))), max(0, int(np.floor(wy1)))
    sx2, sy2 = min(width, int(np.ceil(wx2))), min(height, int(np.ceil(wy2)))
    if sx2 - sx1 < 2 or sy2 - sy1 < 2:
        return None
    out_w, out_h = round((sx2 - sx1) * rx), round((sy2 - sy1) * ry)
    left, top = max(0, round((sx1 - wx1) * rx)), max(0, round((sy1 - wy1) * ry))
    right, bottom = max(0, round((wx2 - sx2) * rx)), max(0, round((wy2 - sy2) * ry))
    if (out_w < 2 or out_h < 2 or out_h + top + bottom < th or out_w + left + right < tw
            or (out_w + left + right) * (out_h + top + bottom) > 4 * width * height):
        return None
    crop = _channel(image[sy1:sy2, sx1:sx2], memory.colour)
    window = cv2.resize(crop, (out_w, out_h),
                        interpolation=cv2.INTER_AREA if rx < 1 else cv2.INTER_LINEAR)
    if left or top or right or bottom:
        window = cv2.copyMakeBorder(window, top, bottom, left, right, cv2.BORDER_CONSTANT,
                                    value=float(window.mean()))
    window = cv2.GaussianBlur(window, (0, 0), BLUR)
    scores = _scores(window, template)
    xs = sx1 + (np.arange(scores.shape[1]) - left + memory.offset[0]) / rx
    ys = sy1 + (np.arange(scores.shape[0]) - top + memory.offset[1]) / ry
    move = np.hypot(xs[None, :] + ow / 2 - predicted[0],
                    ys[:, None] + oh / 2 - predicted[1]) / max(bw, bh)
    ranked = scores - MOVE_COST * move - SCALE_COST * abs(np.log(factor))
    inside_x = np.clip(xs + ow, 0, width) - np.clip(xs, 0, width)
    inside_y = np.clip(ys + oh, 0, height) - np.clip(ys, 0, height)
    shown = inside_y[:, None] * inside_x[None, :] >= MIN_VISIBLE * ow * oh
    ranked = np.where(shown, ranked, -np.inf)
    my, mx = np.unravel_index(int(np.argmax(ranked)), ranked.shape)
    if not np.isfinite(ranked[my, mx]):
        return None
    return _Match(float(ranked[my, mx]), float(scores[my, mx]), float(xs[mx]), float(ys[my]),
                  factor)


def _learned(image: np.ndarray, template: np.ndarray, memory: _Memory,
             box: tuple[float, float, float, float]) -> np.ndarray | None:
    """The template blended with the object's appearance at `box` (x, y, w, h), or None when
    the template's footprint there is not wholly inside the image."""
    height, width = image.shape[:2]
    th, tw = template.shape[:2]
    sx, sy = box[2] / (memory.scale * memory.size[0]), box[3] / (memory.scale * memory.size[1])
    fx1, fy1 = box[0] - memory.offset[0] * sx, box[1] - memory.offset[1] * sy
    fx2, fy2 = fx1 + tw * sx, fy1 + th * sy
    if fx1 < 0 or fy1 < 0 or fx2 > width or fy2 > height:
        return None
    cx1, cy1 = int(fx1), int(fy1)
    cx2, cy2 = min(width, int(np.ceil(fx2)) + 1), min(height, int(np.ceil(fy2)) + 1)
    crop = _channel(image[cy1:cy2, cx1:cx2], memory.colour)
    if max(sx, sy) > 1.5:  # shrinking: smooth first, as INTER_AREA would
        crop = cv2.GaussianBlur(crop, (0, 0), 0.4 * sx, sigmaY=0.4 * sy)
    to_crop = np.array([[sx, 0, fx1 - cx1], [0, sy, fy1 - cy1]], dtype=np.float64)
    patch = cv2.warpAffine(crop, to_crop, (tw, th), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REPLICATE)
    return cv2.addWeighted(template, 1 - LEARN_RATE, patch, LEARN_RATE, 0)


def _shown(shape: TrackedShape, width: int, height: int) -> TrackedShape:
    """The shape as CVAT gets it: inside the image (clipped; a mask is moved in whole)."""
    x1, y1, x2, y2 = shape_box(shape)
    if x1 >= 0 and y1 >= 0 and x2 <= width and y2 <= height:
        return shape
    if shape.type == "mask":
        return moved(shape, max(0.0, -x1) - max(0.0, x2 - width),
                     max(0.0, -y1) - max(0.0, y2 - height))
    return TrackedShape(shape.type, [float(np.clip(v, 0, width if i % 2 == 0 else height))
                                     for i, v in enumerate(shape.points)])


def _visible(x: float, y: float, w: float, h: float, width: int, height: int) -> float:
    inside = ((min(x + w, width) - max(x, 0.0)) * (min(y + h, height) - max(y, 0.0))
              if x < width and y < height and x + w > 0 and y + h > 0 else 0.0)
    return inside / max(w * h, 1e-9)


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
    except (KeyError, ValueError, TypeError) as exc:
        raise TrackingError(f"the tracking state is incomplete: {exc}") from exc
    template = _template(state, min(max_pixels, width * height))
    memory = _memory(state, template, width, height)
    if not all(np.isfinite(last.points)):
        raise TrackingError("the shape's points must be finite numbers")
    x1, y1, x2, y2 = shape_box(last)
    bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    base = {**state, "kind": STATE_KIND, "scale": memory.scale, "offset": list(memory.offset),
            "size": list(memory.size), "velocity": list(memory.velocity)}
    if memory.lost > MAX_LOST:  # given up: nothing to search for
        return None, {**base, "lost": memory.lost}
    vx, vy = memory.velocity
    predicted = (x1 + vx + bw / 2, y1 + vy + bh / 2)  # the centre, constant velocity
    side = max(bw, bh)
    smooth = cv2.GaussianBlur(template, (0, 0), BLUR)
    reach = side * min(MAX_SEARCH, SEARCH + WIDEN * memory.lost)
    box = (x1 + vx, y1 + vy, bw, bh)
    best = _search(image, smooth, memory, box, 1.0, reach, predicted)
    if best is not None and memory.lost == 0:  # coarse to fine: the size, near the match
        found = (best.x, best.y, bw, bh)
        for factor in FINE_SCALES:
            fine = _search(image, smooth, memory, found, factor, FINE_RADIUS * side, predicted)
            if fine is not None and fine.ranked > best.ranked:
                best = fine
    ref = memory.ref
    needed = REACQUIRE_SCORE if memory.lost else KEEP_SCORE
    if best is None or best.score < MIN_SCORE or (ref is not None and best.score < needed * ref):
        return _coast(last, memory, base, best, width, height)
    new_w, new_h = bw * best.factor, bh * best.factor
    result = placed(last, best.x, best.y, best.factor, width, height) \
        if last.type != "mask" else placed(
            last, float(np.clip(best.x, 0, max(0.0, width - new_w))),
            float(np.clip(best.y, 0, max(0.0, height - new_h))), best.factor, width, height)
    rx1, ry1, rx2, ry2 = shape_box(result)
    # the velocity: the move since the last confident frame, per frame
    anchor = (x1 + bw / 2 - vx * memory.lost, y1 + bh / 2 - vy * memory.lost)
    steps = memory.lost + 1
    good = ref is None or best.score >= GOOD_SCORE * ref  # not sliding behind something
    rate = VELOCITY_RATE if good else 0.0
    velocity = [(1 - rate) * v + rate * ((c - a) / steps)
                for v, c, a in zip(memory.velocity, ((rx1 + rx2) / 2, (ry1 + ry2) / 2), anchor,
                                   strict=True)]
    new_state = {**base, "type": result.type, "points": result.points,
                 "score": round(best.score, 4),
                 "velocity": [round(v, 3) for v in velocity], "lost": 0,
                 "ref": round(best.score if ref is None
                              else (1 - REF_RATE) * ref + REF_RATE * best.score, 4)}
    if memory.lost == 0 and ref is not None and good:
        learned = _learned(image, template, memory, (rx1, ry1, rx2 - rx1, ry2 - ry1))
        if learned is not None:
            new_state["template"] = _encode(learned)
    return _shown(result, width, height), new_state


def _coast(last: TrackedShape, memory: _Memory, base: dict[str, Any], best: _Match | None,
           width: int, height: int) -> tuple[TrackedShape | None, dict[str, Any]]:
    """No confident match: no shape (CVAT shows nothing on this frame); the predicted shape
    moves on at the last velocity, for the next search; gone once wholly outside the image."""
    lost = memory.lost + 1
    ahead = moved(last, *memory.velocity)
    x1, y1, x2, y2 = shape_box(ahead)
    visible = _visible(x1, y1, x2 - x1, y2 - y1, width, height)
    if visible <= 0:
        lost = MAX_LOST + 1
    return None, {**base, "points": ahead.points, "lost": lost,
                  "score": round(best.score, 4) if best is not None else 0.0}
