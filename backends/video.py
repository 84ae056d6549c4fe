"""Video decoding by Label Studio's frame numbers, with the checks every backend relies on.

Label Studio numbers frames from 1 and shows frame n at `currentTime = (n - 1) / framerate`,
where `framerate` is the label config's (`<Video frameRate=...>`, default 24), not the file's.
So frame n is the picture a browser shows at that time: the last decoded frame whose
presentation time (relative to the stream's start) is <= (n - 1) / framerate + 1 ms, or the
first frame if none is. That holds for variable-frame-rate files and for files whose real
rate differs from `framerate` (pictures are then repeated or skipped). The video is
`ceil(duration * framerate)` frames long.

Decoding is lazy (one picture in memory at a time); every failure is a `VideoError` whose
message says what is wrong and what to fix.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import av.error
import numpy as np

from labelpilot.backends.images import DEFAULT_MAX_PIXELS

DEFAULT_MAX_VIDEO_SECONDS = 3600.0  # the default of LABELPILOT_MAX_VIDEO_SECONDS
MAX_FRAMERATE = 240.0
_TOLERANCE = 0.001  # a browser shows a frame whose time is up to 1 ms after currentTime
_AV_ERRORS = (av.error.FFmpegError, OSError, ValueError, EOFError, RuntimeError, MemoryError)
_IMAGE_SIGNATURES = (
    (0, b"\x89PNG\r\n\x1a\n", "PNG"), (0, b"\xff\xd8\xff", "JPEG"), (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"), (0, b"BM", "BMP"), (0, b"II*\x00", "TIFF"), (0, b"MM\x00*", "TIFF"),
    (8, b"WEBP", "WebP"),
)
# ISO-BMFF brands of still images (HEIF, AVIF): same box structure as MP4, but not a video
_IMAGE_BRANDS = {b"heic": "HEIF", b"heix": "HEIF", b"mif1": "HEIF", b"msf1": "HEIF",
                 b"heim": "HEIF", b"heis": "HEIF", b"avif": "AVIF"}


class VideoError(ValueError):
    """The bytes are not a video the backends can use; the message says what to fix."""


@dataclass(frozen=True)
class VideoInfo:
    """What the file's header says (duration in seconds; fps is the file's own rate)."""

    width: int
    height: int
    duration: float
    fps: float
    codec: str
    container: str


@dataclass(frozen=True, slots=True)
class VideoFrame:
    """Label Studio frame `number` (1-based), shown at `time` = (number - 1) / framerate."""

    number: int
    time: float
    image: np.ndarray  # BGR uint8, HxWx3


def check_framerate(framerate: float) -> float:
    """The label config's frame rate as a float, or a VideoError if it is not usable."""
    try:
        value = float(framerate)
    except (TypeError, ValueError) as exc:
        raise VideoError(f"the frame rate {framerate!r} is not a number: set frameRate on "
                         "the <Video> tag to the video's frames per second") from exc
    if not (math.isfinite(value) and 0 < value <= MAX_FRAMERATE):
        raise VideoError(f"the frame rate {framerate!r} is not between 0 and {MAX_FRAMERATE:g} "
                         "frames per second: set frameRate on the <Video> tag to the video's "
                         "frames per second")
    return value


def frame_count(duration: float, framerate: float) -> int:
    """How many frames Label Studio counts in a video: ceil(duration * framerate), at least 1."""
    return max(1, math.ceil(duration * framerate - 1e-6))


def probe_video(data: bytes, *, max_seconds: float = DEFAULT_MAX_VIDEO_SECONDS,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> VideoInfo:
    """Read the header (and, if it has no duration, the packet times; nothing is decoded)."""
    _sniff(data)
    try:
        with av.open(io.BytesIO(data), "r") as container:
            return _info(container, _video_stream(container), max_seconds, max_pixels)
    except VideoError:
        raise
    except _AV_ERRORS as exc:
        raise _unreadable(exc) from exc


def read_frames(data: bytes, framerate: float, *,
                max_seconds: float = DEFAULT_MAX_VIDEO_SECONDS,
                max_pixels: int = DEFAULT_MAX_PIXELS, first: int = 1, last: int | None = None,
                stride: int = 1) -> Iterator[VideoFrame]:
    """Label Studio frames first, first + stride, ... up to last (inclusive; default the video's
    last frame), decoded lazily. The arguments and the header are checked now; faults in the
    picture data are raised when met, after the frames before them were yielded."""
    rate = check_framerate(framerate)
    if first < 1 or stride < 1 or (last is not None and last < first):
        raise VideoError(f"frames {first}..{last} every {stride} is not a valid range: "
                         "frames count from 1 and the stride is at least 1")
    info = probe_video(data, max_seconds=max_seconds, max_pixels=max_pixels)
    total = frame_count(info.duration, rate)
    if last is None:
        last = total
    if last > total:
        raise VideoError(f"frame {last} is past the end of the video: it has {total} frames at "
                         f"{rate:g} frames per second ({info.duration:.3f} s)")
    return _decode(data, rate, info, range(first, last + 1, stride), max_seconds, max_pixels)


def _decode(data: bytes, rate: float, info: VideoInfo, numbers: range, max_seconds: float,
            max_pixels: int) -> Iterator[VideoFrame]:
    """The (n - 1) / framerate rule: hold the latest decoded picture until one starts after the
    wanted time, then hand out the held one for every wanted time before it."""
    wanted = iter(numbers)
    number: int | None = next(wanted, None)
    held: av.VideoFrame | None = None
    held_time = 0.0
    cached: tuple[av.VideoFrame, np.ndarray] | None = None

    def picture(frame: av.VideoFrame) -> np.ndarray:
        nonlocal cached
        if cached is not None and cached[0] is frame:
            return cached[1].copy()  # the same picture again: callers may draw on theirs
        cached = (frame, frame.to_ndarray(format="bgr24"))
        return cached[1]

    try:
        with av.open(io.BytesIO(data), "r") as container:
            stream = _video_stream(container)
            stream.thread_type = "AUTO"
            start = _start_time(stream)
            for frame in container.decode(stream):
                if number is None:
                    return
                time = _frame_time(frame, start, held_time)
                if time > max_seconds:
                    raise _too_long(time, max_seconds)
                _check_pixels(frame.width, frame.height, max_pixels)
                while number is not None and time > (number - 1) / rate + _TOLERANCE:
                    # a picture starting after the wanted time: the held one (or, before the
                    # first picture, this one) is what the browser shows
                    shown = held if held is not None else frame
                    yield VideoFrame(number, (number - 1) / rate, picture(shown))
                    number = next(wanted, None)
                held, held_time = frame, time
    except VideoError:
        raise
    except _AV_ERRORS as exc:
        raise VideoError(f"the video is corrupt or truncated: decoding failed at {held_time:.2f}"
                         f" s of {info.duration:.2f} s ({exc}); upload it again or re-encode it"
                         ) from exc
    if held is None:
        raise VideoError(f"the video has no frames that can be decoded (its header says "
                         f"{info.duration:.2f} s): it is truncated or corrupt; upload it again "
                         "or re-encode it, e.g. ffmpeg -i in.mp4 -c:v libx264 out.mp4")
    # a picture lasts until the next one: the last starts about one frame before the end
    if number is not None and held_time < min(0.95 * info.duration, info.duration - 1.0):
        raise VideoError(f"the video is truncated: its header says {info.duration:.2f} s but "
                         f"frames stop at {held_time:.2f} s; upload the whole file")
    while number is not None:  # the last picture stays on screen to the end
        yield VideoFrame(number, (number - 1) / rate, picture(held))
        number = next(wanted, None)


def _info(container: av.container.InputContainer, stream: av.VideoStream, max_seconds: float,
          max_pixels: int) -> VideoInfo:
    ctx = stream.codec_context
    width, height = int(ctx.width or 0), int(ctx.height or 0)
    if width <= 0 or height <= 0:
        raise VideoError("the video stream has no picture size: the file is corrupt; "
                         "re-encode it, e.g. ffmpeg -i in.mp4 -c:v libx264 out.mp4")
    _check_pixels(width, height, max_pixels)
    duration = _header_duration(container, stream)
    if duration is not None and duration > max_seconds:
        raise _too_long(duration, max_seconds, header=True)
    packets = 0
    if duration is None or duration <= 0:
        duration, packets = _packet_duration(container, stream, max_seconds)
    if duration <= 0:
        raise VideoError("the video has no frames (its duration is 0 s): upload a video "
                         "with at least one frame")
    fps = _stream_rate(stream) or (packets / duration if packets else 0.0)
    return VideoInfo(width, height, duration, fps, ctx.name, container.format.name)


def _header_duration(container: av.container.InputContainer,
                     stream: av.VideoStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def _packet_duration(container: av.container.InputContainer, stream: av.VideoStream,
                     max_seconds: float) -> tuple[float, int]:
    """The end of the last packet, for files whose header has no duration (no decoding)."""
    start = _start_time(stream)
    end, count = 0.0, 0
    base = stream.time_base or Fraction(1, 1000)
    step = 1 / (_stream_rate(stream) or 25.0)
    for packet in container.demux(stream):
        if packet.pts is None or packet.size == 0:
            continue
        count += 1
        time = float(packet.pts * base) - start
        length = float(packet.duration * base) if packet.duration else step
        end = max(end, time + length)
        if end > max_seconds:
            raise _too_long(end, max_seconds)
    return end, count


def _stream_rate(stream: av.VideoStream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 0.0


def _start_time(stream: av.VideoStream) -> float:
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def _frame_time(frame: av.VideoFrame, start: float, previous: float) -> float:
    if frame.pts is None or frame.time_base is None:
        return previous  # no timestamp: the decoder's order is all there is
    return float(frame.pts * frame.time_base) - start


def _video_stream(container: av.container.InputContainer) -> av.VideoStream:
    if not container.streams.video:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
        raise VideoError(f"the file has no video stream (streams: {kinds}): upload a video, "
                         "or use an <Audio> tag for sound")
    return container.streams.video[0]


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise VideoError(f"the video is {width}x{height} = {width * height} pixels a frame, over "
                         f"the limit of {max_pixels} (set LABELPILOT_MAX_IMAGE_PIXELS to raise it)")


def _too_long(seconds: float, max_seconds: float, *, header: bool = False) -> VideoError:
    length = f"{seconds:.0f} s" if header else f"at least {seconds:.1f} s"
    return VideoError(f"the video is {length} long, over the limit of {max_seconds:g} s "
                      "(set LABELPILOT_MAX_VIDEO_SECONDS to raise it)")


def _sniff(data: bytes) -> None:
    """Refuse what is plainly not a video before FFmpeg guesses at it (it reads images too)."""
    if not data:
        raise VideoError("the video is empty (0 bytes)")
    kind = image_kind(data)
    if kind is not None:
        raise VideoError(f"this is an image ({kind}), not a video: use an <Image> tag for it")


def image_kind(data: bytes) -> str | None:
    """The image format the bytes start with (PNG, JPEG, GIF, BMP, TIFF, WebP, HEIF, AVIF)."""
    for offset, magic, kind in _IMAGE_SIGNATURES:
        if data[offset:offset + len(magic)] == magic and (kind != "WebP" or data[:4] == b"RIFF"):
            return kind
    if data[4:8] == b"ftyp":
        return _IMAGE_BRANDS.get(data[8:12])
    return None


def _unreadable(exc: BaseException) -> VideoError:
    return VideoError(f"the data is not a video FFmpeg can read, or it is corrupt or truncated "
                      f"({exc}): upload an MP4, WebM, MOV or AVI file")
