"""Video tasks in Label Studio: track a VideoRectangle control's video with the served model and
answer with one `videorectangle` region per track, thinned to keyframes.

Result format (LS 1.23.2, docs/video.md): percent boxes in `value.sequence` items
`{frame, enabled, x, y, width, height, rotation, time}` (frames 1-based, `time = frame /
framerate`), plus `value.labels`, `value.framesCount` and `value.duration`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from labelpilot.adapters.label_studio.config import ControlSpec
from labelpilot.adapters.label_studio.image_source import ImageSource, ImageSourceError
from labelpilot.adapters.label_studio.payloads import Task
from labelpilot.adapters.label_studio.results import region_id
from labelpilot.backends.images import DEFAULT_MAX_PIXELS
from labelpilot.backends.keyframes import thin_track
from labelpilot.backends.tracking import (
    MIN_TRACK_FRAMES,
    FrameDone,
    TrackerError,
    TrackerSpec,
    track_video,
)
from labelpilot.backends.tracks import Keyframe, Track
from labelpilot.backends.video import (
    DEFAULT_MAX_VIDEO_SECONDS,
    VideoError,
    VideoInfo,
    check_framerate,
    frame_count,
    probe_video,
    read_frames,
)
from labelpilot.backends.yolo import YoloModel


@dataclass(frozen=True)
class VideoJobRequest:
    """A clip to track in a worker: which task, control and model, and the model_version the
    prediction is posted under (the one /setup returns, so LS keeps one per version)."""

    project_id: int | None
    task_id: int | None
    task_data: dict[str, Any]
    control: str
    weights: str
    model_version: str


LongVideoHook = Callable[[VideoJobRequest], str]
"""Queue the tracking of a long clip; returns the job's id."""


class VideoTaskError(Exception):
    """This task's video cannot be tracked; the message says why (the task fails, others go on)."""


@dataclass(frozen=True)
class VideoLimits:
    """LABELPILOT_MAX_VIDEO_BYTES / _SECONDS, LABELPILOT_VIDEO_INLINE_FRAMES (longer clips are
    tracked by a worker job), LABELPILOT_VIDEO_KEYFRAME_IOU (how close the keyframes' linear
    interpolation must stay to the tracked box)."""

    max_bytes: int = 512 * 2**20
    max_seconds: float = DEFAULT_MAX_VIDEO_SECONDS
    max_pixels: int = DEFAULT_MAX_PIXELS
    inline_frames: int = 300
    keyframe_iou: float = 0.85
    batch: int = 8
    download_seconds: float = 120.0


@dataclass(frozen=True)
class VideoClip:
    """A task's video, fetched and probed, with the frame rate LS plays it at."""

    data: bytes
    info: VideoInfo
    framerate: float

    @property
    def frames(self) -> int:
        return frame_count(self.info.duration, self.framerate)


def fetch_clip(task: Task, control: ControlSpec, source: ImageSource,
               limits: VideoLimits) -> VideoClip:
    """Fetch and probe the task's video (VideoTaskError with the reason)."""
    assert control.video is not None
    url = task.data.get(control.image_key)
    if url is None:
        raise VideoTaskError(f"task data has no '{control.image_key}' field (the config reads "
                             f"${control.image_key})")
    try:
        framerate = check_framerate(control.video.framerate_of(task.data))
        videos = dataclasses.replace(source, max_bytes=limits.max_bytes, media="video",
                                     download_seconds=max(source.download_seconds,
                                                          limits.download_seconds))
        data = videos.fetch(str(url), task.id)
        info = probe_video(data, max_seconds=limits.max_seconds, max_pixels=limits.max_pixels)
    except (ValueError, ImageSourceError) as exc:  # VideoError is a ValueError
        raise VideoTaskError(f"{str(url)[:120]}: {exc}") from exc
    return VideoClip(data, info, framerate)


def track_clip(clip: VideoClip, control: ControlSpec, model: YoloModel, limits: VideoLimits,
               on_frame: FrameDone | None = None) -> list[dict[str, Any]]:
    """Track the whole clip; one region per track with a label of the control."""
    assert control.video is not None
    spec = TrackerSpec(control.video.tracker, control.video.tracker_params)
    try:
        frames = read_frames(clip.data, clip.framerate, max_seconds=limits.max_seconds,
                             max_pixels=limits.max_pixels)
        tracks = track_video(model, frames, spec=spec, batch=limits.batch, on_frame=on_frame)
    except (VideoError, TrackerError) as exc:
        raise VideoTaskError(str(exc)) from exc
    return video_regions(control, tracks, clip, limits.keyframe_iou)


def sequence_items(keyframes: Sequence[Keyframe], width: int, height: int,
                   framerate: float) -> list[dict[str, Any]]:
    """Pixel keyframes → LS `value.sequence` items (percent of the frame; `time` as LS's
    editor stores it: frame / framerate)."""
    return [{"frame": k.frame, "enabled": k.enabled,
             "x": 100 * k.box.x1 / width, "y": 100 * k.box.y1 / height,
             "width": 100 * (k.box.x2 - k.box.x1) / width,
             "height": 100 * (k.box.y2 - k.box.y1) / height,
             "rotation": 0, "time": k.frame / framerate} for k in keyframes]


def video_regions(control: ControlSpec, tracks: Sequence[Track], clip: VideoClip,
                  min_iou: float) -> list[dict[str, Any]]:
    """Tracks → LS `videorectangle` regions (percent of the frame), keyframes only."""
    width, height, last = clip.info.width, clip.info.height, clip.frames
    regions = []
    for track in tracks:
        label = control.label_for(track.class_name)
        if label is None or len(track.boxes) < MIN_TRACK_FRAMES:
            continue
        if max(b.score for b in track.boxes) < control.threshold:
            continue
        boxes = tuple(b for b in track.boxes if b.frame <= last)
        sequence = sequence_items(thin_track(boxes, min_iou=min_iou, last_frame=last),
                                  width, height, clip.framerate)
        regions.append({
            "id": region_id(), "from_name": control.name, "to_name": control.to_name,
            "type": control.result_type, "origin": "prediction",
            "score": round(track.score, 4),
            "value": {"framesCount": last, "duration": clip.info.duration,
                      "sequence": sequence, "labels": [label]},
        })
    return regions
