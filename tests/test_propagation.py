"""Keyframe propagation on generated clips: the shapes model's tracks (or template matching)
fill the frames between an annotator's keyframes, landing exactly on them.

The clips' objects make a U-turn between the anchors, so the editor's own linear interpolation
between two keyframes is far off; the measured mean IoUs are printed (run with -s)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from labelpilot.backends.keyframes import box_iou, interpolate
from labelpilot.backends.propagation import Propagated, propagate
from labelpilot.backends.shapes import BBox
from labelpilot.backends.tracking import track_video
from labelpilot.backends.tracks import Keyframe, Track, TrackBox
from labelpilot.backends.video import VideoFrame, read_frames
from labelpilot.backends.yolo import YoloModel
from labelpilot.synthetic_video import SyntheticClip, TruthTrack, make_clip, write_clip

LAST = 60
A, B = 5, 45  # the annotator's two keyframes: before and after the U-turn
EPS = 1e-9


@pytest.fixture(scope="module")
def clip() -> SyntheticClip:
    """Object 1 passes behind a pillar (the tracker switches IDs there), object 2 leaves."""
    return make_clip(3, frames=LAST, objects=2)


@pytest.fixture(scope="module")
def video(clip: SyntheticClip, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_clip(clip, tmp_path_factory.mktemp("propagation") / "clip.mp4").read_bytes()


@pytest.fixture(scope="module")
def pictures(clip: SyntheticClip, video: bytes) -> dict[int, np.ndarray]:
    return {f.number: f.image for f in read_frames(video, clip.fps)}


@pytest.fixture(scope="module")
def tracks(clip: SyntheticClip, video: bytes, shapes_model: Path) -> list[Track]:
    return track_video(YoloModel(str(shapes_model)), read_frames(video, clip.fps))


@pytest.fixture(scope="module")
def split_tracks(clip: SyntheticClip, video: bytes, shapes_model: Path) -> list[Track]:
    """The tracker's own tracks, not stitched across the pillar: object 1 changes id there."""
    return track_video(YoloModel(str(shapes_model)), read_frames(video, clip.fps),
                       stitch_gap=0)


def linear(truth: TruthTrack, a: int = A, b: int = B) -> dict[int, BBox]:
    """What the editor draws from the two keyframes alone."""
    return interpolate([Keyframe(a, truth.boxes[a]), Keyframe(b, truth.boxes[b])], LAST)


def mean_iou(boxes: dict[int, BBox], truth: TruthTrack, frames: range) -> float:
    """Over the frames where the object counts as visible; a missing box scores 0."""
    scored = [f for f in frames if f in truth.boxes]
    assert len(scored) > 10
    return float(np.mean([box_iou(boxes[f], truth.boxes[f]) if f in boxes else 0.0
                          for f in scored]))


def track_box(tracks: list[Track], frame: int, near: BBox) -> BBox:
    """The tracked box on a frame that best matches a box (the detection under an anchor)."""
    seen = [b.box for t in tracks for b in t.boxes if b.frame == frame]
    return max(seen, key=lambda box: box_iou(box, near))


def assert_draws(result: Propagated, anchors: dict[int, BBox], min_iou: float) -> None:
    """The keyframes draw every dense box within the bound, and the anchors exactly."""
    drawn = interpolate(result.keyframes, LAST)
    for frame, box in result.boxes.items():
        assert box_iou(drawn[frame], box) >= min_iou - EPS, frame
    keys = {k.frame: k for k in result.keyframes}
    for frame, box in anchors.items():
        assert result.boxes[frame] == box and keys[frame].box == box and drawn[frame] == box


# --- with the tracker's tracks ---------------------------------------------------------------


def test_tracked_propagation_follows_the_u_turn_that_linear_interpolation_cuts(clip, tracks):
    between = range(A + 1, B)
    for truth in clip.tracks:
        anchors = {A: truth.boxes[A], B: truth.boxes[B]}
        result = propagate(anchors, lambda n: clip.render(n), LAST, tracks=tracks)
        got, plain = mean_iou(result.boxes, truth, between), mean_iou(linear(truth), truth,
                                                                       between)
        print(f"\nobject {truth.track_id} ({truth.class_name}), frames {A}..{B}: "
              f"mean IoU propagated {got:.3f}, linear {plain:.3f}, "
              f"{len(result.keyframes)} keyframes")
        assert got >= 0.8 and got >= plain + 0.5, (got, plain)  # measured: ~0.90 vs ~0.09-0.18
        assert set(result.boxes) >= set(range(A, B + 1))
        assert_draws(result, anchors, 0.85)


def test_an_id_switch_between_the_anchors_blends_both_tracks(clip, split_tracks):
    """Object 1's track ends behind the pillar and a new one starts after it: the frames are
    filled from both ends, and linearly only across the gap where neither saw it."""
    tracks = split_tracks
    truth = clip.tracks[0]
    ids = {t.track_id for t in tracks for b in t.boxes
           if b.frame in (A, B) and box_iou(b.box, truth.boxes[b.frame]) >= 0.5}
    assert len(ids) == 2, "the tracker no longer switches IDs at the pillar: pick another clip"
    result = propagate({A: truth.boxes[A], B: truth.boxes[B]}, clip.render, LAST, tracks=tracks)
    hidden = next(f for f in range(A + 1, B) if f not in truth.boxes)
    seen_before = range(A + 1, hidden)  # the frames before it goes behind the pillar
    assert len(seen_before) >= 3
    assert mean_iou(result.boxes, truth, range(B - 15, B)) >= 0.8
    # the last of these frames is where it starts to pass behind the pillar: 0.69-0.75 there
    # depending on the machine the shapes model was trained on, 0.88-0.98 before
    assert all(box_iou(result.boxes[f], truth.boxes[f]) >= 0.65 for f in seen_before)
    assert all(box_iou(result.boxes[f], truth.boxes[f]) >= 0.85 for f in seen_before[:-1])


def test_the_annotators_offset_is_carried_and_interpolated(clip, tracks):
    """An anchor 6 px bigger than the detection: the result stays 6 px bigger than the track
    where both anchors are; with only one anchor offset, the offset fades out linearly."""
    truth = clip.tracks[1]
    at_a, at_b = track_box(tracks, A, truth.boxes[A]), track_box(tracks, B, truth.boxes[B])

    def grown(box: BBox, by: float) -> BBox:
        return BBox(box.x1 - by, box.y1 - by, box.x2 + by, box.y2 + by)

    both = propagate({A: grown(at_a, 3), B: grown(at_b, 3)}, clip.render, LAST, tracks=tracks)
    fading = propagate({A: grown(at_a, 3), B: at_b}, clip.render, LAST, tracks=tracks)
    plain = propagate({A: at_a, B: at_b}, clip.render, LAST, tracks=tracks)
    for f in range(A + 1, B):
        t = (f - A) / (B - A)
        detected, offset = np.array(astuple(plain.boxes[f])), np.array([-3, -3, 3, 3])
        np.testing.assert_allclose(astuple(both.boxes[f]), detected + offset, atol=1e-9)
        np.testing.assert_allclose(astuple(fading.boxes[f]), detected + offset * (1 - t),
                                   atol=1e-9)
    assert_draws(both, {A: grown(at_a, 3), B: grown(at_b, 3)}, 0.85)


def astuple(box: BBox) -> tuple[float, float, float, float]:
    return box.x1, box.y1, box.x2, box.y2


def test_forward_follows_the_object_until_it_leaves_and_ends_the_box(clip, tracks):
    leaving = clip.tracks[1]
    gone = max(leaving.boxes)
    assert gone < LAST - 5  # the object does leave before the end
    anchors = {A: leaving.boxes[A], 30: leaving.boxes[30]}
    result = propagate(anchors, clip.render, LAST, tracks=tracks)
    print(f"\nleaving object: lost after frame {result.lost_after}, truth's last frame {gone}")
    assert result.lost_after is not None and abs(result.lost_after - gone) <= 3
    assert max(result.boxes) == result.lost_after
    assert mean_iou(result.boxes, leaving, range(31, result.lost_after + 1)) >= 0.8
    assert not result.keyframes[-1].enabled
    assert max(interpolate(result.keyframes, LAST)) == result.lost_after  # the box ends there
    staying = clip.tracks[0]
    kept = propagate({40: staying.boxes[40]}, clip.render, LAST, tracks=tracks)
    assert kept.lost_after is None and kept.keyframes[-1].enabled and max(kept.boxes) == LAST
    still = propagate(anchors, clip.render, LAST, tracks=tracks, forward=False)
    assert max(still.boxes) == 30 and still.lost_after is None


def test_backward_fills_the_frames_before_the_first_anchor_only_when_asked(clip, tracks):
    truth = clip.tracks[1]
    anchors = {20: truth.boxes[20], 30: truth.boxes[30]}
    assert min(propagate(anchors, clip.render, LAST, tracks=tracks).boxes) == 20
    result = propagate(anchors, clip.render, LAST, tracks=tracks, backward=True)
    assert min(result.boxes) <= 3
    assert mean_iou(result.boxes, truth, range(min(result.boxes), 20)) >= 0.8


# --- without tracks: template matching on the pictures ---------------------------------------


def test_appearance_fallback_without_tracks(clip, video, pictures):
    between = range(A + 1, B)
    for truth in clip.tracks:
        anchors = {A: truth.boxes[A], B: truth.boxes[B]}
        frames: Iterator[VideoFrame] = read_frames(video, clip.fps)  # read once, on demand
        result = propagate(anchors, frames, LAST)
        got, plain = mean_iou(result.boxes, truth, between), mean_iou(linear(truth), truth,
                                                                       between)
        print(f"\nobject {truth.track_id} without tracks: mean IoU template matching {got:.3f}, "
              f"linear {plain:.3f}; lost after {result.lost_after} (truth {max(truth.boxes)})")
        assert got >= 0.85 and got >= plain + 0.5, (got, plain)  # measured: ~0.97-0.99
        assert_draws(result, anchors, 0.85)
        again = propagate(anchors, pictures.__getitem__, LAST)  # a callable gives the same
        assert again.boxes == result.boxes


def test_an_anchor_no_track_matches_falls_back_to_the_pictures(clip, tracks, pictures):
    """Tracks of other objects only (a class the model does not know): template matching."""
    truth = clip.tracks[1]
    others = [t for t in tracks if all(box_iou(b.box, truth.boxes.get(b.frame, BBox(0, 0, 0, 0)))
                                       < 0.3 for b in t.boxes)]
    anchors = {A: truth.boxes[A], B: truth.boxes[B]}
    result = propagate(anchors, pictures.__getitem__, LAST, tracks=others)
    assert mean_iou(result.boxes, truth, range(A + 1, B)) >= 0.85


def test_with_no_evidence_the_result_is_the_editors_interpolation(clip):
    """Fresh noise on every frame: nothing to follow, so the anchors are interpolated linearly
    and the box is kept to the end, exactly as the editor draws the two keyframes."""
    truth = clip.tracks[1]
    anchors = {A: truth.boxes[A], B: truth.boxes[B]}

    def noise(n: int) -> np.ndarray:
        return np.random.default_rng(n).integers(0, 256, (clip.height, clip.width, 3), np.uint8)

    result = propagate(anchors, noise, LAST, tracks=[])
    plain = linear(truth)
    for f in range(A, B + 1):
        np.testing.assert_allclose(astuple(result.boxes[f]), astuple(plain[f]), atol=1e-9)
    assert result.lost_after == B and not result.keyframes[-1].enabled


# --- hand-made tracks: the arithmetic of snapping and blending -------------------------------


def moving(track_id: int, frames: range, x0: float = 0.0) -> Track:
    """A 10x10 box moving 2 px a frame to the right."""
    return Track(track_id, "shape", tuple(
        TrackBox(f, BBox(x0 + 2 * f, 50, x0 + 2 * f + 10, 60)) for f in frames))


def never(n: int) -> np.ndarray:
    raise AssertionError(f"frame {n} was read although every anchor has a track")


def test_a_track_through_both_anchors_gets_the_correction_ramp_and_never_reads_frames():
    track = moving(1, range(1, 41))
    anchors = {10: BBox(19, 49, 31, 61), 30: BBox(60, 50, 70, 60)}  # 1 px bigger, then exact
    result = propagate(anchors, never, 40, tracks=[track])
    for f in range(11, 30):
        k = 1 - (f - 10) / 20
        expected = (2 * f - k, 50 - k, 2 * f + 10 + k, 60 + k)
        np.testing.assert_allclose(astuple(result.boxes[f]), expected, atol=1e-9)
    assert result.lost_after is None and max(result.boxes) == 40


def test_two_tracks_are_blended_by_distance_and_a_gap_is_interpolated():
    first = moving(1, range(1, 21))  # lost after frame 20 ...
    second = moving(2, range(26, 51), x0=4)  # ... found again at 26, 4 px further right
    anchors = {10: BBox(20, 50, 30, 60), 40: BBox(84, 50, 94, 60)}
    result = propagate(anchors, never, 50, tracks=[first, second])
    for f in range(11, 21):  # only the first track: its box
        assert result.boxes[f] == BBox(2 * f, 50, 2 * f + 10, 60)
    for f in range(26, 40):  # only the second
        assert result.boxes[f] == BBox(4 + 2 * f, 50, 14 + 2 * f, 60)
    for f in range(21, 26):  # neither: linear between frames 20 and 26
        x = 40 + (56 - 40) * (f - 20) / 6
        np.testing.assert_allclose(astuple(result.boxes[f]), (x, 50, x + 10, 60), atol=1e-9)
    overlap = moving(3, range(1, 51), x0=2)  # another track over both: blended by distance
    mixed = propagate(anchors, never, 50, tracks=[first, overlap])
    f = 15
    w = (f - 10) / 30
    x = (1 - w) * 2 * f + w * (2 * f + 2 - (2 * 40 + 2 - 84))
    np.testing.assert_allclose(astuple(mixed.boxes[f])[0], x, atol=1e-9)


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("anchors", [
    {}, {0: BBox(1, 1, 5, 5)}, {LAST + 1: BBox(1, 1, 5, 5)}, {3: BBox(5, 5, 5, 9)},
    {3: BBox(1, 1, float("nan"), 5)},
])
def test_bad_anchors_are_refused(anchors):
    with pytest.raises(ValueError):
        propagate(anchors, never, LAST, tracks=[])


def test_a_bad_last_frame_is_refused():
    with pytest.raises(ValueError):
        propagate({1: BBox(1, 1, 5, 5)}, never, 0)
