"""Training samples from a labelled video: a thinned set of its frames, each with its boxes.

A clip's neighbouring frames are near-copies, so training on every one adds time, not
information. Frames are taken at a few per second (`VideoSampling`); a frame is skipped as a
near-duplicate when its picture hardly differs from the last frame kept *and* its boxes are
where that frame's were (a paused or static stretch); the number per video is capped. Frames
without boxes are kept: the whole video was labelled, so they are negatives. All frames of a
video share one `Sample.group`, so the split puts a video wholly in train, val or holdout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from labelpilot.backends.images import DEFAULT_MAX_PIXELS
from labelpilot.backends.keyframes import box_iou
from labelpilot.backends.shapes import Instance
from labelpilot.backends.video import (
    DEFAULT_MAX_VIDEO_SECONDS,
    check_framerate,
    frame_count,
    probe_video,
    read_frames,
)
from labelpilot.trainers.samples import Sample

_THUMBNAIL = 32  # side of the grayscale thumbnail two frames are compared on
# boxes this close to the last kept frame's count as not moved: the mean picture difference
# misses small objects in a large frame, the boxes do not
_SAME_BOX_IOU = 0.9


@dataclass(frozen=True)
class VideoSampling:
    """Which frames of a labelled video train: about `per_second` frames a second; none whose
    32x32 grayscale thumbnail differs from the last kept one's by less than `min_change` (mean
    absolute difference, 0..255) while its boxes stayed put; at most `max_frames`, spread over
    the whole video."""

    per_second: float = 4.0
    max_frames: int = 300
    min_change: float = 2.0

    def stride(self, framerate: float) -> int:
        """Keep every stride-th frame of a video played at `framerate`."""
        return max(1, round(framerate / self.per_second)) if self.per_second > 0 else 1


def sample_video_frames(data: bytes, framerate: float, boxes: Mapping[int, Sequence[Instance]],
                        directory: Path, *, group: str, stride: int | None = None,
                        max_frames: int = VideoSampling.max_frames,
                        min_change: float = VideoSampling.min_change,
                        max_seconds: float = DEFAULT_MAX_VIDEO_SECONDS,
                        max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[list[Sample], int]:
    """Write the chosen frames as PNGs under `directory`; returns their samples (ids
    `{group}-f{frame:06d}`, boxes from `boxes` by Label Studio frame number) and how many
    frames were skipped as near-duplicates.

    `stride` defaults to `VideoSampling`'s (about 4 frames a second); it is widened when
    `max_frames` frames at `stride` would not reach the end, so the frames cover the whole
    video. Raises VideoError (a ValueError) if the video cannot be decoded."""
    rate = check_framerate(framerate)
    if stride is None:
        stride = VideoSampling().stride(rate)
    if stride < 1 or max_frames < 1:
        raise ValueError(f"stride ({stride}) and max_frames ({max_frames}) must be at least 1")
    info = probe_video(data, max_seconds=max_seconds, max_pixels=max_pixels)
    stride = max(stride, math.ceil(frame_count(info.duration, rate) / max_frames))
    directory.mkdir(parents=True, exist_ok=True)
    samples: list[Sample] = []
    duplicates = 0
    kept: tuple[np.ndarray, tuple[Instance, ...]] | None = None
    for frame in read_frames(data, rate, max_seconds=max_seconds, max_pixels=max_pixels,
                             stride=stride):
        thumbnail = _thumbnail(frame.image)
        instances = tuple(boxes.get(frame.number, ()))
        if kept is not None and _change(thumbnail, kept[0]) < min_change and _same_boxes(
                instances, kept[1]):
            duplicates += 1
            continue
        kept = (thumbnail, instances)
        sample_id = f"{group}-f{frame.number:06d}"
        path = directory / f"{sample_id}.png"
        if not cv2.imwrite(str(path), frame.image):
            raise OSError(f"could not write {path}")
        height, width = frame.image.shape[:2]
        samples.append(Sample(sample_id, path, width, height, instances=instances,
                              provenance={"frame": str(frame.number)}, group=group))
        if len(samples) >= max_frames:
            break
    return samples, duplicates


def _thumbnail(image: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return cv2.resize(gray, (_THUMBNAIL, _THUMBNAIL),
                      interpolation=cv2.INTER_AREA).astype(np.float32)


def _change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def _same_boxes(a: Sequence[Instance], b: Sequence[Instance]) -> bool:
    """Whether every object of `a` has its own one of the same class in `b`, at IoU >= 0.9."""
    if len(a) != len(b):
        return False
    free = list(b)
    for instance in a:
        match = next((other for other in free if other.class_name == instance.class_name and (
            other.box == instance.box if other.box is None or instance.box is None
            else box_iou(other.box, instance.box) >= _SAME_BOX_IOU)), None)
        if match is None:
            return False
        free.remove(match)
    return True
