"""Keyframe propagation: an annotator drew a few keyframes of one object; fill the frames
between and after them by tracking, and land exactly on the annotator's boxes at their frames.

Evidence comes first from the tracker's tracks over the same clip (`tracking.track_video`,
class-agnostic): between two anchors a < b, the track that matches the anchor at a is followed
with the annotator's correction (anchor - tracked box); when the same track reaches b, the
correction is interpolated from a's to b's, so the result equals both anchors exactly. When
the tracks differ at a and b (an ID switch), the forward estimate from a and the backward one
from b are blended by distance; frames with no estimate are interpolated linearly between the
nearest estimated frames, as the editor would between the anchors (so with no evidence the
result is the editor's own interpolation). An anchor that no track matches (a class the model
does not know, or no tracks at all) is followed by template matching on the pictures instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import cv2
import numpy as np

from labelpilot.backends.keyframes import box_iou, thin_track
from labelpilot.backends.shapes import BBox
from labelpilot.backends.tracks import Keyframe, Track, TrackBox
from labelpilot.backends.video import VideoFrame

MATCH_IOU = 0.5  # a track box this close to an anchor is the annotator's object
# template matching has lost the object when the normalised correlation falls below
# MIN_SCORE, or below KEEP_SCORE times its best so far (a slow slide behind an occluder)
MIN_SCORE = 0.3
KEEP_SCORE = 0.75
CONTEXT = 0.15  # the template's margin around the box, in box sides
MIN_VISIBLE = 0.5  # share of the box inside the picture below which the object has left it
FrameSource = Iterable[VideoFrame] | Callable[[int], np.ndarray]
_Boxes = dict[int, np.ndarray]  # frame -> x1, y1, x2, y2


@dataclass(frozen=True)
class Propagated:
    """Dense boxes on every frame the object is drawn, the keyframes that draw them (every
    anchor is a keyframe with the anchor's box), and the last frame forward tracking followed
    the object to before losing it (None when it reached the end, or was not asked for)."""

    boxes: dict[int, BBox]
    keyframes: list[Keyframe]
    lost_after: int | None


def propagate(anchors: Mapping[int, BBox], frames: FrameSource, last_frame: int, *,
              tracks: Sequence[Track] | None = None, min_iou: float = 0.85,
              forward: bool = True, backward: bool = False) -> Propagated:
    """Fill the frames between the anchors (frame -> box), after the last one (`forward`, until
    the object is lost) and before the first (`backward`).

    `frames` is only read where some anchor matches no track: an iterable of VideoFrame (the
    needed pictures are kept in memory) or a callable frame number -> BGR picture."""
    points = _check(anchors, last_frame)
    keys = sorted(points)
    source = _Pictures(frames)
    links = {f: _match(tracks or (), f, points[f]) for f in keys}
    found: _Boxes = dict(points)
    for a, b in pairwise(keys):
        found.update(_between(a, b, points, links, source))
    lost_after: int | None = None
    if forward:
        after = _beyond(keys[-1], points[keys[-1]], links[keys[-1]], source, last_frame, 1)
        found.update(after)
        end = max(after, default=keys[-1])
        lost_after = end if end < last_frame else None
    if backward:
        found.update(_beyond(keys[0], points[keys[0]], links[keys[0]], source, last_frame, -1))
    boxes = {f: _bbox(found[f]) for f in sorted(found)}
    for f in keys:
        boxes[f] = anchors[f]  # exactly the annotator's box, not a copy through floats
    keep_on = not forward or lost_after is None
    return Propagated(boxes, _keyframes(boxes, anchors, min_iou, last_frame, keep_on),
                      lost_after)


def _check(anchors: Mapping[int, BBox], last_frame: int) -> dict[int, np.ndarray]:
    if last_frame < 1:
        raise ValueError(f"last_frame must be >= 1, got {last_frame}")
    if not anchors:
        raise ValueError("propagation needs at least one keyframe (anchor) box")
    points: dict[int, np.ndarray] = {}
    for frame, box in anchors.items():
        if not 1 <= frame <= last_frame:
            raise ValueError(f"anchor frame {frame} is outside 1..{last_frame}")
        coords = _array(box)
        if not np.isfinite(coords).all() or box.x2 <= box.x1 or box.y2 <= box.y1:
            raise ValueError(f"anchor box on frame {frame} is empty or not finite: {box}")
        points[frame] = coords
    return points


# --- evidence from the tracker's tracks ------------------------------------------------------


@dataclass(frozen=True)
class _Link:
    """A track matched to an anchor: its boxes by frame (gaps filled linearly), and the
    annotator's correction there (anchor - tracked box)."""

    track_id: int
    boxes: _Boxes
    correction: np.ndarray


def _match(tracks: Sequence[Track], frame: int, anchor: np.ndarray) -> _Link | None:
    best: tuple[float, Track, TrackBox] | None = None
    box = _bbox(anchor)
    for track in tracks:
        if not track.boxes or not track.first_frame <= frame <= track.last_frame:
            continue
        seen = next((b for b in track.boxes if b.frame == frame), None)
        if seen is None:
            continue
        iou = box_iou(seen.box, box)
        if iou >= MATCH_IOU and (best is None or iou > best[0]):
            best = (iou, track, seen)
    if best is None:
        return None
    _, track, seen = best
    return _Link(track.track_id, _dense(track), anchor - _array(seen.box))


def _dense(track: Track) -> _Boxes:
    """The track's boxes on every frame from its first to its last, gaps filled linearly."""
    out: _Boxes = {}
    for p, q in pairwise(track.boxes):
        out[p.frame] = _array(p.box)
        a, b = _array(p.box), _array(q.box)
        for f in range(p.frame + 1, q.frame):
            out[f] = a + (b - a) * (f - p.frame) / (q.frame - p.frame)
    out[track.boxes[-1].frame] = _array(track.boxes[-1].box)
    return out


def _between(a: int, b: int, points: dict[int, np.ndarray], links: dict[int, _Link | None],
             source: _Pictures) -> _Boxes:
    """Boxes on the frames strictly between anchors a and b."""
    if b - a < 2:
        return {}
    la, lb = links[a], links[b]
    if la is not None and b in la.boxes and (lb is None or lb.track_id == la.track_id):
        # one track from a to b: its motion, with the correction interpolated between them
        end = lb.correction if lb is not None else points[b] - la.boxes[b]
        return {f: la.boxes[f] + la.correction + (end - la.correction) * (f - a) / (b - a)
                for f in range(a + 1, b)}
    ahead = (_shifted(la, range(a + 1, b)) if la is not None
             else source.follow(a, points[a], range(a + 1, b)))
    behind = (_shifted(lb, range(b - 1, a, -1)) if lb is not None
              else source.follow(b, points[b], range(b - 1, a, -1)))
    return _blend(a, b, points, ahead, behind)


def _shifted(link: _Link, frames: range) -> _Boxes:
    """The linked track with the anchor's correction, from the anchor on until it ends."""
    out: _Boxes = {}
    for f in frames:
        if f not in link.boxes:
            break
        out[f] = link.boxes[f] + link.correction
    return out


def _blend(a: int, b: int, points: dict[int, np.ndarray], ahead: _Boxes,
           behind: _Boxes) -> _Boxes:
    """Forward and backward estimates weighted by closeness to their anchor; frames with
    neither are interpolated linearly between the nearest frames that have one."""
    known: _Boxes = {a: points[a], b: points[b]}
    for f in range(a + 1, b):
        if f in ahead and f in behind:
            known[f] = (ahead[f] * (b - f) + behind[f] * (f - a)) / (b - a)
        elif f in ahead or f in behind:
            known[f] = ahead[f] if f in ahead else behind[f]
    frames = sorted(known)
    out = {f: known[f] for f in frames if a < f < b}
    for p, q in pairwise(frames):
        for f in range(p + 1, q):
            out[f] = known[p] + (known[q] - known[p]) * (f - p) / (q - p)
    return out


def _beyond(frame: int, anchor: np.ndarray, link: _Link | None, source: _Pictures,
            last_frame: int, step: int) -> _Boxes:
    """From an end anchor outwards (step +1 forward, -1 backward) until the object is lost."""
    frames = range(frame + step, last_frame + 1 if step > 0 else 0, step)
    if link is not None:
        return _shifted(link, frames)
    return source.follow(frame, anchor, frames)


# --- appearance tracking (no track for the anchor) -------------------------------------------


class _Pictures:
    """Pictures by frame number from a callable, or from an iterable read once on first need
    (the frames needed later are kept: `follow` asks for ranges in both directions)."""

    def __init__(self, frames: FrameSource) -> None:
        self._get = frames if callable(frames) else None
        self._iter = None if callable(frames) else iter(frames)
        self._kept: dict[int, np.ndarray] = {}

    def picture(self, number: int) -> np.ndarray | None:
        if self._get is not None:
            return np.asarray(self._get(number))
        if number not in self._kept and self._iter is not None:
            for frame in self._iter:
                self._kept[frame.number] = frame.image
                if frame.number >= number:
                    break
            else:
                self._iter = None
        return self._kept.get(number)

    def follow(self, start: int, box: np.ndarray, frames: range) -> _Boxes:
        """Template matching from the anchor's picture over `frames`, until lost."""
        first = self.picture(start)
        if first is None or not len(frames):
            return {}
        tracker = _TemplateTracker(first, box)
        out: _Boxes = {}
        for f in frames:
            image = self.picture(f)
            if image is None:
                break
            found = tracker.step(image)
            if found is None:
                break
            out[f] = found
        return out


class _TemplateTracker:
    """The anchor's patch, with a margin of its surroundings (a plain filled shape has no
    texture inside its box), found again in a window around the last position plus the last
    motion. The picture is padded so the box can leave the frame; the box keeps its size."""

    def __init__(self, image: np.ndarray, box: np.ndarray) -> None:
        height, width = image.shape[:2]
        self._size = np.array([width, height, width, height], dtype=float)
        w, h = box[2] - box[0], box[3] - box[1]
        margin = max(2, round(CONTEXT * max(w, h)))
        self._pad = int(np.ceil(max(w, h))) + margin + 2
        self._box = box.astype(float)
        self._velocity = np.zeros(2)
        self._best = 0.0  # the best match so far: how well this object matches when seen
        # the margin stays inside the picture: padding in the template would match the edge
        x0, y0 = round(box[0]), round(box[1])
        x1, y1 = x0 + max(4, round(w)), y0 + max(4, round(h))
        left, top = (max(x0 - margin, min(x0, 0)), max(y0 - margin, min(y0, 0)))
        right, bottom = (min(x1 + margin, max(x1, width)), min(y1 + margin, max(y1, height)))
        self._lead = (x0 - left, y0 - top)  # the box's corner inside the template
        p = self._pad
        self._template = self._padded(image)[top + p:bottom + p, left + p:right + p]
        self._radius = max(6, round(0.5 * max(w, h)))

    def _padded(self, image: np.ndarray) -> np.ndarray:
        return cv2.copyMakeBorder(image, self._pad, self._pad, self._pad, self._pad,
                                  cv2.BORDER_CONSTANT, value=(0, 0, 0)).astype(np.float32)

    def _corner(self, box: np.ndarray) -> tuple[int, int]:
        """The template's top-left in the padded picture for a box (margin included)."""
        return (round(box[0]) + self._pad - self._lead[0],
                round(box[1]) + self._pad - self._lead[1])

    def step(self, image: np.ndarray) -> np.ndarray | None:
        """The box on the next picture, or None once the object is lost or has left."""
        th, tw = self._template.shape[:2]
        gx, gy = self._corner(self._box + np.tile(self._velocity, 2))
        padded = self._padded(image)
        r = self._radius + round(float(np.abs(self._velocity).max()))
        x0, y0 = max(0, gx - r), max(0, gy - r)
        x1, y1 = min(padded.shape[1], gx + tw + r), min(padded.shape[0], gy + th + r)
        if x1 - x0 < tw or y1 - y0 < th:
            return None
        scores = cv2.matchTemplate(padded[y0:y1, x0:x1], self._template, cv2.TM_CCOEFF_NORMED)
        _, best, _, (bx, by) = cv2.minMaxLoc(scores)
        if not np.isfinite(best) or best < max(MIN_SCORE, KEEP_SCORE * self._best):
            return None  # occluded, changed, or gone: better no evidence than a wrong one
        self._best = max(self._best, best)
        cx, cy = self._corner(self._box)
        dx = bx + x0 + _subpixel(scores[by, :], bx) - cx
        dy = by + y0 + _subpixel(scores[:, bx], by) - cy
        moved = self._box + np.array([dx, dy, dx, dy])
        clipped = np.clip(moved, 0, self._size)
        if _area(clipped) < MIN_VISIBLE * _area(moved):
            return None
        self._velocity = np.array([dx, dy])
        self._box = moved
        return clipped


def _subpixel(row: np.ndarray, i: int) -> float:
    """A parabola through the peak and its neighbours: the peak's fractional offset."""
    if i <= 0 or i >= len(row) - 1:
        return 0.0
    left, mid, right = float(row[i - 1]), float(row[i]), float(row[i + 1])
    curve = left - 2 * mid + right
    return 0.0 if curve >= 0 else float(np.clip(0.5 * (left - right) / curve, -0.5, 0.5))


# --- output ----------------------------------------------------------------------------------


def _keyframes(boxes: dict[int, BBox], anchors: Mapping[int, BBox], min_iou: float,
               last_frame: int, keep_on: bool) -> list[Keyframe]:
    """Thinned per stretch between anchors, so every anchor is a keyframe with its own box and
    the bound holds on every frame; only the last keyframe may end the box."""
    frames = sorted(boxes)
    cuts = sorted({frames[0], *anchors, frames[-1]})
    out: dict[int, Keyframe] = {}
    for p, q in pairwise(cuts):
        run = [TrackBox(f, boxes[f]) for f in range(p, q + 1)]
        for key in thin_track(run, min_iou=min_iou, last_frame=last_frame):
            out[key.frame] = Keyframe(key.frame, key.box, True)
    if len(cuts) == 1:
        out[cuts[0]] = Keyframe(cuts[0], boxes[cuts[0]], True)
    for f, box in anchors.items():
        out[f] = Keyframe(f, box, True)
    ordered = [out[f] for f in sorted(out)]
    ordered[-1] = Keyframe(ordered[-1].frame, ordered[-1].box, keep_on)
    return ordered


def _array(box: BBox) -> np.ndarray:
    return np.array([box.x1, box.y1, box.x2, box.y2], dtype=float)


def _bbox(coords: np.ndarray) -> BBox:
    return BBox(*(float(v) for v in coords))


def _area(coords: np.ndarray) -> float:
    return float(max(0.0, coords[2] - coords[0]) * max(0.0, coords[3] - coords[1]))
