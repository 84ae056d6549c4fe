"""Training from labelled videos: frames sampled from generated clips (stride, near-duplicates,
the cap, boxes on the right pictures), splits made per video, Label Studio `videorectangle`
annotations turned into per-frame boxes as LS draws them, and a real training on video frames."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import redis

from labelpilot.adapters.label_studio.annotations import video_boxes
from labelpilot.adapters.label_studio.config import parse_label_config
from labelpilot.adapters.label_studio.image_source import ImageSource
from labelpilot.adapters.label_studio.training import (
    TRAINABLE,
    collect_samples,
    trainable_control,
    training_classes,
)
from labelpilot.backends.keyframes import box_iou
from labelpilot.backends.model_ref import ModelLocator
from labelpilot.backends.model_store import ModelStore
from labelpilot.backends.shapes import BBox, Instance
from labelpilot.label_config import load
from labelpilot.synthetic_video import SyntheticClip, make_clip, write_clip, write_vfr_clip
from labelpilot.trainers.dataset import _splits, build_dataset, split_of
from labelpilot.trainers.job import run_training_job
from labelpilot.trainers.pipeline import Progress
from labelpilot.trainers.samples import Sample, SampleSet
from labelpilot.trainers.settings import save_params
from labelpilot.trainers.source import TrainSpec
from labelpilot.trainers.video_samples import VideoSampling, sample_video_frames
from tests.helpers import serve_directory

FPS = 12.0
PAUSED_FPS = 8.0  # 1/8 s is whole milliseconds: write_vfr_clip keeps the times exact
PLAN = parse_label_config(load("video_tracking_shapes"))
CONTROL = trainable_control(PLAN)
LOCAL = ImageSource(allowed_hosts=frozenset({"127.0.0.1"}))


def truth_instances(clip: SyntheticClip, frame: int) -> list[Instance]:
    """The clip's truth on one frame, labelled as the LS config names the classes."""
    return [Instance(t.class_name.capitalize(), 1.0, box=t.boxes[frame])
            for t in clip.tracks if frame in t.boxes]


def all_truth(clip: SyntheticClip) -> dict[int, list[Instance]]:
    return {n: truth_instances(clip, n) for n in range(1, clip.frames + 1)}


def frame_number(sample: Sample) -> int:
    return int(sample.sample_id.rsplit("-f", 1)[1])


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("clips")
    moving = make_clip(3, frames=48, objects=2, fps=FPS)
    write_clip(moving, directory / "moving.mp4")
    # pictures 1..12, picture 12 held for 24 more frames (a paused camera), then 13..24
    shown = [*range(1, 13), *[12] * 24, *range(13, 25)]
    write_vfr_clip([moving.render(p) for p in shown],
                   [i / PAUSED_FPS for i in range(len(shown))],
                   directory / "paused.mp4")
    # slower motion for the keyframed annotation: keys 8 frames apart follow it (IoU >= 0.83)
    labelled = make_clip(4, frames=96, objects=2, fps=FPS)
    write_clip(labelled, directory / "labelled.mp4")
    return {"dir": directory, "moving": moving, "shown": shown, "labelled": labelled,
            "data": (directory / "moving.mp4").read_bytes(),
            "paused": (directory / "paused.mp4").read_bytes()}


# ------------------------------------------------------------------ sampling frames of a video

def test_default_sampling_is_about_four_frames_a_second() -> None:
    sampling = VideoSampling()
    assert (sampling.stride(12), sampling.stride(30), sampling.stride(2)) == (3, 8, 1)
    assert sampling.max_frames == 300 and sampling.min_change == 2.0


def test_every_stride_th_frame_is_kept_on_the_right_picture_with_its_boxes(
        clips: dict[str, Any], tmp_path: Path) -> None:
    clip: SyntheticClip = clips["moving"]
    truth = all_truth(clip)
    samples, duplicates = sample_video_frames(clips["data"], FPS, truth, tmp_path, group="v1",
                                              stride=3, min_change=0)
    assert duplicates == 0
    assert [frame_number(s) for s in samples] == list(range(1, 49, 3))
    assert {s.group for s in samples} == {"v1"}
    assert samples[0].sample_id == "v1-f000001" and samples[0].provenance == {"frame": "1"}
    for sample in samples:
        n = frame_number(sample)
        assert list(sample.instances) == truth[n]
        assert (sample.width, sample.height) == (clip.width, clip.height)
        read = cv2.imread(str(sample.image))
        assert read is not None
        picture = read.astype(float)
        # the PNG is frame n's picture, not a neighbour's (each frame has its own noise, so
        # even a still part of the picture matches its own frame best)
        near = [m for m in range(n - 3, n + 4) if 1 <= m <= clip.frames]
        diffs = [np.abs(picture - clip.render(m)).mean() for m in near]
        assert near[int(np.argmin(diffs))] == n, (n, diffs)


def test_frames_without_boxes_are_kept_as_negatives(clips: dict[str, Any],
                                                    tmp_path: Path) -> None:
    clip: SyntheticClip = clips["moving"]
    leaver = clip.tracks[-1]
    gone = max(leaver.boxes) + 1
    assert gone <= clip.frames  # the clip's last object leaves before the end
    samples, _ = sample_video_frames(clips["data"], FPS, all_truth(clip), tmp_path, group="v",
                                     stride=1, min_change=0)
    after = [s for s in samples if frame_number(s) >= gone]
    assert after and all(len(s.instances) == len(clip.tracks) - 1 for s in after)


def test_a_paused_stretch_is_skipped_as_near_duplicates(clips: dict[str, Any],
                                                        tmp_path: Path) -> None:
    clip: SyntheticClip = clips["moving"]
    shown: list[int] = clips["shown"]
    boxes = {n: truth_instances(clip, p) for n, p in enumerate(shown, start=1)}
    samples, duplicates = sample_video_frames(clips["paused"], PAUSED_FPS, boxes, tmp_path,
                                              group="p", stride=1)
    kept = [frame_number(s) for s in samples]
    paused = range(13, 37)  # frames 13..36 show frame 12's picture, with its boxes
    assert 12 in kept and not set(paused) & set(kept)
    assert duplicates >= len(paused)
    moving = [n for n in range(1, len(shown) + 1) if n not in paused]
    assert len(set(kept) & set(moving)) >= 0.8 * len(moving), kept
    # with min_change 0 nothing is a near-duplicate: every frame is kept
    every, none = sample_video_frames(clips["paused"], PAUSED_FPS, boxes, tmp_path / "all",
                                      group="p", stride=1, min_change=0)
    assert none == 0 and len(every) == len(shown)


def test_a_still_picture_with_moving_boxes_is_not_a_duplicate(clips: dict[str, Any],
                                                              tmp_path: Path) -> None:
    """A small object moving in a large frame barely changes the mean picture: its boxes
    moving keep the frame."""
    shown: list[int] = clips["shown"]
    moving_box = {n: [Instance("Circle", 1.0, box=BBox(4 * n, 10, 4 * n + 20, 30))]
                  for n in range(1, len(shown) + 1)}
    samples, duplicates = sample_video_frames(clips["paused"], PAUSED_FPS, moving_box, tmp_path,
                                              group="p", stride=1, min_change=1000)
    assert duplicates == 0 and len(samples) == len(shown)


def test_max_frames_spreads_the_frames_over_the_whole_video(clips: dict[str, Any],
                                                            tmp_path: Path) -> None:
    samples, _ = sample_video_frames(clips["data"], FPS, {}, tmp_path, group="v", stride=1,
                                     max_frames=10, min_change=0)
    assert [frame_number(s) for s in samples] == list(range(1, 49, 5))
    one, _ = sample_video_frames(clips["data"], FPS, {}, tmp_path / "one", group="v",
                                 max_frames=1)
    assert [frame_number(s) for s in one] == [1]


def test_a_broken_video_raises_a_value_error(clips: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="truncated|corrupt"):
        sample_video_frames(clips["data"][: len(clips["data"]) // 3], FPS, {}, tmp_path,
                            group="v")
    with pytest.raises(ValueError, match="at least 1"):
        sample_video_frames(clips["data"], FPS, {}, tmp_path, group="v", stride=0)


# ------------------------------------------------------------------------------- the splits

def _frames(groups: list[str], per_group: int, tmp: Path) -> list[Sample]:
    return [Sample(f"{g}-f{n:06d}", tmp / f"{g}-{n}.png", 10, 10, group=g)
            for g in groups for n in range(1, per_group + 1)]


def _old_splits(samples: list[Sample]) -> dict[str, str]:
    """The split before groups existed (sample by sample): images must keep it."""
    splits = {s.sample_id: split_of(s.sample_id) for s in samples}
    for needed in ("holdout", "val"):
        if samples and needed not in splits.values():
            moved = sorted(s.sample_id for s in samples if splits[s.sample_id] == "train")
            if len(moved) > 1:
                splits[moved[0]] = needed
    return splits


def test_every_frame_of_a_video_lands_in_its_video_s_split(tmp_path: Path) -> None:
    groups = [f"task-{i}" for i in range(40)]
    splits = _splits(_frames(groups, 6, tmp_path))
    for group in groups:
        assert {splits[f"{group}-f{n:06d}"] for n in range(1, 7)} == {split_of(group)}
    assert set(splits.values()) == {"train", "val", "holdout"}
    # frame by frame the same frames would scatter over the splits
    assert any(len({split_of(f"{g}-f{n:06d}") for n in range(1, 7)}) > 1 for g in groups)


def test_image_samples_split_as_before(tmp_path: Path) -> None:
    for count in (1, 2, 3, 5, 60):
        images = [Sample(f"task-{i}", tmp_path / f"{i}.png", 10, 10) for i in range(count)]
        assert _splits(images) == _old_splits(images), count


def test_whole_videos_are_moved_to_fill_every_split(tmp_path: Path) -> None:
    trains = list(itertools.islice((g for g in (f"task-{i}" for i in itertools.count())
                                    if split_of(g) == "train"), 3))
    samples = _frames(trains[:3], 5, tmp_path)
    splits = _splits(samples)
    by_group = {g: {splits[s.sample_id] for s in samples if s.group == g} for g in trains[:3]}
    assert all(len(s) == 1 for s in by_group.values()), by_group
    assert sorted(next(iter(s)) for s in by_group.values()) == ["holdout", "train", "val"]


def test_one_video_is_split_in_runs_of_consecutive_frames(tmp_path: Path) -> None:
    samples = _frames(["task-1"], 40, tmp_path)
    splits = _splits(samples)
    assert set(splits.values()) == {"train", "val", "holdout"}
    runs = [split for split, _ in itertools.groupby(splits[s.sample_id] for s in samples)]
    assert len(runs) <= 10  # ten runs of four frames at most, never frame by frame


def test_a_built_dataset_holds_out_whole_videos(tmp_path: Path) -> None:
    samples = []
    for g in (f"task-{i}" for i in range(12)):
        for n in range(1, 4):
            path = tmp_path / "src" / f"{g}-{n}.png"
            path.parent.mkdir(exist_ok=True)
            cv2.imwrite(str(path), np.full((20, 20, 3), n, np.uint8))
            samples.append(Sample(f"{g}-f{n:06d}", path, 20, 20, group=g,
                                  instances=(Instance("Circle", 1.0, box=BBox(2, 2, 8, 8)),)))
    built = build_dataset(samples, "detect", ("Circle",), tmp_path / "ds")
    for entry in built.manifest:
        group = str(entry["sample"]).rsplit("-f", 1)[0]
        assert entry["split"] == split_of(group)
    assert sum(built.counts.values()) == 36 and built.counts["holdout"] % 3 == 0


# ------------------------------------------------------------ Label Studio videorectangle

def keyframed_regions(clip: SyntheticClip, every: int = 8) -> list[dict[str, Any]]:
    """The truth as an annotator would key it in LS: per visible run a keyframe every `every`
    frames and on its last frame, disabled where the object leaves or hides (percent)."""
    w, h = clip.width, clip.height
    regions = []
    for track in clip.tracks:
        frames = sorted(track.boxes)
        runs = [[f for _, f in run] for _, run in itertools.groupby(
            enumerate(frames), key=lambda p: p[1] - p[0])]
        sequence = []
        for run in runs:
            keys = sorted({*run[::every], run[-1]})
            for f in keys:
                b = track.boxes[f]
                item = {"frame": f, "x": 100 * b.x1 / w, "y": 100 * b.y1 / h,
                        "width": 100 * (b.x2 - b.x1) / w, "height": 100 * (b.y2 - b.y1) / h,
                        "rotation": 0, "time": f / clip.fps}
                if f != run[-1] or f == clip.frames:
                    item["enabled"] = True
                elif f % 2:
                    item["enabled"] = False  # else left out: a missing `enabled` is false
                sequence.append(item)
        regions.append({"from_name": "box", "to_name": "video", "type": "videorectangle",
                        "value": {"sequence": sequence, "framesCount": clip.frames,
                                  "labels": [track.class_name.capitalize()]}})
    return regions


def test_a_video_rectangle_control_trains_a_detect_model() -> None:
    assert CONTROL.kind == "video" and CONTROL.video is not None
    assert TRAINABLE["video"].default.name == "detect"
    assert training_classes(PLAN, CONTROL) == ("Circle", "Square", "Triangle")


def test_keyframes_are_drawn_as_label_studio_draws_them() -> None:
    """Interpolated between enabled keyframes, ended by a disabled (or `enabled`-less) one,
    clipped to the frame; labels and controls other than the video's are left out."""
    def item(frame: int, x: float, **extra: object) -> dict[str, Any]:
        return {"frame": frame, "x": x, "y": 10, "width": 10, "height": 20, **extra}

    annotation = {"result": [
        {"from_name": "box", "value": {"labels": ["Square"], "sequence": [
            item(1, 0, enabled=True), item(5, 40, enabled=True), item(7, 95)]}},
        {"from_name": "box", "value": {"labels": ["Bogus"], "sequence": [item(1, 0)]}},
        {"from_name": "other", "value": {"labels": ["Square"], "sequence": [item(1, 0)]}},
    ]}
    drawn = video_boxes(annotation, CONTROL, 200, 100, last_frame=10)
    assert sorted(drawn) == [1, 2, 3, 4, 5, 6, 7]
    boxes = {n: [(i.class_name, i.box) for i in found] for n, found in drawn.items()}
    assert boxes[1] == [("Square", BBox(0, 10, 20, 30))]
    assert boxes[3] == [("Square", BBox(40, 10, 60, 30))]  # halfway from x=0% to x=40%
    assert boxes[7] == [("Square", BBox(190, 10, 200, 30))]  # 95%..105%: clipped


@pytest.fixture(scope="module")
def served(clips: dict[str, Any]) -> Iterator[str]:
    with serve_directory(clips["dir"]) as url:
        yield url


def video_task(task_id: int, url: str, result: list[dict[str, Any]], **annotation: Any
               ) -> dict[str, Any]:
    return {"id": task_id, "data": {"video": url, "fps": FPS},
            "annotations": [{"id": 10 * task_id, "result": result, "completed_by": 1,
                             "updated_at": "2026-01-01", **annotation}]}


def test_label_studio_video_annotations_become_frames_with_the_truth_boxes(
        clips: dict[str, Any], served: str, tmp_path: Path) -> None:
    clip: SyntheticClip = clips["labelled"]
    tasks = [
        video_task(5, f"{served}/labelled.mp4", keyframed_regions(clip)),
        video_task(6, f"{served}/missing.mp4", keyframed_regions(clip)),
        {"id": 7, "data": {"video": f"{served}/missing.mp4", "fps": FPS}, "annotations": []},
        video_task(8, f"{served}/missing.mp4", [], was_cancelled=True),
    ]
    pulled = collect_samples(tasks, PLAN, CONTROL, LOCAL, tmp_path)
    assert [(s.sample_id, s.provenance["task"]) for s in pulled.skipped] == [("task-6", "6")]
    assert "HTTP 404" in pulled.skipped[0].reason
    samples = pulled.samples
    stride = VideoSampling().stride(FPS)
    numbers = [frame_number(s) for s in samples]
    assert numbers[0] == 1 and all(b - a >= stride and (b - a) % stride == 0
                                   for a, b in itertools.pairwise(numbers))
    assert len(samples) >= 0.75 * len(range(1, clip.frames + 1, stride))
    assert {s.group for s in samples} == {"task-5"}
    first = samples[0].provenance
    assert (first["task"], first["annotation"], first["frame"]) == ("5", "50", "1")
    assert int(first["video_frames_kept"]) == len(samples)
    assert int(first["video_near_duplicates"]) == len(range(1, 97, stride)) - len(samples)
    worst = 1.0
    for sample in samples:
        truth = truth_instances(clip, frame_number(sample))
        assert sorted(i.class_name for i in sample.instances) == sorted(
            t.class_name for t in truth), sample.sample_id
        for t in truth:
            found = next(i for i in sample.instances if i.class_name == t.class_name)
            assert found.box is not None and t.box is not None
            worst = min(worst, box_iou(found.box, t.box))
    assert worst >= 0.8, worst


def test_a_task_whose_frame_rate_is_unusable_is_skipped(clips: dict[str, Any], served: str,
                                                       tmp_path: Path) -> None:
    task = video_task(9, f"{served}/moving.mp4", keyframed_regions(clips["moving"]))
    task["data"]["fps"] = "fast"
    pulled = collect_samples([task], PLAN, CONTROL, LOCAL, tmp_path)
    assert not pulled.samples and [s.sample_id for s in pulled.skipped] == ["task-9"]
    assert "frame rate" in pulled.skipped[0].reason


# --------------------------------------------------------------------- training on frames

class VideoSource:
    """A LabelSource over LS video tasks (what LabelStudioSource does without the LS API)."""

    def __init__(self, tasks: list[dict[str, Any]], model: str) -> None:
        self.tasks, self.model = tasks, model

    @property
    def key(self) -> str:
        return "test-video"

    def write_samples(self, directory: Path, progress: Progress) -> SampleSet:
        return collect_samples(self.tasks, PLAN, CONTROL, LOCAL, directory)

    def describe(self, samples: list[Sample]) -> TrainSpec:
        return TrainSpec(model_key="test-video-box", task="detect",
                         class_names=training_classes(PLAN, CONTROL), default_model=self.model)


@pytest.mark.slow
def test_a_model_trains_on_video_frames_and_holds_out_whole_videos(
        tmp_path: Path, redis_url: str, shapes_model: Path) -> None:
    directory = tmp_path / "served"
    directory.mkdir()
    clips = {seed: make_clip(seed, frames=36, objects=2, fps=FPS) for seed in (11, 12, 13, 14)}
    for seed, clip in clips.items():
        write_clip(clip, directory / f"clip{seed}.mp4")
    connection = redis.Redis.from_url(redis_url)
    save_params(connection, "test-video", epochs=1, imgsz=160, batch=8)
    store = ModelStore(tmp_path / "store", connection)
    with serve_directory(directory) as url:
        tasks = [video_task(seed, f"{url}/clip{seed}.mp4", keyframed_regions(clip))
                 for seed, clip in clips.items()]
        result = run_training_job(VideoSource(tasks, str(shapes_model)), connection, store,
                                  locator=ModelLocator(shapes_model.parent, download=False))
    info = store.versions("test-video-box")[0].info()
    manifest = info["dataset"]["manifest"]
    split_of_task: dict[str, set[str]] = {}
    for entry in manifest:
        split_of_task.setdefault(entry["task"], set()).add(entry["split"])
    assert set(split_of_task) == {"11", "12", "13", "14"}
    assert all(len(splits) == 1 for splits in split_of_task.values()), split_of_task
    assert {s for splits in split_of_task.values() for s in splits} == {
        "train", "val", "holdout"}
    counts = result["dataset"]["counts"]
    assert counts["holdout"] == sum(1 for e in manifest if e["split"] == "holdout") > 0
    assert result["metrics"]["candidate"] is not None
