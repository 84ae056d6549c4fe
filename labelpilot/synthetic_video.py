"""Generated video clips of moving shapes with exact per-frame truth, for the tracking tests.

The shapes are `labelpilot.synthetic`'s (same classes, colours and drawing, side about a quarter
of the height), so the shapes YOLO model trained on its images detects them. Each object moves
in its own horizontal lane (objects never overlap) along a path with one eased turn. Optional:
a static pillar that one object passes behind (`occlusion`), and one object that leaves the
frame before the end (`leaving`).

Truth follows the MOT convention: a box is listed on a frame only when at least half of the
object is visible (inside the frame and not behind the pillar); it is clipped to the frame,
but not to the pillar. Frames are numbered from 1, as Label Studio does.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import cast

import av
import numpy as np

from labelpilot.backends.shapes import BBox
from labelpilot.synthetic import CLASS_COLORS, CLASSES, ShapeBox, _draw

MIN_VISIBLE = 0.5  # the share of an object that must be visible for a truth box
_FORMATS = {".mp4": "mp4", ".mov": "mov", ".avi": "avi", ".webm": "webm", ".mkv": "matroska"}
_CODECS = {  # preferred first; the first one this PyAV build can encode is used
    ".mp4": ("libx264", "h264", "mpeg4"), ".mov": ("libx264", "h264", "mpeg4"),
    ".mkv": ("libx264", "h264", "mpeg4"), ".avi": ("mpeg4",), ".webm": ("libvpx-vp9", "libvpx"),
}
_OPTIONS = {  # high quality: the class colours must survive the encoding
    "libx264": {"crf": "18", "preset": "veryfast"},
    "libvpx-vp9": {"crf": "20", "b": "0", "deadline": "realtime", "cpu-used": "8"},
    "libvpx": {"crf": "8", "b": "2M", "deadline": "realtime", "cpu-used": "8"},
}
_BITRATE = 2_000_000


@dataclass(frozen=True)
class TruthTrack:
    """One object through the clip: LS frame number → pixel box, only where it counts as
    visible (a missing frame is one the object is off-screen or behind the pillar)."""

    track_id: int
    class_name: str
    boxes: dict[int, BBox]


@dataclass(frozen=True)
class _Mover:
    class_name: str
    side: int
    path: tuple[tuple[int, int], ...]  # top-left corner on frames 1..N (index 0 = frame 1)


@dataclass(frozen=True)
class SyntheticClip:
    """A generated clip: its size, rate, length, truth tracks and the seed that made it."""

    width: int
    height: int
    fps: float
    frames: int
    tracks: tuple[TruthTrack, ...]
    seed: int
    movers: tuple[_Mover, ...] = field(default=(), repr=False, compare=False)
    pillar: BBox | None = field(default=None, repr=False)
    background: int = field(default=128, repr=False)

    def render(self, number: int) -> np.ndarray:
        """The BGR picture of frame `number` (1-based); the same for the same clip and number,
        whatever was rendered before."""
        if not 1 <= number <= self.frames:
            raise ValueError(f"frame {number} is outside 1..{self.frames}")
        image = _static_background(self.seed, self.width, self.height, self.background).copy()
        shake = np.random.default_rng((self.seed, number)).normal(0, 3, image.shape)
        image = np.clip(image + shake, 0, 255).astype(np.uint8)
        for mover in self.movers:
            x, y = mover.path[number - 1]
            box = ShapeBox(mover.class_name, x, y, x + mover.side, y + mover.side)
            _draw(image, box, CLASS_COLORS[mover.class_name])
        if self.pillar is not None:
            p = self.pillar
            image[int(p.y1):int(p.y2), int(p.x1):int(p.x2)] = _pillar_texture(
                self.seed, int(p.x2 - p.x1), int(p.y2 - p.y1), self.background)
        return image


def make_clip(seed: int, *, frames: int = 48, width: int = 256, height: int = 192,
              fps: float = 12.0, objects: int = 2, occlusion: bool = True,
              leaving: bool = True) -> SyntheticClip:
    """A clip of 1..3 shapes of different classes; the first passes behind the pillar
    (`occlusion`), the last leaves the frame at about 3/4 of the clip (`leaving`)."""
    if not 1 <= objects <= len(CLASSES):
        raise ValueError(f"objects must be 1..{len(CLASSES)}, not {objects}")
    if frames < 8 or width < 64 or height < 48 or width % 2 or height % 2:
        raise ValueError("a clip needs >= 8 frames and an even size of at least 64x48")
    rng = random.Random(seed)
    names = rng.sample(CLASSES, objects)
    lanes = rng.sample(range(objects), objects)
    lane_height = height // objects
    side = max(8, min(round(height / 4 * rng.uniform(1.0, 1.12)), lane_height - 4))
    movers: list[_Mover] = []
    pillar: BBox | None = None
    for index, name in enumerate(names):
        top = lanes[index] * lane_height
        exits = leaving and index == objects - 1
        path = _path(rng, frames, width, top, top + lane_height - side, side, exits)
        movers.append(_Mover(name, side, path))
        if occlusion and index == 0:
            pillar = _pillar(path, frames, side, top, top + lane_height)
    tracks = tuple(
        TruthTrack(i + 1, m.class_name, _truth(m, width, height, pillar))
        for i, m in enumerate(movers))
    return SyntheticClip(width, height, fps, frames, tracks, seed, tuple(movers), pillar,
                         rng.randrange(90, 170))


def _path(rng: random.Random, frames: int, width: int, y_low: int, y_high: int, side: int,
          exits: bool) -> tuple[tuple[int, int], ...]:
    """Across the frame to a corner near the far side, then back (an eased U-turn); an exiting
    object goes on back out past the side it came from."""
    margin = max(2, side // 6)
    near, far = margin, width - side - margin
    if rng.random() < 0.5:
        near, far = far, near
    corner = round(frames * rng.uniform(0.42, 0.5))
    if exits:
        end_x = near - 3 * side if near < far else near + 3 * side
    else:
        end_x = round(far + (near - far) * rng.uniform(0.1, 0.3))  # clear of the pillar
    ys = [rng.randint(y_low, max(y_low, y_high)) for _ in range(3)]
    points = ((1, near, ys[0]), (corner, far, ys[1]), (frames, end_x, ys[2]))
    window = max(2, frames // 10)
    return tuple(_eased(points, f, window) for f in range(1, frames + 1))


def _eased(points: tuple[tuple[int, int, int], ...], f: int, window: int) -> tuple[int, int]:
    """A piecewise-linear path through the points, its corner replaced by a quadratic Bezier
    over `window` frames each side (the object slows into the turn and speeds out of it)."""
    (f0, x0, y0), (f1, x1, y1), (f2, x2, y2) = points

    def linear(t: float) -> tuple[float, float]:
        if t <= f1:
            s = (t - f0) / (f1 - f0)
            return x0 + (x1 - x0) * s, y0 + (y1 - y0) * s
        s = (t - f1) / (f2 - f1)
        return x1 + (x2 - x1) * s, y1 + (y2 - y1) * s

    if abs(f - f1) < window:
        a, b = linear(f1 - window), linear(f1 + window)
        s = (f - (f1 - window)) / (2 * window)
        x = (1 - s) ** 2 * a[0] + 2 * s * (1 - s) * x1 + s * s * b[0]
        y = (1 - s) ** 2 * a[1] + 2 * s * (1 - s) * y1 + s * s * b[1]
    else:
        x, y = linear(f)
    return round(x), round(y)


def _pillar(path: tuple[tuple[int, int], ...], frames: int, side: int, top: int,
            bottom: int) -> BBox:
    """Where the object is at about 1/5 of the clip (mid-sweep): a bar over its whole lane,
    a little wider than the object, so it is hidden for a few frames."""
    x, _ = path[round(frames * 0.22) - 1]
    width = round(side * 1.3)
    x1 = x + side // 2 - width // 2
    return BBox(x1, top, x1 + width, bottom)


def _truth(mover: _Mover, width: int, height: int, pillar: BBox | None) -> dict[int, BBox]:
    boxes: dict[int, BBox] = {}
    area = mover.side * mover.side
    for number, (x, y) in enumerate(mover.path, start=1):
        box = BBox(x, y, x + mover.side, y + mover.side)
        inside = _intersect(box, BBox(0, 0, width, height))
        if inside is None:
            continue
        visible = _area(inside)
        hidden = _intersect(inside, pillar) if pillar is not None else None
        if hidden is not None:
            visible -= _area(hidden)
        if visible >= MIN_VISIBLE * area:
            boxes[number] = inside
    return boxes


def _intersect(a: BBox, b: BBox) -> BBox | None:
    x1, y1, x2, y2 = max(a.x1, b.x1), max(a.y1, b.y1), min(a.x2, b.x2), min(a.y2, b.y2)
    return BBox(x1, y1, x2, y2) if x1 < x2 and y1 < y2 else None


def _area(box: BBox) -> float:
    return (box.x2 - box.x1) * (box.y2 - box.y1)


@lru_cache(maxsize=8)
def _static_background(seed: int, width: int, height: int, base: int) -> np.ndarray:
    noise = np.random.default_rng(seed)
    image = np.clip(noise.normal(base, 8, (height, width, 3)), 0, 255).astype(np.uint8)
    image.flags.writeable = False
    return image


@lru_cache(maxsize=8)
def _pillar_texture(seed: int, width: int, height: int, background: int) -> np.ndarray:
    """A gray bar clearly darker or lighter than the background, in no class colour."""
    level = background - 60 if background >= 128 else background + 60
    noise = np.random.default_rng((seed, 0))
    texture = np.clip(noise.normal(level, 4, (height, width, 1)), 0, 255).astype(np.uint8)
    texture = np.repeat(texture, 3, axis=2)
    texture.flags.writeable = False
    return texture


def write_clip(clip: SyntheticClip, path: Path) -> Path:
    """Encode the clip at constant rate `clip.fps` (frame i, from 0, at i / fps); the container
    and codec come from the suffix: .mp4/.mov/.mkv H.264, .webm VP9, .avi MPEG-4 Part 2."""
    rate = Fraction(clip.fps).limit_denominator(1001)
    frames = (clip.render(n) for n in range(1, clip.frames + 1))
    stamps = [Fraction(i) / rate for i in range(clip.frames + 1)]  # + the end of the last
    return _write(path, frames, stamps, (clip.width, clip.height), rate)


def write_vfr_clip(frames: Sequence[np.ndarray], times: Sequence[float], path: Path) -> Path:
    """Encode BGR pictures shown at the given times in seconds (increasing, the first usually 0):
    a variable-frame-rate .mp4 or .mkv, times kept to the millisecond. The last picture lasts
    as long as the gap before it."""
    if len(frames) != len(times) or len(frames) < 2:
        raise ValueError("give one time for each picture, and at least two pictures")
    if any(b <= a for a, b in itertools.pairwise(times)):
        raise ValueError("the times must increase")
    if path.suffix not in (".mp4", ".mkv"):
        raise ValueError(f"a variable-frame-rate clip is .mp4 or .mkv, not {path.suffix!r}")
    stamps = [Fraction(round(t * 1000), 1000) for t in times]
    stamps.append(2 * stamps[-1] - stamps[-2])
    height, width = frames[0].shape[:2]
    return _write(path, iter(frames), stamps, (width, height), None)


def encoder_for(suffix: str) -> str:
    """The codec `write_clip` uses for a file suffix with this PyAV build."""
    for name in _CODECS.get(suffix, ()):
        try:
            av.codec.Codec(name, "w")
        except av.codec.codec.UnknownCodecError:
            continue
        return name
    raise ValueError(f"no encoder for {suffix!r} files in this PyAV build "
                     f"(suffixes: {', '.join(_FORMATS)})")


def _write(path: Path, frames: Iterable[np.ndarray], stamps: Sequence[Fraction],
           size: tuple[int, int], rate: Fraction | None) -> Path:
    """Picture i is shown from stamps[i] to stamps[i + 1]; written to a .partial file first."""
    codec = encoder_for(path.suffix)
    partial = path.with_name(path.name + ".partial")
    options = {"movflags": "+faststart"} if path.suffix in (".mp4", ".mov") else {}
    time_base = 1 / rate if rate is not None else Fraction(1, 1000)
    encoder_options = dict(_OPTIONS.get(codec, {}))
    if rate is None:  # B-frames would make the muxer derive a wrong length from the dts
        encoder_options["bf"] = "0"
    try:
        with av.open(str(partial), "w", format=_FORMATS[path.suffix], options=options) as out:
            stream = cast(av.VideoStream,
                          out.add_stream(codec, rate=rate, options=encoder_options))
            stream.width, stream.height = size
            stream.pix_fmt = "yuv420p"
            stream.time_base = time_base
            stream.codec_context.time_base = time_base
            if codec not in _OPTIONS or codec == "libvpx":
                stream.bit_rate = _BITRATE
            lengths = {int(a / time_base): b - a for a, b in itertools.pairwise(stamps)}
            for image, start in zip(frames, stamps, strict=False):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
                frame.pts = int(start / time_base)
                frame.time_base = time_base
                _mux(out, stream.encode(frame), lengths)
            _mux(out, stream.encode(None), lengths)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(path)
    return path


def _mux(out: av.container.OutputContainer, packets: list[av.Packet],
         lengths: dict[int, Fraction]) -> None:
    """Mux with each packet's duration set (encoders leave it 0; the muxer would guess the
    last picture's, and so the file's length)."""
    for packet in packets:
        if packet.pts is not None and packet.time_base is not None and packet.pts in lengths:
            packet.duration = int(lengths[packet.pts] / packet.time_base)
        out.mux(packet)
