"""Keyframes: the editor's drawing rules, and thinning a tracker's dense boxes into keyframes."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

import pytest

from labelpilot.backends.keyframes import box_iou, interpolate, thin_track
from labelpilot.backends.shapes import BBox
from labelpilot.backends.tracks import Keyframe, TrackBox

EPS = 1e-9


def box_at(cx: float, cy: float, w: float = 60, h: float = 40) -> BBox:
    return BBox(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def track(frames: list[int], centre: Callable[[int], tuple[float, float]]) -> list[TrackBox]:
    return [TrackBox(f, box_at(*centre(f))) for f in frames]


def assert_reproduces(boxes: list[TrackBox], keys: list[Keyframe], last_frame: int,
                      min_iou: float) -> None:
    """The drawing covers exactly the tracked frames, each within the IoU bound."""
    drawn = interpolate(keys, last_frame)
    assert sorted(drawn) == [b.frame for b in boxes]
    worst = min(box_iou(drawn[b.frame], b.box) for b in boxes)
    assert worst >= min_iou - EPS, worst
    for key in keys:  # keyframes are placed on tracked frames, with the tracked box
        assert type(key.frame) is int and type(key.enabled) is bool
        assert key.box == next(b.box for b in boxes if b.frame == key.frame)


# --- box_iou -------------------------------------------------------------------------------


def test_box_iou() -> None:
    a = BBox(0, 0, 10, 10)
    assert box_iou(a, a) == 1.0
    assert box_iou(a, BBox(5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou(a, BBox(10, 0, 20, 10)) == 0.0  # touching edges
    assert box_iou(a, BBox(20, 20, 30, 30)) == 0.0
    assert box_iou(BBox(3, 3, 3, 3), BBox(3, 3, 3, 3)) == 1.0  # identical empty boxes
    assert box_iou(BBox(3, 3, 3, 3), BBox(4, 4, 4, 4)) == 0.0


# --- interpolate ---------------------------------------------------------------------------


def test_interpolation_is_linear_between_keyframes() -> None:
    keys = [Keyframe(1, BBox(0, 0, 10, 10)), Keyframe(11, BBox(100, 50, 120, 70), False)]
    drawn = interpolate(keys, 20)
    assert sorted(drawn) == list(range(1, 12))  # disabled last keyframe ends the box
    assert drawn[1] == BBox(0, 0, 10, 10)
    assert drawn[6] == BBox(50, 25, 65, 40)  # halfway: every corner at its midpoint
    assert (drawn[2].x1, drawn[2].y1, drawn[2].x2, drawn[2].y2) == pytest.approx((10, 5, 21, 16))
    assert drawn[11] == BBox(100, 50, 120, 70)


def test_disabled_keyframe_ends_the_box_until_the_next_keyframe() -> None:
    keys = [
        Keyframe(1, BBox(0, 0, 10, 10)),
        Keyframe(5, BBox(4, 0, 14, 10), enabled=False),
        Keyframe(9, BBox(50, 50, 60, 60)),
        Keyframe(10, BBox(52, 50, 62, 60), enabled=False),
    ]
    drawn = interpolate(keys, 30)
    assert sorted(drawn) == [1, 2, 3, 4, 5, 9, 10]
    assert drawn[3] == BBox(2, 0, 12, 10)
    assert drawn[5] == BBox(4, 0, 14, 10)  # drawn on its own frame


def test_enabled_last_keyframe_keeps_its_box_to_the_end() -> None:
    keys = [Keyframe(4, BBox(0, 0, 10, 10)), Keyframe(6, BBox(20, 0, 30, 10))]
    drawn = interpolate(keys, 9)
    assert sorted(drawn) == [4, 5, 6, 7, 8, 9]  # nothing before the first keyframe
    assert drawn[5] == BBox(10, 0, 20, 10)
    assert drawn[7] == drawn[9] == BBox(20, 0, 30, 10)


def test_interpolate_edge_cases() -> None:
    assert interpolate([], 10) == {}
    unsorted = [Keyframe(5, BBox(10, 0, 20, 10), False), Keyframe(1, BBox(0, 0, 10, 10))]
    assert interpolate(unsorted, 10)[3] == BBox(5, 0, 15, 10)
    # a keyframe past the end is never shown but still steers the frames before it
    drawn = interpolate([Keyframe(1, BBox(0, 0, 10, 10)), Keyframe(21, BBox(20, 0, 30, 10))], 11)
    assert sorted(drawn) == list(range(1, 12)) and drawn[11] == BBox(10, 0, 20, 10)
    with pytest.raises(ValueError):
        interpolate([Keyframe(2, BBox(0, 0, 1, 1)), Keyframe(2, BBox(0, 0, 2, 2))], 5)
    with pytest.raises(ValueError):
        interpolate([Keyframe(0, BBox(0, 0, 1, 1))], 5)
    with pytest.raises(ValueError):
        interpolate([], 0)


# --- thin_track ----------------------------------------------------------------------------


def test_straight_line_needs_two_keyframes() -> None:
    boxes = track(list(range(1, 101)), lambda f: (100 + 3 * f, 200 + 1.5 * f))
    keys = thin_track(boxes, last_frame=200)
    assert [(k.frame, k.enabled) for k in keys] == [(1, True), (100, False)]
    assert_reproduces(boxes, keys, 200, 0.9)


def test_growing_box_on_a_line_needs_two_keyframes() -> None:
    boxes = [TrackBox(f, BBox(10 + f, 10, 50 + 3 * f, 30 + 2 * f)) for f in range(1, 61)]
    assert len(thin_track(boxes, last_frame=60)) == 2


def test_a_turn_needs_three_keyframes() -> None:
    def corner(f: int) -> tuple[float, float]:  # right for 50 frames, then down
        return (100 + 4 * min(f, 50), 100 + 4 * max(f - 50, 0))

    boxes = track(list(range(1, 101)), corner)
    keys = thin_track(boxes, last_frame=100)
    assert len(keys) == 3
    assert 45 <= keys[1].frame <= 55
    assert [k.enabled for k in keys] == [True, True, True]  # the run ends on the last frame
    assert_reproduces(boxes, keys, 100, 0.9)


def test_jittery_smooth_track_stays_within_bound_with_few_keyframes() -> None:
    rng = random.Random(7)

    def wobble(f: int) -> tuple[float, float]:
        return (300 + 200 * math.sin(f / 60) + rng.gauss(0, 0.7),
                200 + 120 * math.cos(f / 80) + rng.gauss(0, 0.7))

    boxes = [TrackBox(f, box_at(*wobble(f), w=80, h=60)) for f in range(1, 301)]
    keys = thin_track(boxes, min_iou=0.9, last_frame=400)
    assert_reproduces(boxes, keys, 400, 0.9)
    assert len(keys) <= 30, len(keys)  # at most 10 % of the frames
    assert keys[-1].enabled is False


def test_higher_bound_means_more_keyframes() -> None:
    boxes = track(list(range(1, 201)), lambda f: (300 + 150 * math.sin(f / 25), 200))
    loose = thin_track(boxes, min_iou=0.7, last_frame=200)
    tight = thin_track(boxes, min_iou=0.97, last_frame=200)
    assert len(loose) < len(tight)
    assert_reproduces(boxes, loose, 200, 0.7)
    assert_reproduces(boxes, tight, 200, 0.97)
    exact = thin_track(boxes, min_iou=1.0, last_frame=200)
    assert_reproduces(boxes, exact, 200, 1.0)


def test_gap_in_the_track_draws_nothing_while_lost() -> None:
    frames = [*range(1, 41), *range(61, 101)]
    boxes = track(frames, lambda f: (100 + 2 * f, 100))
    keys = thin_track(boxes, last_frame=120)
    assert [(k.frame, k.enabled) for k in keys] == [(1, True), (40, False), (61, True),
                                                     (100, False)]
    drawn = interpolate(keys, 120)
    assert not set(range(41, 61)) & set(drawn)
    assert 61 in drawn and 100 in drawn and 101 not in drawn
    assert_reproduces(boxes, keys, 120, 0.9)


def test_track_ending_before_the_video_draws_nothing_after() -> None:
    boxes = track(list(range(10, 31)), lambda f: (100 + f, 100 + f))
    keys = thin_track(boxes, last_frame=500)
    drawn = interpolate(keys, 500)
    assert min(drawn) == 10 and max(drawn) == 30
    assert_reproduces(boxes, keys, 500, 0.9)


def test_one_frame_tracks_are_one_disabled_keyframe() -> None:
    boxes = [TrackBox(7, box_at(50, 50)), TrackBox(9, box_at(60, 50)), TrackBox(10, box_at(61, 50))]
    keys = thin_track(boxes, last_frame=10)
    assert [(k.frame, k.enabled) for k in keys] == [(7, False), (9, True), (10, True)]
    assert_reproduces(boxes, keys, 10, 0.9)
    only = thin_track([TrackBox(10, box_at(1, 1))], last_frame=10)
    assert [(k.frame, k.enabled) for k in only] == [(10, False)]
    assert sorted(interpolate(only, 10)) == [10]
    assert thin_track([], last_frame=10) == []


@pytest.mark.parametrize(
    ("frames", "min_iou", "last_frame"),
    [
        ([1, 2], 0.0, 10),
        ([1, 2], -0.5, 10),
        ([1, 2], 1.01, 10),
        ([0, 1], 0.9, 10),
        ([9, 11], 0.9, 10),
        ([3, 2], 0.9, 10),
        ([2, 2], 0.9, 10),
    ],
)
def test_bad_inputs_are_refused(frames: list[int], min_iou: float, last_frame: int) -> None:
    with pytest.raises(ValueError):
        thin_track(track(frames, lambda f: (f, f)), min_iou=min_iou, last_frame=last_frame)


def random_smooth_track(rng: random.Random, last_frame: int) -> list[TrackBox]:
    """A box wandering on a sum of slow sines, growing and shrinking, with jitter and gaps."""
    start = rng.randint(1, last_frame // 4)
    end = rng.randint(start, last_frame)
    waves = [(rng.uniform(20, 200), rng.uniform(15, 120), rng.uniform(0, 6)) for _ in range(4)]
    jitter = rng.uniform(0, 1.5)
    boxes = []
    lost_until = 0
    for f in range(start, end + 1):
        if f <= lost_until:
            continue
        if rng.random() < 0.01:
            lost_until = f + rng.randint(1, 15)
            continue
        cx = 500 + sum(a * math.sin(f / p + ph) for a, p, ph in waves[:2])
        cy = 400 + sum(a * math.cos(f / p + ph) for a, p, ph in waves[2:])
        scale = 1 + 0.3 * math.sin(f / waves[0][1])
        w, h = 90 * scale + rng.gauss(0, jitter), 70 * scale + rng.gauss(0, jitter)
        boxes.append(TrackBox(f, box_at(cx + rng.gauss(0, jitter), cy + rng.gauss(0, jitter),
                                        w, h)))
    return boxes


@pytest.mark.parametrize("seed", range(25))
def test_random_tracks_are_reproduced(seed: int) -> None:
    rng = random.Random(seed)
    last_frame = rng.randint(20, 600)
    boxes = random_smooth_track(rng, last_frame)
    if not boxes:
        boxes = [TrackBox(last_frame, box_at(10, 10))]
    min_iou = rng.choice([0.5, 0.8, 0.9, 0.95])
    keys = thin_track(boxes, min_iou=min_iou, last_frame=last_frame)
    assert_reproduces(boxes, keys, last_frame, min_iou)
    assert len(keys) <= len(boxes)


def test_nine_thousand_frames_are_fast() -> None:
    rng = random.Random(1)
    long = [TrackBox(f, box_at(500 + 300 * math.sin(f / 400) + rng.gauss(0, 0.5),
                               400 + 200 * math.cos(f / 300) + rng.gauss(0, 0.5), 90, 70))
            for f in range(1, 9001)]
    straight = track(list(range(1, 9001)), lambda f: (100 + f / 10, 100 + f / 20))
    for name, boxes in (("smooth+jitter", long), ("straight", straight)):
        began = time.perf_counter()
        keys = thin_track(boxes, min_iou=0.9, last_frame=9000)
        took = time.perf_counter() - began
        print(f"thin_track 9000 frames ({name}): {took * 1000:.1f} ms, {len(keys)} keyframes")
        assert_reproduces(boxes, keys, 9000, 0.9)
