"""Detect + track through a video: the served YOLO model finds objects on each frame (in
batches), ultralytics' ByteTrack or BoT-SORT links them into tracks.

One tracker per call, so requests never share tracker state; the model is shared (its own lock).
ultralytics' `model.track` keeps its trackers on the model object and runs one frame per call;
here frames go through the model in batches and the tracker sees them in order.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labelpilot.backends.offline import import_ultralytics
from labelpilot.backends.shapes import BBox
from labelpilot.backends.tracks import Track, TrackBox
from labelpilot.backends.video import VideoFrame
from labelpilot.backends.yolo import YoloModel

log = logging.getLogger(__name__)
TRACKERS = ("bytetrack", "botsort", "ocsort")  # ultralytics' trackers that need no ReID model
STITCH_GAP = 60  # frames an object may stay hidden and still keep its track
MIN_TRACK_FRAMES = 3  # shorter tracks are detector flicker, not objects worth annotating
DETECTION_CONF = 0.1  # what ultralytics' model.track detects at: ByteTrack uses weak boxes too
FrameDone = Callable[[int], None]  # called with each frame number once it is tracked


class TrackerError(ValueError):
    """A tracker name or parameter the trackers cannot use; the message says which."""


@dataclass(frozen=True)
class TrackerSpec:
    """Which tracker, with which of its YAML settings overridden (key, value as text)."""

    name: str = "bytetrack"
    params: tuple[tuple[str, str], ...] = ()


def tracker_settings(spec: TrackerSpec) -> Any:
    """The tracker's YAML settings (ultralytics/cfg/trackers) with the overrides applied."""
    if spec.name not in TRACKERS:
        raise TrackerError(f"tracker '{spec.name}' is not one of {', '.join(TRACKERS)}")
    import_ultralytics()
    import ultralytics
    from ultralytics.utils import YAML, IterableSimpleNamespace

    path = Path(ultralytics.__file__).parent / "cfg" / "trackers" / f"{spec.name}.yaml"
    cfg: dict[str, Any] = dict(YAML.load(path))
    for key, text in spec.params:
        if key not in cfg or key == "tracker_type":
            known = ", ".join(sorted(k for k in cfg if k != "tracker_type"))
            raise TrackerError(f"{spec.name} has no setting '{key}' (it has: {known})")
        cfg[key] = _typed(key, text, cfg[key], spec.name)
    if cfg.get("with_reid"):
        raise TrackerError("botsort_with_reid needs a ReID model; labelpilot runs BoT-SORT "
                           "without it (leave with_reid false)")
    return IterableSimpleNamespace(**cfg)


def make_tracker(spec: TrackerSpec) -> Any:
    """A fresh tracker of `spec` (TrackerError when ultralytics refuses one of its settings,
    e.g. an unknown `botsort_gmc_method`)."""
    settings = tracker_settings(spec)
    from ultralytics.trackers.track import TRACKER_MAP

    try:
        return TRACKER_MAP[spec.name](args=settings)
    except (ValueError, TypeError, KeyError, AssertionError) as exc:
        raise TrackerError(f"{spec.name} refused its settings: {exc}") from exc


def _typed(key: str, text: str, default: Any, tracker: str) -> Any:
    try:
        if isinstance(default, bool):
            if text.strip().lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.strip().lower() in ("true", "1")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            value = float(text)
            if not np.isfinite(value):
                raise ValueError(text)
            return value
    except ValueError:
        raise TrackerError(f"{tracker}_{key}=\"{text[:40]}\" is not a "
                           f"{type(default).__name__}") from None
    return text


def track_video(model: YoloModel, frames: Iterable[VideoFrame], *,
                spec: TrackerSpec = TrackerSpec(), batch: int = 8,
                on_frame: FrameDone | None = None,
                stitch_gap: int = STITCH_GAP) -> list[Track]:
    """Every track the tracker confirmed, by first frame; tracks of one object split by an
    occlusion of up to `stitch_gap` frames are joined (`stitch_tracks`; 0: never)."""
    tracker = make_tracker(spec)
    boxes: dict[int, list[TrackBox]] = {}
    classes: dict[int, Counter[int]] = {}
    pending: list[VideoFrame] = []

    def flush() -> None:
        detections = model.raw_boxes([f.image for f in pending], conf=DETECTION_CONF)
        for frame, found in zip(pending, detections, strict=True):
            rows = tracker.update(found, frame.image)
            for row in np.asarray(rows).reshape(-1, rows.shape[-1] if len(rows) else 8):
                x1, y1, x2, y2, track_id, score, cls = (float(v) for v in row[:7])
                tid = int(track_id)
                boxes.setdefault(tid, []).append(
                    TrackBox(frame.number, BBox(x1, y1, x2, y2), score))
                classes.setdefault(tid, Counter())[int(cls)] += 1
            if on_frame is not None:
                on_frame(frame.number)
        pending.clear()

    for frame in frames:
        pending.append(frame)
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    tracks = [Track(tid, model.class_names[classes[tid].most_common(1)[0][0]],
                    tuple(sorted(found, key=lambda b: b.frame)))
              for tid, found in boxes.items()]
    if stitch_gap > 0:
        tracks = stitch_tracks(tracks, max_gap=stitch_gap)
    return sorted(tracks, key=lambda t: (t.first_frame, t.track_id))


def stitch_tracks(tracks: Sequence[Track], *, max_gap: int, max_distance: float = 1.0,
                  history: int = 8) -> list[Track]:
    """Join a track that ends to one of its class that starts at most `max_gap` frames later
    near where the first one, moving on at its recent speed, would be (centre distance at most
    `max_distance` object sizes, ahead of it, of a similar size): the same object after an
    occlusion the tracker could not bridge keeps one id (one region for the annotator, not
    two). The recent speed comes from box centres; a box shrinking behind an occluder slows
    it, hence the tolerance of a whole object size."""
    ordered = sorted(tracks, key=lambda t: t.first_frame)
    merged: dict[int, Track] = {t.track_id: t for t in ordered}
    taken: set[int] = set()  # tracks already joined onto an earlier one
    for track in ordered:
        if track.track_id in taken:
            continue
        current = merged[track.track_id]
        while (best := _follower(current, ordered, taken, max_gap, max_distance,
                                 history)) is not None:
            taken.add(best.track_id)
            current = Track(current.track_id, current.class_name, current.boxes + best.boxes)
        merged[track.track_id] = current
    return [t for t in merged.values() if t.track_id not in taken]


def _centre(box: BBox) -> np.ndarray:
    return np.array([(box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2])


def _side(box: BBox) -> float:
    return float(np.sqrt(max(box.x2 - box.x1, 1e-6) * max(box.y2 - box.y1, 1e-6)))


def _ahead(recent: Sequence[TrackBox]) -> tuple[np.ndarray, np.ndarray]:
    """Where the object's centre is on the last frame and how fast it moves, per axis from the
    faster of its two edges: an object going behind an occluder keeps its trailing edge in
    view, while the leading edge stalls against the occluder and its box shrinks."""
    span = max(1, recent[-1].frame - recent[0].frame)
    first, last = recent[0].box, recent[-1].box
    centre, velocity = np.zeros(2), np.zeros(2)
    for axis, (low, high) in enumerate((("x1", "x2"), ("y1", "y2"))):
        size = float(np.median([getattr(b.box, high) - getattr(b.box, low) for b in recent]))
        v_low = (getattr(last, low) - getattr(first, low)) / span
        v_high = (getattr(last, high) - getattr(first, high)) / span
        if abs(v_low) >= abs(v_high):
            centre[axis], velocity[axis] = getattr(last, low) + size / 2, v_low
        else:
            centre[axis], velocity[axis] = getattr(last, high) - size / 2, v_high
    return centre, velocity


def _follower(track: Track, candidates: Sequence[Track], taken: set[int], max_gap: int,
              max_distance: float, history: int) -> Track | None:
    recent = track.boxes[-history:]
    last = recent[-1]
    expected, velocity = _ahead(recent)
    size = float(np.median([_side(b.box) for b in recent]))
    best, best_distance = None, max_distance
    for other in candidates:
        gap = other.first_frame - last.frame
        if (other.track_id == track.track_id or other.track_id in taken or gap < 1
                or gap > max_gap or other.class_name != track.class_name):
            continue
        first = other.boxes[0].box
        if not 0.5 <= _side(first) / size <= 2.0:
            continue
        step = _centre(first) - _centre(last.box)
        if float(np.dot(step, velocity)) < 0:  # behind it: another object
            continue
        distance = float(np.linalg.norm(expected + velocity * gap - _centre(first)))
        if distance / size <= best_distance:
            best, best_distance = other, distance / size
    return best
