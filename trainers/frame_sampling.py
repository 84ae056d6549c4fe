"""Which frames of a video are worth labelling as images: uniform, scene-change or uncertainty.

Platform-neutral; frames are numbered as Label Studio numbers them (`backends.video`: frame n is
the picture shown at (n - 1) / framerate). Picking is two cheap passes: the first reads a
bounded set of candidate frames (every k-th, at most `MAX_CANDIDATES`) and keeps one number per
candidate (a histogram distance, a model's uncertainty), never the pictures; the second decodes
only the picked frames. Everything is deterministic: ties go to the earlier frame.

- ``uniform``: `count` frames evenly spaced over the whole video (the first one included);
- ``scene``: the first frame, then the frames where the picture changes most from the
  candidate before it (HSV colour-histogram distance), at least `min_spacing` seconds apart;
- ``uncertainty``: candidates scored in batches by the served detector, least certain first
  (`trainers.selection.image_uncertainties`), at least `min_spacing` seconds apart so the
  picks do not cluster on one hard moment.

`min_spacing` defaults to the video's length / (2 × count): a pick keeps half the uniform gap
to its neighbours. When the spacing leaves fewer than `count` frames, the rest are filled by
score alone, so `count` frames come back whenever the video has that many candidates.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import cv2
import numpy as np

from labelpilot.backends.images import DEFAULT_MAX_PIXELS
from labelpilot.backends.video import (
    DEFAULT_MAX_VIDEO_SECONDS,
    VideoFrame,
    check_framerate,
    frame_count,
    probe_video,
    read_frames,
)
from labelpilot.backends.yolo_scoring import ImageScore
from labelpilot.trainers.selection import image_uncertainties

METHODS = ("uniform", "scene", "uncertainty")
MAX_CANDIDATES = {"scene": 5000, "uncertainty": 1000}  # frames read in the first pass, at most
SCORE_BATCH = 16  # candidate frames per model call
HIST_WIDTH = 160  # frames are shrunk to this width before their histogram is taken
HIST_BINS = (16, 8, 8)  # H, S, V
Progress = Callable[[dict[str, Any]], None]


class FrameSamplingError(ValueError):
    """Bad input to frame sampling: the message says what to change."""


class FrameScorer(Protocol):
    """What uncertainty sampling needs of a model (`backends.yolo_scoring.YoloScorer`)."""

    def score(self, images: Sequence[np.ndarray], *, conf: float = ...) -> list[ImageScore]: ...


def sample_frames(data: bytes, framerate: float, count: int, method: str, *,
                  scorer: FrameScorer | None = None,
                  max_seconds: float = DEFAULT_MAX_VIDEO_SECONDS,
                  max_pixels: int = DEFAULT_MAX_PIXELS, candidates_every: int = 1,
                  min_spacing: float | None = None, conf: float = 0.05,
                  progress: Progress | None = None) -> list[VideoFrame]:
    """The picked frames in time order, with their pictures (all held in memory: for many or
    large frames use `pick_frames` + `frames_at`, which hand them out one at a time)."""
    numbers = pick_frames(data, framerate, count, method, scorer=scorer,
                          max_seconds=max_seconds, max_pixels=max_pixels,
                          candidates_every=candidates_every, min_spacing=min_spacing, conf=conf,
                          progress=progress)
    return list(frames_at(data, framerate, numbers, max_seconds=max_seconds,
                          max_pixels=max_pixels))


def pick_frames(data: bytes, framerate: float, count: int, method: str, *,
                scorer: FrameScorer | None = None,
                max_seconds: float = DEFAULT_MAX_VIDEO_SECONDS,
                max_pixels: int = DEFAULT_MAX_PIXELS, candidates_every: int = 1,
                min_spacing: float | None = None, conf: float = 0.05,
                progress: Progress | None = None) -> list[int]:
    """Label Studio frame numbers (1-based, increasing) of the frames to label."""
    rate = check_framerate(framerate)
    _check(count, method, scorer, candidates_every, min_spacing)
    info = probe_video(data, max_seconds=max_seconds, max_pixels=max_pixels)
    total = frame_count(info.duration, rate)
    if method == "uniform":
        return uniform_numbers(total, count)
    stride = max(candidates_every, math.ceil(total / MAX_CANDIDATES[method]))
    candidates = list(range(1, total + 1, stride))
    spacing = (total / rate) / (2 * count) if min_spacing is None else min_spacing
    gap = max(1, math.ceil(spacing * rate / stride - 1e-9))  # in candidates
    report = progress or (lambda _update: None)
    frames = read_frames(data, rate, max_seconds=max_seconds, max_pixels=max_pixels,
                         stride=stride)
    if method == "scene":
        values = scene_changes(frames, len(candidates), report)
    else:
        assert scorer is not None  # _check
        values = uncertainties(frames, len(candidates), scorer, conf, report)
    picked = spaced_top(values, count, gap)
    return [candidates[i] for i in picked]


def frames_at(data: bytes, framerate: float, numbers: Sequence[int], *,
              max_seconds: float = DEFAULT_MAX_VIDEO_SECONDS,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[VideoFrame]:
    """The frames `numbers` (increasing), decoded in one pass and handed out one at a time."""
    if not numbers:
        return iter(())
    if any(b <= a for a, b in itertools.pairwise(numbers)) or numbers[0] < 1:
        raise FrameSamplingError(f"frame numbers must increase from 1, got {list(numbers)}")
    stride = 0
    for n in numbers[1:]:
        stride = math.gcd(stride, n - numbers[0])
    wanted = set(numbers)
    frames = read_frames(data, framerate, max_seconds=max_seconds, max_pixels=max_pixels,
                         first=numbers[0], last=numbers[-1], stride=max(stride, 1))
    return (f for f in frames if f.number in wanted)


def uniform_numbers(total: int, count: int) -> list[int]:
    """`count` frame numbers evenly spaced over 1..total, the first frame included (the
    middles of `count` equal slices would skip the opening; every slice's start is used)."""
    if count >= total:
        return list(range(1, total + 1))
    return sorted({1 + (i * total) // count for i in range(count)})


def scene_changes(frames: Iterator[VideoFrame], expected: int, progress: Progress) -> np.ndarray:
    """Per candidate, how much its picture differs from the candidate before it (Bhattacharyya
    distance of HSV histograms, 0..1); the first candidate gets +inf, so it is always picked."""
    values: list[float] = []
    previous: np.ndarray | None = None
    for i, frame in enumerate(frames):
        hist = _histogram(frame.image)
        values.append(math.inf if previous is None else
                      float(cv2.compareHist(previous, hist, cv2.HISTCMP_BHATTACHARYYA)))
        previous = hist
        if (i + 1) % 100 == 0:
            progress({"phase": "scanning", "done": i + 1, "total": expected})
    progress({"phase": "scanning", "done": len(values), "total": expected})
    return np.array(values)


def uncertainties(frames: Iterator[VideoFrame], expected: int, scorer: FrameScorer,
                  conf: float, progress: Progress) -> np.ndarray:
    """Per candidate, the detector's uncertainty (sum of its most uncertain regions' margins;
    a frame where nothing is found gets the median of the others)."""
    scores: list[ImageScore] = []
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame.image)
        if len(batch) == SCORE_BATCH:
            scores.extend(scorer.score(batch, conf=conf))
            batch = []
            progress({"phase": "scoring", "done": len(scores), "total": expected})
    if batch:
        scores.extend(scorer.score(batch, conf=conf))
    progress({"phase": "scoring", "done": len(scores), "total": expected})
    return image_uncertainties(scores) if scores else np.zeros(0)


def spaced_top(values: np.ndarray, count: int, gap: int) -> list[int]:
    """Indices of the `count` highest values (ties: the earlier one), each at least `gap`
    indices from the others; filled by value alone if the spacing leaves too few. Sorted."""
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    taken: list[int] = []
    for i in order:
        if len(taken) == count:
            break
        if all(abs(i - j) >= gap for j in taken):
            taken.append(i)
    for i in order:
        if len(taken) >= count:
            break
        if i not in taken:
            taken.append(i)
    return sorted(taken)


def _histogram(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    if width > HIST_WIDTH:
        image = cv2.resize(image, (HIST_WIDTH, max(1, round(height * HIST_WIDTH / width))),
                           interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, list(HIST_BINS), [0, 180, 0, 256, 0, 256])
    return cv2.normalize(hist, hist).astype(np.float32)


def _check(count: int, method: str, scorer: FrameScorer | None, every: int,
           min_spacing: float | None) -> None:
    if method not in METHODS:
        raise FrameSamplingError(f"unknown sampling method '{method}'; use one of "
                                 f"{', '.join(METHODS)}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise FrameSamplingError(f"count must be a positive integer, got {count!r}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise FrameSamplingError(f"candidates_every must be a positive integer, got {every!r}")
    if min_spacing is not None and not (math.isfinite(min_spacing) and min_spacing >= 0):
        raise FrameSamplingError(f"min_spacing must be >= 0 seconds, got {min_spacing!r}")
    if method == "uncertainty" and scorer is None:
        raise FrameSamplingError("uncertainty sampling needs a model to score the frames")


def frame_file_name(frame: VideoFrame) -> str:
    """`f<frame>_t<seconds>s.png`: the frame number and timestamp survive in the file name."""
    return f"f{frame.number}_t{frame.time:.3f}s.png"
