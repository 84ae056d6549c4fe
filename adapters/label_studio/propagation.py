"""Keyframe propagation in Label Studio: an annotator draws an object on a few frames of a
video and submits (or updates) the annotation; labelpilot fills the frames between and after
those keyframes by tracking, landing exactly on the annotator's boxes, and writes the filled
keyframes back into the same annotation (the annotator sees them on reopening the task).

Only VideoRectangle controls with `model_propagate="true"` take part. A keyframe the annotator
disabled ends the object there (nothing is filled across it); an enabled last keyframe means
"it goes on": the object is followed forward until the tracker loses it. What was written is
remembered per annotation, so the webhook of labelpilot's own update starts nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from labelpilot.adapters.label_studio.annotations import sequence_keyframes
from labelpilot.adapters.label_studio.config import ControlSpec, ServingPlan
from labelpilot.adapters.label_studio.image_source import ImageSource
from labelpilot.adapters.label_studio.payloads import Task
from labelpilot.adapters.label_studio.video import (
    VideoLimits,
    VideoTaskError,
    fetch_clip,
    sequence_items,
)
from labelpilot.backends.propagation import propagate
from labelpilot.backends.redis_text import as_text
from labelpilot.backends.tracking import TrackerSpec, track_video
from labelpilot.backends.tracks import Keyframe, Track
from labelpilot.backends.video import VideoError, read_frames
from labelpilot.backends.yolo import YoloModel

log = logging.getLogger(__name__)
WRITTEN_KEY = "labelpilot:propagated:{}"  # annotation id → digest of the result we wrote
WRITTEN_TTL_S = 7 * 86400


@dataclass(frozen=True)
class PropagationRequest:
    """Which annotation to fill, with which served model."""

    project_id: int
    annotation_id: int
    weights: str


def propagating_controls(plan: ServingPlan) -> list[ControlSpec]:
    return [c for c in plan.controls if c.video is not None and c.video.propagate]


def result_digest(result: Sequence[Any], controls: Sequence[ControlSpec]) -> str:
    """A digest of what the propagating controls' regions draw (labels and keyframes, to
    0.01 %): the same whatever bookkeeping fields Label Studio adds when it stores them."""
    names = {c.name for c in controls}
    drawn = sorted(
        json.dumps([r.get("from_name"), r.get("to_name"), (r.get("value") or {}).get("labels"),
                    sorted((int(k.get("frame", 0)), bool(k.get("enabled", False)),
                            *(round(float(k.get(f, 0)), 2) for f in ("x", "y", "width",
                                                                     "height")))
                           for k in (r.get("value") or {}).get("sequence") or [])])
        for r in result if isinstance(r, dict) and r.get("from_name") in names)
    return hashlib.sha1("\n".join(drawn).encode()).hexdigest()


def already_written(connection: redis.Redis, annotation_id: int, digest: str) -> bool:
    """Is this result the one labelpilot wrote itself (its own update's webhook)?"""
    stored = connection.get(WRITTEN_KEY.format(annotation_id))
    return stored is not None and as_text(stored) == digest


def _segments(keyframes: list[Keyframe]) -> list[tuple[list[Keyframe], bool]]:
    """Runs of keyframes the object is drawn through, each with whether it goes on after
    its last keyframe (the last run ending on an enabled keyframe)."""
    runs: list[tuple[list[Keyframe], bool]] = []
    current: list[Keyframe] = []
    for key in keyframes:
        current.append(key)
        if not key.enabled:
            runs.append((current, False))
            current = []
    if current:
        runs.append((current, True))
    return runs


def filled_sequence(region: dict[str, Any], tracks: Sequence[Track], frames: Any,
                    width: int, height: int, last_frame: int, framerate: float,
                    min_iou: float) -> list[dict[str, Any]]:
    """The region's sequence with the frames between and after its keyframes filled.
    Keyframes past the video's last frame or with an empty box are left as they are drawn
    (nothing to track from); ValueError when none is usable."""
    keyframes = [k for k in sequence_keyframes(region.get("value", {}).get("sequence") or [],
                                               width, height)
                 if k.frame <= last_frame and k.box.x2 > k.box.x1 and k.box.y2 > k.box.y1]
    if not keyframes:
        raise ValueError("no keyframe inside the video with a box to track from")
    filled: list[Keyframe] = []
    for run, goes_on in _segments(keyframes):
        anchors = {k.frame: k.box for k in run}
        result = propagate(anchors, frames, last_frame, tracks=tracks, min_iou=min_iou,
                           forward=goes_on)
        keys = result.keyframes
        if not goes_on and keys:  # the annotator ended it at the run's last keyframe
            keys = [*keys[:-1], Keyframe(keys[-1].frame, keys[-1].box, False)]
        filled.extend(keys)
    return sequence_items(filled, width, height, framerate)


def propagate_annotation(request: PropagationRequest, plan: ServingPlan, images: ImageSource,
                         model: YoloModel, limits: VideoLimits,
                         connection: redis.Redis) -> dict[str, Any]:
    """Fill the annotation's video regions and write them back; returns what was done.
    Raises VideoTaskError when the task's video cannot be read."""
    api = images.api
    annotation = api.get(f"/api/annotations/{request.annotation_id}")
    controls = propagating_controls(plan)
    before = result_digest(annotation.get("result") or [], controls)
    task = api.get(f"/api/tasks/{annotation['task']}")
    result = [dict(r) for r in annotation.get("result") or []]
    filled = 0
    for control in controls:
        regions = [r for r in result if r.get("from_name") == control.name
                   and r.get("type") == "videorectangle"]
        if not regions:
            continue
        assert control.video is not None
        clip = fetch_clip(Task(id=task["id"], data=task.get("data") or {}), control, images,
                          limits)
        spec = TrackerSpec(control.video.tracker, control.video.tracker_params)
        try:
            tracks = track_video(model, read_frames(clip.data, clip.framerate,
                                                    max_seconds=limits.max_seconds,
                                                    max_pixels=limits.max_pixels),
                                 spec=spec, batch=limits.batch)
            frames = _Frames(clip.data, clip.framerate, limits)
            for region in regions:
                try:
                    sequence = filled_sequence(
                        region, tracks, frames, clip.info.width, clip.info.height,
                        clip.frames, clip.framerate, limits.keyframe_iou)
                except ValueError as exc:  # this region only: the others are filled
                    log.warning("annotation %s: region %s not filled: %s",
                                request.annotation_id, region.get("id"), exc)
                    continue
                region["value"] = {"framesCount": clip.frames, "duration": clip.info.duration,
                                   **region["value"], "sequence": sequence}
                filled += 1
        except VideoError as exc:
            raise VideoTaskError(str(exc)) from exc
    if not filled or result_digest(result, controls) == before:
        connection.set(WRITTEN_KEY.format(request.annotation_id), before, ex=WRITTEN_TTL_S)
        return {"annotation": request.annotation_id, "filled": 0,
                "reason": "nothing to fill: every frame is drawn as tracked already"}
    now = api.get(f"/api/annotations/{request.annotation_id}")
    if result_digest(now.get("result") or [], controls) != before:
        return {"annotation": request.annotation_id, "filled": 0,
                "reason": "the annotation changed while it was being filled; its new "
                          "version is filled by the next job"}
    connection.set(WRITTEN_KEY.format(request.annotation_id), result_digest(result, controls),
                   ex=WRITTEN_TTL_S)
    api.patch(f"/api/annotations/{request.annotation_id}", {"result": result})
    log.info("annotation %s: %d video regions filled by propagation", request.annotation_id,
             filled)
    return {"annotation": request.annotation_id, "filled": filled}


class _Frames:
    """Frame pictures on demand for template matching, decoded once in order and kept in a
    bounded window (propagation reads frames around each anchor)."""

    def __init__(self, data: bytes, framerate: float, limits: VideoLimits,
                 keep_bytes: int = 256 * 2**20) -> None:
        self._data, self._rate, self._limits = data, framerate, limits
        self._keep_bytes = keep_bytes
        self._cache: dict[int, Any] = {}
        self._iter: Any = None
        self._next = 1

    def __call__(self, number: int) -> Any:
        if number in self._cache:
            return self._cache[number]
        if self._iter is None or number < self._next:
            self._iter = read_frames(self._data, self._rate,
                                     max_seconds=self._limits.max_seconds,
                                     max_pixels=self._limits.max_pixels)
            self._next = 1
        for frame in self._iter:
            self._next = frame.number + 1
            self._cache[frame.number] = frame.image
            keep = max(8, self._keep_bytes // max(1, frame.image.nbytes))
            while len(self._cache) > keep:  # a bounded window of the latest pictures
                self._cache.pop(min(self._cache))
            if frame.number == number:
                return frame.image
        raise VideoError(f"frame {number} is past the end of the video")
