"""Video boxes as keyframes: how an editor draws them, and how to thin a tracker's dense boxes.

Label Studio's video editor (1.23) and CVAT draw a box track from its keyframes, sorted by
frame: between an enabled keyframe and the next one, each corner coordinate is linear in the
frame number; a keyframe with `enabled=False` is drawn on its own frame and ends the box after
it; an enabled last keyframe keeps its box to the video's last frame; nothing is drawn before
the first keyframe. `thin_track` picks few keyframes whose drawing reproduces a tracked object
within an IoU bound, so that annotators get a handful of editable keyframes, not one per frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np

from labelpilot.backends.shapes import BBox
from labelpilot.backends.tracks import Keyframe, TrackBox


def box_iou(a: BBox, b: BBox) -> float:
    """Intersection over union; two identical empty boxes count as 1, other empty unions 0."""
    iw = min(a.x2, b.x2) - max(a.x1, b.x1)
    ih = min(a.y2, b.y2) - max(a.y1, b.y1)
    inter = iw * ih if iw > 0 and ih > 0 else 0.0
    union = _area(a.x1, a.y1, a.x2, a.y2) + _area(b.x1, b.y1, b.x2, b.y2) - inter
    if union <= 0:
        return 1.0 if a == b else 0.0
    return inter / union


def _area(x1: float, y1: float, x2: float, y2: float) -> float:
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def _lerp(a: BBox, b: BBox, t: float) -> BBox:
    return BBox(
        a.x1 + (b.x1 - a.x1) * t,
        a.y1 + (b.y1 - a.y1) * t,
        a.x2 + (b.x2 - a.x2) * t,
        a.y2 + (b.y2 - a.y2) * t,
    )


def interpolate(keyframes: Sequence[Keyframe], last_frame: int) -> dict[int, BBox]:
    """Every frame (1..last_frame) on which the editor draws the box, and the box drawn there.

    Keyframes after `last_frame` are never reached by the player, so they draw nothing, but one
    still steers the interpolation of the frames before it (as in the editor)."""
    if last_frame < 1:
        raise ValueError(f"last_frame must be >= 1, got {last_frame}")
    ordered = sorted(keyframes, key=lambda k: k.frame)
    for prev, nxt in pairwise(ordered):
        if prev.frame == nxt.frame:
            raise ValueError(f"two keyframes on frame {prev.frame}")
    if ordered and ordered[0].frame < 1:
        raise ValueError(f"keyframe frame {ordered[0].frame} is before frame 1")
    drawn: dict[int, BBox] = {}
    for i, key in enumerate(ordered):
        if key.frame > last_frame:
            break
        drawn[key.frame] = key.box
        if not key.enabled:
            continue
        if i + 1 == len(ordered):
            for frame in range(key.frame + 1, last_frame + 1):
                drawn[frame] = key.box
            continue
        nxt = ordered[i + 1]
        span = nxt.frame - key.frame
        for frame in range(key.frame + 1, min(nxt.frame, last_frame + 1)):
            drawn[frame] = _lerp(key.box, nxt.box, (frame - key.frame) / span)
    return drawn


def thin_track(
    boxes: Sequence[TrackBox], *, min_iou: float = 0.9, last_frame: int
) -> list[Keyframe]:
    """Few keyframes whose drawing (`interpolate`) matches every tracked box with IoU >= min_iou
    and draws nothing on frames where the tracker did not see the object.

    Each run of consecutive frames starts with an enabled keyframe and ends with a disabled one
    (enabled when the run reaches `last_frame`, which keeps it drawn there); a one-frame run is
    one disabled keyframe. Within a run the keyframes are chosen greedily: from a keyframe, the
    next one goes as far as the interpolation stays within the bound on every frame between.
    The far end is found by doubling the span and then bisecting, so a keyframe costs
    O(log span) vectorised checks of O(span) each: the whole track is O(n log n)."""
    if not 0 < min_iou <= 1:
        raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
    if not boxes:
        return []
    frames = np.array([b.frame for b in boxes], dtype=np.int64)
    if frames[0] < 1 or frames[-1] > last_frame:
        raise ValueError(f"track frames {frames[0]}..{frames[-1]} are outside 1..{last_frame}")
    steps = np.diff(frames)
    if (steps <= 0).any():
        raise ValueError("track frames must be strictly increasing")
    coords = np.array([(b.box.x1, b.box.y1, b.box.x2, b.box.y2) for b in boxes], dtype=float)
    breaks = np.flatnonzero(steps > 1) + 1
    starts = [0, *breaks.tolist()]
    ends = [*(breaks - 1).tolist(), len(boxes) - 1]
    keyframes: list[Keyframe] = []
    for start, end in zip(starts, ends, strict=True):
        picked = _thin_run(frames, coords, start, end, min_iou)
        for index in picked[:-1]:
            keyframes.append(Keyframe(int(frames[index]), boxes[index].box, True))
        last = picked[-1]
        keep_on = bool(start != end and frames[last] == last_frame)
        keyframes.append(Keyframe(int(frames[last]), boxes[last].box, keep_on))
    return keyframes


def _thin_run(
    frames: np.ndarray, coords: np.ndarray, start: int, end: int, min_iou: float
) -> list[int]:
    """Indices of the keyframes of one run of consecutive frames (both ends included)."""
    picked = [start]
    i = start
    while i < end:
        ok, step = i + 1, 1  # a span of one frame has nothing in between: always fine
        bad = None
        while ok < end:
            step *= 2
            probe = min(i + step, end)
            if _span_ok(frames, coords, i, probe, min_iou):
                ok = probe
            else:
                bad = probe
                break
        if bad is not None:
            while bad - ok > 1:
                mid = (ok + bad) // 2
                if _span_ok(frames, coords, i, mid, min_iou):
                    ok = mid
                else:
                    bad = mid
        picked.append(ok)
        i = ok
    return picked


def _span_ok(frames: np.ndarray, coords: np.ndarray, i: int, j: int, min_iou: float) -> bool:
    """Whether interpolating from keyframe i to keyframe j keeps every frame between within
    the bound (the same arithmetic as `interpolate`, so the two agree to the last bit)."""
    if j - i < 2:
        return True
    a, b = coords[i], coords[j]
    t = (frames[i + 1 : j] - frames[i]) / (frames[j] - frames[i])
    drawn = a + (b - a) * t[:, None]
    return bool((_iou_rows(drawn, coords[i + 1 : j]) >= min_iou).all())


def _iou_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise IoU of two (n, 4) arrays of x1, y1, x2, y2, with `box_iou`'s empty-box rule."""
    iw = np.minimum(p[:, 2], q[:, 2]) - np.maximum(p[:, 0], q[:, 0])
    ih = np.minimum(p[:, 3], q[:, 3]) - np.maximum(p[:, 1], q[:, 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_p = np.clip(p[:, 2] - p[:, 0], 0, None) * np.clip(p[:, 3] - p[:, 1], 0, None)
    area_q = np.clip(q[:, 2] - q[:, 0], 0, None) * np.clip(q[:, 3] - q[:, 1], 0, None)
    union = area_p + area_q - inter
    same = (p == q).all(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), same.astype(float))
