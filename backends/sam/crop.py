"""Clicks on huge images: encode the window around the prompt, not the whole image.

SAM sees its input at 1024 px: a 6000-px drone photo shrinks six times and a 20-px object
becomes 3 px. For an image larger than `CropPolicy.above` (long side), the click is answered
on a `side`-px window around the prompt (clamped to the image; a box prompt widens it), at
the window's own resolution, and the mask is placed back in full-image pixels. Windows snap
to a grid of `side / 4`, so clicks near each other share a window and its cached embedding.
A mask that runs into a window edge inside the image is answered again on a window twice as
large (`grow` times at most): a big object is not cut at the window's border.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from labelpilot.backends.interactive import MaskResult, PointPrompt, Prompt
from labelpilot.backends.shapes import BBox


@dataclass(frozen=True)
class CropPolicy:
    above: int = 2048  # px: images with a longer side than this get cropped clicks
    side: int = 1024  # px: the window around the prompt (SAM's own input size)
    margin: float = 0.25  # a box prompt's window: the box plus this share around it
    grow: int = 1  # times a mask running into the window's edge gets a window twice as large


@dataclass(frozen=True)
class Window:
    """A region of the image in pixels, x2/y2 exclusive."""

    x1: int
    y1: int
    x2: int
    y2: int

    def covers(self, width: int, height: int) -> bool:
        return self.x1 <= 0 and self.y1 <= 0 and self.x2 >= width and self.y2 >= height


def _extent(prompt: Prompt) -> tuple[float, float, float, float]:
    xs = [p.x for p in prompt.points]
    ys = [p.y for p in prompt.points]
    if prompt.box is not None:
        xs += [prompt.box.x1, prompt.box.x2]
        ys += [prompt.box.y1, prompt.box.y2]
    return min(xs), min(ys), max(xs), max(ys)


def _axis(low: float, high: float, side: int, size: int, step: int) -> tuple[int, int]:
    """A `side` span within 0..size holding low..high, its start snapped to `step` if it can."""
    if side >= size:
        return 0, size
    centre = (low + high) / 2
    start = int(round((centre - side / 2) / step) * step)
    start = min(max(start, 0), size - side)
    if start > low or start + side < high:  # the snapped span misses part: centre it
        start = min(max(int(centre - side / 2), 0), size - side)
    return start, start + side


def crop_window(prompt: Prompt, width: int, height: int,
                policy: CropPolicy = CropPolicy(), side: int | None = None) -> Window | None:
    """The window to answer `prompt` on; None when the image is small enough to encode whole."""
    if max(width, height) <= policy.above:
        return None
    x1, y1, x2, y2 = _extent(prompt)
    needed = max(x2 - x1, y2 - y1) * (1 + 2 * policy.margin)
    span = max(side or policy.side, int(np.ceil(needed)))
    step = max(policy.side // 4, 1)
    wx1, wx2 = _axis(x1, x2, span, width, step)
    wy1, wy2 = _axis(y1, y2, span, height, step)
    return Window(wx1, wy1, wx2, wy2)


def shift_prompt(prompt: Prompt, window: Window) -> Prompt:
    """`prompt` in the window's pixels (points stay inside it: the window holds them)."""
    dx, dy = window.x1, window.y1
    w, h = window.x2 - window.x1, window.y2 - window.y1
    points = tuple(PointPrompt(min(max(p.x - dx, 0.0), w - 1e-3),
                               min(max(p.y - dy, 0.0), h - 1e-3), p.positive)
                   for p in prompt.points)
    box = None
    if prompt.box is not None:
        b = prompt.box
        box = BBox(max(b.x1 - dx, 0.0), max(b.y1 - dy, 0.0), min(b.x2 - dx, float(w)),
                   min(b.y2 - dy, float(h)))
    return Prompt(points, box)


def place_mask(mask: np.ndarray, window: Window, width: int, height: int) -> np.ndarray:
    """A window's mask as a bool mask of the whole image."""
    full = np.zeros((height, width), bool)
    full[window.y1:window.y2, window.x1:window.x2] = mask
    return full


def _touches_inner_edge(mask: np.ndarray, window: Window, width: int, height: int) -> bool:
    return bool((window.x1 > 0 and mask[:, 0].any()) or (window.y1 > 0 and mask[0].any())
                or (window.x2 < width and mask[:, -1].any())
                or (window.y2 < height and mask[-1].any()))


Segment = Callable[[np.ndarray, Prompt], tuple[MaskResult, str]]


def segment_cropped(segment: Segment, image: np.ndarray, prompt: Prompt,
                    policy: CropPolicy = CropPolicy()) -> tuple[MaskResult, str] | None:
    """`segment` (image, prompt → mask, embedding source) on the window around `prompt`,
    the mask in full-image pixels; None when the image is small enough to encode whole."""
    height, width = image.shape[:2]
    x1, y1, x2, y2 = _extent(prompt)
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        return None  # the whole-image path refuses it, saying why
    side = policy.side
    window = crop_window(prompt, width, height, policy, side)
    if window is None:
        return None
    for attempt in range(policy.grow + 1):
        crop = np.ascontiguousarray(image[window.y1:window.y2, window.x1:window.x2])
        result, source = segment(crop, shift_prompt(prompt, window))
        if (attempt == policy.grow or window.covers(width, height)
                or not _touches_inner_edge(result.mask, window, width, height)):
            break
        side *= 2  # the object runs out of the window: a larger one
        window = crop_window(prompt, width, height, policy, side) or Window(0, 0, width, height)
    return MaskResult(place_mask(result.mask, window, width, height), result.score), source
