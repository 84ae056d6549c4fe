"""Video decoding by Label Studio frame numbers, the generated clips' truth, and bad inputs."""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np
import pytest

from labelpilot.backends.images import ImageError, decode_image
from labelpilot.backends.video import (
    VideoError,
    VideoFrame,
    check_framerate,
    frame_count,
    probe_video,
    read_frames,
)
from labelpilot.synthetic import CLASS_COLORS
from labelpilot.synthetic_video import SyntheticClip, make_clip, write_clip, write_vfr_clip

SUFFIXES = (".mp4", ".webm", ".avi", ".mov")


@pytest.fixture(scope="module")
def clip() -> SyntheticClip:
    return make_clip(7, frames=24, fps=12.0, objects=3)


@pytest.fixture(scope="module")
def clip_files(clip: SyntheticClip, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("clips")
    return {s: write_clip(clip, root / f"clip{s}").read_bytes() for s in SUFFIXES}


def small(image: np.ndarray) -> np.ndarray:
    """A 4x smaller picture: the per-frame noise averages out, the shapes stay."""
    h, w = image.shape[:2]
    return cv2.resize(image, (w // 4, h // 4), interpolation=cv2.INTER_AREA).astype(np.int16)


def diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(small(a) - small(b)).mean())


@pytest.fixture(scope="module")
def renders(clip: SyntheticClip) -> dict[int, np.ndarray]:
    return {n: small(clip.render(n)) for n in range(1, clip.frames + 1)}


def best_match(renders: dict[int, np.ndarray], frame: VideoFrame) -> int:
    """The clip frame whose render is closest to a decoded picture."""
    picture = small(frame.image)
    return min(renders, key=lambda n: float(np.abs(picture - renders[n]).mean()))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_probe_and_frames_match_the_render(clip, clip_files, suffix):
    info = probe_video(clip_files[suffix])
    assert (info.width, info.height) == (clip.width, clip.height)
    assert info.duration == pytest.approx(clip.frames / clip.fps, abs=0.01)
    assert info.fps == pytest.approx(clip.fps)
    frames = list(read_frames(clip_files[suffix], clip.fps))
    assert [f.number for f in frames] == list(range(1, clip.frames + 1))
    assert [f.time for f in frames] == pytest.approx([i / clip.fps for i in range(clip.frames)])
    for f in frames:
        assert f.image.shape == (clip.height, clip.width, 3) and f.image.dtype == np.uint8
        here = diff(f.image, clip.render(f.number))
        assert here < 3.0, (f.number, here)
        others = [diff(f.image, clip.render(n)) for n in (f.number - 1, f.number + 1)
                  if 1 <= n <= clip.frames]
        assert all(here < other for other in others)  # and not its neighbour
    # the class colours survive the encoding (the detector relies on them)
    track = clip.tracks[0]
    number, box = next(iter(track.boxes.items()))
    centre = frames[number - 1].image[int((box.y1 + box.y2) / 2) + 5, int((box.x1 + box.x2) / 2)]
    assert np.abs(centre.astype(int) - CLASS_COLORS[track.class_name]).max() < 25


@pytest.mark.parametrize("suffix", (".mp4", ".webm"))
def test_other_framerates_repeat_or_skip_pictures(clip, clip_files, renders, suffix):
    data = clip_files[suffix]
    double = list(read_frames(data, clip.fps * 2))
    assert len(double) == frame_count(clip.frames / clip.fps, clip.fps * 2) == 2 * clip.frames
    # LS frame n is shown at (n - 1) / 24 s: picture floor((n - 1) / 2) + 1 of the 12 fps clip
    for f in double[:12]:
        assert best_match(renders, f) == (f.number - 1) // 2 + 1
    assert np.array_equal(double[4].image, double[5].image)
    half = list(read_frames(data, clip.fps / 2))
    assert len(half) == clip.frames // 2
    for f in half[:8]:
        assert best_match(renders, f) == 2 * (f.number - 1) + 1  # every other picture


def numbered(index: int) -> np.ndarray:
    """A picture that says its index: a solid gray level, 30 apart."""
    return np.full((64, 96, 3), 15 + 30 * index, np.uint8)


@pytest.mark.parametrize("suffix", (".mp4", ".mkv"))
@pytest.mark.parametrize("framerate", (10.0, 100.0, 24.0))
def test_variable_frame_rate_maps_each_frame_to_the_picture_on_screen(tmp_path, suffix,
                                                                      framerate):
    times = [0.0, 0.04, 0.25, 0.3, 0.7, 0.71, 1.2, 1.5]
    path = write_vfr_clip([numbered(i) for i in range(len(times))], times, tmp_path / f"v{suffix}")
    data = path.read_bytes()
    info = probe_video(data)
    assert info.duration == pytest.approx(1.8)  # the last picture lasts as the gap before
    frames = list(read_frames(data, framerate))
    assert len(frames) == frame_count(info.duration, framerate)
    for f in frames:
        shown = max(i for i, t in enumerate(times) if t <= (f.number - 1) / framerate + 0.001)
        assert round((float(f.image.mean()) - 15) / 30) == shown, (f.number, f.time)


def test_first_last_and_stride(clip, clip_files, renders):
    data = clip_files[".mp4"]
    frames = list(read_frames(data, clip.fps, first=3, last=15, stride=4))
    assert [f.number for f in frames] == [3, 7, 11, 15]
    assert [best_match(renders, f) for f in frames] == [3, 7, 11, 15]
    assert [f.number for f in read_frames(data, clip.fps, first=20, stride=2)] == [20, 22, 24]
    assert [f.number for f in read_frames(data, clip.fps, first=24)] == [24]
    for bad in ({"first": 0}, {"stride": 0}, {"first": 5, "last": 4}, {"last": 25}):
        with pytest.raises(VideoError, match="frame"):
            read_frames(data, clip.fps, **bad)


def test_truth_boxes_follow_the_rules():
    clip = make_clip(11, frames=48, objects=2, occlusion=True, leaving=True)
    assert len({t.class_name for t in clip.tracks}) == 2
    occluded, leaving = clip.tracks
    # the last object leaves for good before the end
    gone = max(leaving.boxes) + 1
    assert 24 < gone <= clip.frames - 3
    assert all(n in leaving.boxes for n in range(1, gone))
    # the first passes behind the pillar: a gap between seen frames, then seen again
    seen = sorted(occluded.boxes)
    gaps = [(a, b) for a, b in itertools.pairwise(seen) if b - a > 1]
    assert len(gaps) == 1 and gaps[0][1] - gaps[0][0] >= 4
    assert seen[0] == 1 and seen[-1] == clip.frames
    for track in clip.tracks:
        for box in track.boxes.values():
            assert 0 <= box.x1 < box.x2 <= clip.width and 0 <= box.y1 < box.y2 <= clip.height
    # the pillar hides the object in the gap: its colour is gone from the picture
    color = np.array(CLASS_COLORS[occluded.class_name])
    def colour_pixels(number: int) -> int:
        return int((np.abs(clip.render(number).astype(int) - color).max(axis=2) < 20).sum())

    assert colour_pixels((gaps[0][0] + gaps[0][1]) // 2) < 50
    assert colour_pixels(seen[0]) > 500


def test_truth_without_pillar_or_exit_and_render_is_deterministic():
    clip = make_clip(5, frames=30, objects=3, occlusion=False, leaving=False)
    assert len({t.class_name for t in clip.tracks}) == 3
    assert all(sorted(t.boxes) == list(range(1, 31)) for t in clip.tracks)
    again = make_clip(5, frames=30, objects=3, occlusion=False, leaving=False)
    assert np.array_equal(again.render(17), clip.render(17))  # order-independent
    assert not np.array_equal(clip.render(16), clip.render(17))
    boxes = [t.boxes[10] for t in clip.tracks]  # never overlapping
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a.x2 <= b.x1 or b.x2 <= a.x1 or a.y2 <= b.y1 or b.y2 <= a.y1
    side = boxes[0].x2 - boxes[0].x1
    assert clip.height / 4 - 1 <= side <= clip.height / 3


# --- errors ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def long_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("long")
    clip = make_clip(3, frames=96, objects=2)
    return {s: write_clip(clip, root / f"long{s}").read_bytes() for s in (".mp4", ".webm")}


def decode_all(data: bytes, framerate: float = 12.0, **kw) -> list[VideoFrame]:
    return list(read_frames(data, framerate, **kw))


@pytest.mark.parametrize("suffix", (".mp4", ".webm"))
@pytest.mark.parametrize("kept", (0.4, 0.85))
def test_truncated_file_is_refused(long_files, suffix, kept):
    """Cut early or late: the frames that remain are never stretched over the missing end."""
    data = long_files[suffix]
    with pytest.raises(VideoError, match="truncated"):
        decode_all(data[:int(len(data) * kept)])
    assert len(decode_all(data)) == 96


@pytest.mark.parametrize("suffix", (".mp4", ".webm"))
def test_corrupt_bytes_are_refused(long_files, suffix):
    data = bytearray(long_files[suffix])
    rng = np.random.default_rng(0)
    for i in rng.integers(len(data) // 4, len(data), 2000):
        data[i] = int(rng.integers(256))
    with pytest.raises(VideoError, match="corrupt"):
        decode_all(bytes(data))


@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (cv2.imencode(".png", numbered(2))[1].tobytes(), r"image \(PNG\), not a video"),
    (cv2.imencode(".jpg", numbered(2))[1].tobytes(), r"image \(JPEG\), not a video"),
    (np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
     "not a video"),
    (b"just some text, not a video at all\n" * 20, "not a video"),
])
def test_not_a_video(data, words):
    with pytest.raises(VideoError, match=words):
        probe_video(data)
    with pytest.raises(VideoError, match=words):
        read_frames(data, 24)


def test_audio_only_file_has_no_video_stream(tmp_path):
    import av

    path = tmp_path / "sound.wav"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate = 8000
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(VideoError, match="no video stream"):
        probe_video(path.read_bytes())


@pytest.mark.parametrize("suffix", (".mp4", ".mkv"))
def test_ten_hour_header_is_refused_before_decoding(tmp_path, suffix):
    pictures = [numbered(i) for i in range(3)]
    times = [0.0, 35999.0, 36000.0]  # the last picture lasts 1 s too
    data = write_vfr_clip(pictures, times, tmp_path / f"h{suffix}").read_bytes()
    with pytest.raises(VideoError, match=r"36001 s long, over the limit of 3600 s"):
        probe_video(data)
    with pytest.raises(VideoError, match="LABELPILOT_MAX_VIDEO_SECONDS"):
        read_frames(data, 24)
    assert probe_video(data, max_seconds=40000).duration > 36000


def test_video_without_duration_in_header_is_measured_and_limited(long_files):
    data = long_files[".webm"]
    at = data.find(b"\x44\x89\x88")  # the Segment's Duration element: make it an EBML Void
    assert at > 0
    data = data[:at] + b"\xec\x89" + bytes(9) + data[at + 11:]
    assert probe_video(data).duration == pytest.approx(8.0, abs=0.01)
    assert len(decode_all(data, stride=10)) == 10
    with pytest.raises(VideoError, match="at least .* long, over the limit of 5 s"):
        probe_video(data, max_seconds=5)


def test_limits_on_size_and_length(clip_files):
    data = clip_files[".mp4"]
    with pytest.raises(VideoError, match="256x192 = 49152 pixels.*LABELPILOT_MAX_IMAGE_PIXELS"):
        read_frames(data, 12, max_pixels=256 * 192 - 1)
    assert probe_video(data, max_pixels=256 * 192).width == 256
    with pytest.raises(VideoError, match="2 s long, over the limit of 1.5 s"):
        probe_video(data, max_seconds=1.5)


@pytest.mark.parametrize("framerate", [0, -1, math.nan, math.inf, 1e9, 241])
def test_absurd_framerate(clip_files, framerate):
    with pytest.raises(VideoError, match="frame rate"):
        check_framerate(framerate)
    with pytest.raises(VideoError, match="frameRate"):
        read_frames(clip_files[".mp4"], framerate)


def test_framerate_and_frame_count():
    assert check_framerate(24) == 24.0 and check_framerate(240) == 240.0
    assert frame_count(2.0, 12) == 24
    assert frame_count(2.01, 12) == 25  # a partial frame counts, as in Label Studio
    assert frame_count(0.0, 24) == 1
    assert frame_count(10 / 3, 3) == 10  # no extra frame from rounding


@pytest.mark.parametrize("suffix, kind", [
    (".mp4", "MP4"), (".mov", "MOV"), (".webm", "WebM"), (".avi", "AVI")])
def test_a_video_given_as_an_image_says_so(clip_files, suffix, kind):
    with pytest.raises(ImageError, match=rf"video \({kind}\), not an image: use a <Video> tag"):
        decode_image(clip_files[suffix])
    with pytest.raises(ImageError, match="not an image format"):
        decode_image(b"\x00" * 64)
