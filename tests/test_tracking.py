"""Detect + track with the real shapes model and ultralytics' trackers, and the stitching that
keeps one id for an object through an occlusion the tracker could not bridge."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.track_scores import score_tracks
from labelpilot.backends.shapes import BBox
from labelpilot.backends.tracking import (
    TrackerError,
    TrackerSpec,
    stitch_tracks,
    track_video,
    tracker_settings,
)
from labelpilot.backends.tracks import Track, TrackBox
from labelpilot.backends.video import read_frames
from labelpilot.backends.yolo import YoloModel
from labelpilot.synthetic_video import make_clip, write_clip


def moving(track_id: int, frames: range, x0: float, speed: float, y: float = 50,
           side: float = 40, name: str = "square") -> Track:
    return Track(track_id, name, tuple(
        TrackBox(f, BBox(x0 + speed * (f - frames[0]), y, x0 + speed * (f - frames[0]) + side,
                         y + side), 0.9) for f in frames))


def test_an_object_hidden_for_a_while_keeps_its_track():
    before = moving(1, range(1, 21), 10, 4)
    after = moving(2, range(36, 60), 10 + 4 * 35, 4)
    (joined,) = stitch_tracks([after, before], max_gap=60)
    assert joined.track_id == 1 and len(joined.boxes) == 44
    assert [b.frame for b in joined.boxes] == [*range(1, 21), *range(36, 60)]


def test_a_box_shrinking_behind_the_occluder_still_joins():
    """Going behind a pillar the leading edge stalls; the trailing edge gives the speed."""
    boxes = [TrackBox(f, BBox(10 + 4 * f, 50, min(10 + 4 * f + 40, 90), 90), 0.9)
             for f in range(1, 21)]
    after = moving(2, range(34, 50), 10 + 4 * 34, 4)
    assert len(stitch_tracks([Track(1, "square", tuple(boxes)), after], max_gap=60)) == 1


@pytest.mark.parametrize("other, why", [
    (moving(2, range(36, 60), 10 + 4 * 35, 4, name="circle"), "another class"),
    (moving(2, range(36, 60), 10 + 4 * 35, 4, y=150), "another lane"),
    (moving(2, range(36, 60), 0, 4), "behind it"),
    (moving(2, range(100, 120), 10 + 4 * 99, 4), "too long after"),
    (moving(2, range(36, 60), 10 + 4 * 35, 4, side=120), "a different size"),
    (moving(2, range(15, 30), 10 + 4 * 14, 4), "overlapping in time"),
])
def test_other_objects_are_not_joined(other, why):
    assert len(stitch_tracks([moving(1, range(1, 21), 10, 4), other], max_gap=60)) == 2, why


@pytest.mark.parametrize("name, fragment", [("sort3", "is not one of"),
                                            ("bytetrack", "has no setting 'nonsense'")])
def test_tracker_settings_are_checked(name, fragment):
    params = (("nonsense", "1"),) if name == "bytetrack" else ()
    with pytest.raises(TrackerError, match=fragment):
        tracker_settings(TrackerSpec(name, params))
    with pytest.raises(TrackerError, match="is not a int"):
        tracker_settings(TrackerSpec("bytetrack", (("track_buffer", "lots"),)))
    with pytest.raises(TrackerError, match="ReID"):
        tracker_settings(TrackerSpec("botsort", (("with_reid", "true"),)))


@pytest.mark.parametrize("tracker", ["bytetrack", "botsort", "ocsort"])
def test_tracking_generated_clips_follows_every_object(shapes_model: Path, tmp_path, tracker):
    model = YoloModel(str(shapes_model))
    joined = split = 0.0
    for seed in (0, 2):
        clip = make_clip(seed, frames=72, objects=3)
        data = write_clip(clip, tmp_path / f"c{seed}.mp4").read_bytes()
        truth = {t.track_id: dict(t.boxes) for t in clip.tracks}
        frames = range(1, clip.frames + 1)
        for gap in (60, 0):
            tracks = track_video(model, read_frames(data, clip.fps), spec=TrackerSpec(tracker),
                                 stitch_gap=gap)
            found = {t.track_id: {b.frame: b.box for b in t.boxes} for t in tracks
                     if len(t.boxes) >= 3}
            scores = score_tracks(truth, found, frames)
            assert scores.coverage >= 0.9 and scores.mota >= 0.85, (tracker, seed, scores)
            if gap:
                joined += scores.idf1 / 2
            else:
                split += scores.idf1 / 2
    # 0.95-0.97 on most machines; 0.946 for OC-SORT with the shapes model trained on an AMD
    # EPYC (training is deterministic per machine, not across CPUs)
    assert joined >= 0.94, joined
    assert joined >= split, (joined, split)
