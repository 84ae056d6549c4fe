"""MOT scores of predicted tracks against ground truth (bench.track_scores, on motmetrics)."""

from __future__ import annotations

import math
import time

import pytest

from bench.track_scores import TrackScores, score_tracks
from labelpilot.backends.shapes import BBox

FRAMES = range(1, 101)


def moving(x0: float, y0: float, dx: float, dy: float, frames: range = FRAMES) -> dict[int, BBox]:
    return {f: BBox(x0 + dx * f, y0 + dy * f, x0 + dx * f + 40, y0 + dy * f + 30) for f in frames}


def shifted(track: dict[int, BBox], by: float) -> dict[int, BBox]:
    return {f: BBox(b.x1 + by, b.y1, b.x2 + by, b.y2) for f, b in track.items()}


# two objects that never come close: one left to right, one top to bottom on the right
TRUTH = {1: moving(0, 100, 4, 0), 2: moving(600, 0, 0, 4)}


def test_perfect_prediction() -> None:
    predicted = {7: TRUTH[1], 9: TRUTH[2]}  # ids need not agree, only stay consistent
    s = score_tracks(TRUTH, predicted, FRAMES)
    assert s == TrackScores(mota=1.0, idf1=1.0, id_switches=0, mean_iou=1.0, coverage=1.0,
                            false_positives=0, misses=0, truth_boxes=200)


def test_slightly_off_boxes_lower_mean_iou_only() -> None:
    predicted = {1: shifted(TRUTH[1], 4), 2: shifted(TRUTH[2], 4)}  # IoU 36*30 / 44*30
    s = score_tracks(TRUTH, predicted, FRAMES)
    assert s.mota == 1.0 and s.idf1 == 1.0 and s.coverage == 1.0
    assert s.mean_iou == pytest.approx(36 / 44)
    far = score_tracks(TRUTH, predicted, FRAMES, iou_threshold=0.9)  # now nothing matches
    assert far.coverage == 0.0 and far.misses == 200 and far.false_positives == 200


def test_id_swap_halfway() -> None:
    first, second = range(1, 51), range(51, 101)
    predicted = {
        1: {**{f: TRUTH[1][f] for f in first}, **{f: TRUTH[2][f] for f in second}},
        2: {**{f: TRUTH[2][f] for f in first}, **{f: TRUTH[1][f] for f in second}},
    }
    s = score_tracks(TRUTH, predicted, FRAMES)
    assert s.id_switches >= 1
    assert s.idf1 < 1.0
    assert s.idf1 == pytest.approx(0.5)  # each truth id keeps its predicted id half the time
    assert s.coverage == 1.0 and s.mean_iou == 1.0
    assert s.mota == pytest.approx(1 - s.id_switches / 200)


def test_missing_boxes_are_misses() -> None:
    predicted = {1: {f: b for f, b in TRUTH[1].items() if f % 4}, 2: TRUTH[2]}
    s = score_tracks(TRUTH, predicted, FRAMES)
    assert s.misses == 25 and s.false_positives == 0 and s.id_switches == 0
    assert s.coverage == pytest.approx(175 / 200)
    assert s.mota == pytest.approx(1 - 25 / 200)


def test_extra_track_is_false_positives() -> None:
    ghost = moving(300, 500, -1, 0, range(20, 40))
    s = score_tracks(TRUTH, {1: TRUTH[1], 2: TRUTH[2], 3: ghost}, FRAMES)
    assert s.false_positives == 20 and s.misses == 0
    assert s.mota == pytest.approx(1 - 20 / 200)
    assert s.idf1 < 1.0 and s.coverage == 1.0


def test_empty_prediction() -> None:
    s = score_tracks(TRUTH, {}, FRAMES)
    assert s.mota <= 0.0
    assert s.coverage == 0.0 and s.mean_iou == 0.0 and s.idf1 == 0.0
    assert s.misses == 200 and s.truth_boxes == 200


def test_only_the_given_frames_count() -> None:
    predicted = {1: TRUTH[1], 2: TRUTH[2], 3: moving(300, 500, 0, 0, range(60, 80))}
    s = score_tracks(TRUTH, predicted, range(1, 51))
    assert s.truth_boxes == 100 and s.false_positives == 0 and s.mota == 1.0


def test_no_truth_boxes_gives_nan_mota() -> None:
    s = score_tracks({}, {1: TRUTH[1]}, FRAMES)
    assert s.truth_boxes == 0 and s.coverage == 0.0 and s.false_positives == 100
    assert math.isnan(s.mota) or s.mota <= 0


def test_bad_threshold_is_refused() -> None:
    with pytest.raises(ValueError):
        score_tracks(TRUTH, TRUTH, FRAMES, iou_threshold=0.0)
    with pytest.raises(ValueError):
        score_tracks(TRUTH, TRUTH, FRAMES, iou_threshold=1.5)


def test_long_video_timing() -> None:
    frames = range(1, 9001)
    truth = {i: moving(100 * i, 50 * i, 0.05, 0.02, frames) for i in range(5)}
    predicted = {i + 10: shifted(t, 2) for i, t in truth.items()}
    began = time.perf_counter()
    s = score_tracks(truth, predicted, frames)
    print(f"score_tracks 9000 frames x 5 tracks: {time.perf_counter() - began:.2f} s")
    assert s.mota == 1.0 and s.truth_boxes == 45000
