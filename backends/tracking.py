"""Detect + track through a video: the served YOLO model finds objects on each frame (in
batches), ultralytics' ByteTrack or BoT-SORT links them into tracks.

One tracker per call, so requests never share tracker state; the model is shared (its own lock).
ultralytics' `model.track` keeps its trackers on the model object and runs one frame per call;
here frames go through the model in batches and the tracker sees them in order.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
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
                on_frame: FrameDone | None = None) -> list[Track]:
    """Every track the tracker confirmed, by first frame."""
    import_ultralytics()
    from ultralytics.trackers.track import TRACKER_MAP

    tracker: Any = TRACKER_MAP[spec.name](args=tracker_settings(spec))
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
    return sorted(tracks, key=lambda t: (t.first_frame, t.track_id))
