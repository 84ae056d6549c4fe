"""`labelpilot annotate --cvat-task N`, as an admin runs it, against the stand-in for CVAT's REST
API over real HTTP: a video task's frames are tracked with the shapes model and written as
CVAT tracks with keyframes that, interpolated the way CVAT does, draw the ground truth."""

from __future__ import annotations

import json
import subprocess
from itertools import pairwise
from pathlib import Path

import cv2
import pytest

from bench.track_scores import score_tracks
from labelpilot.backends.shapes import BBox
from labelpilot.synthetic_video import make_clip
from tests.fake_cvat import FakeCvat, FakeTask, serve
from tests.helpers import run_cli, run_cvat_cli
from tests.test_cvat_select import LABELS

CLIP = make_clip(21, frames=48, objects=3)


def video_task(corrupt_frame: int | None = None) -> FakeTask:
    """CVAT splits a video task into frames; these are the clip's, PNG-encoded."""
    frames = [cv2.imencode(".png", CLIP.render(n))[1].tobytes()
              for n in range(1, CLIP.frames + 1)]
    if corrupt_frame is not None:
        frames[corrupt_frame] = frames[corrupt_frame][:100]
    jobs = [{"id": 61, "task_id": 5, "start_frame": 0, "stop_frame": CLIP.frames - 1,
             "type": "annotation", "state": "new"}]
    return FakeTask(5, "clip.mp4", frames, [f"frame_{i:06d}.png" for i in range(len(frames))],
                    LABELS, jobs)


def run_annotate(url: str, env_extra: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return run_cvat_cli(url, env_extra, "annotate", *args)


def cvat_drawn(tracks: list[dict], frames: int) -> dict[int, dict[int, BBox]]:
    """Per-frame boxes (1-based frames) as CVAT draws its tracks: linear between keyframes,
    hidden from an `outside` keyframe until the next one."""
    out: dict[int, dict[int, BBox]] = {}
    for number, track in enumerate(tracks):
        shapes = sorted(track["shapes"], key=lambda s: s["frame"])
        drawn: dict[int, BBox] = {}
        for i, shape in enumerate(shapes):
            if shape["outside"]:
                continue
            end = shapes[i + 1]["frame"] if i + 1 < len(shapes) else frames
            nxt = shapes[i + 1] if i + 1 < len(shapes) else shape
            for frame in range(shape["frame"], end):
                t = 0.0 if nxt["outside"] or nxt is shape else \
                    (frame - shape["frame"]) / (nxt["frame"] - shape["frame"])
                a, b = shape["points"], nxt["points"]
                drawn[frame + 1] = BBox(*(a[k] + t * (b[k] - a[k]) for k in range(4)))
        out[number] = drawn
    return out


def test_a_video_task_gets_tracks_with_keyframes_that_draw_the_truth(env):
    cvat = FakeCvat()
    cvat.add_task(video_task(corrupt_frame=30))
    with serve(cvat) as url:
        dry = run_annotate(url, env, "--cvat-task", "5", "--dry-run")
        assert dry.returncode == 0, dry.stderr + dry.stdout
        assert "dry run: nothing written" in dry.stdout
        assert cvat.tasks[5].annotations["tracks"] == []
        done = run_annotate(url, env, "--cvat-task", "5")
        assert done.returncode == 0, done.stderr + done.stdout
        assert "frames that could not be decoded (1): 30:" in done.stdout, done.stdout
        tracks = cvat.tasks[5].annotations["tracks"]
        assert tracks and cvat.tasks[5].annotations["shapes"] == [], "tracks, not shapes"
        assert all(t["source"] == "auto" and t["label_id"] in (1, 2, 3) for t in tracks)
        keyframes = sum(1 for t in tracks for s in t["shapes"] if not s["outside"])
        assert f"{len(tracks)} tracks with {keyframes} keyframes over 48 frames written" in \
            done.stdout, done.stdout
        assert keyframes < 0.3 * sum(len(b.boxes) for b in CLIP.tracks), "thinned"
        truth = {t.track_id: dict(t.boxes) for t in CLIP.tracks}
        scores = score_tracks(truth, cvat_drawn(tracks, CLIP.frames), range(1, 49))
        assert scores.coverage >= 0.85 and scores.mean_iou >= 0.8, scores
        assert scores.mota >= 0.75 and scores.idf1 >= 0.75, scores

        again = run_annotate(url, env, "--cvat-task", "5")
        assert again.returncode == 2 and "--clear-existing" in again.stderr, again.stderr
        assert cvat.tasks[5].annotations["tracks"] == tracks, "nothing written twice"
        replaced = run_annotate(url, env, "--cvat-task", "5", "--clear-existing")
        assert replaced.returncode == 0, replaced.stderr
        assert len(cvat.tasks[5].annotations["tracks"]) == len(tracks)
        assert any(m == "PUT" and p.rstrip("/") == "/api/tasks/5/annotations"
                   for m, p in cvat.requests)


@pytest.mark.parametrize("args, fragment", [
    (("--cvat-task", "9"), "CVAT answered 404"),
    (("--cvat-task", "5", "--tracker", "sort3"), "tracker 'sort3' is not one of"),
    (("--cvat-task", "5", "--function", "nowhere.pt"), "nowhere.pt"),
])
def test_bad_requests_say_what_to_change(env, args, fragment):
    cvat = FakeCvat()
    cvat.add_task(video_task())
    with serve(cvat) as url:
        result = run_annotate(url, env, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert fragment in result.stderr, result.stderr
    assert cvat.tasks[5].annotations["tracks"] == []


def truth_tracks(every: int = 6) -> list[dict]:
    """An annotator's CVAT tracks of the clip: a keyframe every few frames, `outside` on the
    frame after the object stops being visible (0-based frames, as CVAT counts)."""
    tracks = []
    for truth in CLIP.tracks:
        frames = sorted(truth.boxes)
        shapes = []
        for i, frame in enumerate(frames):
            ends = i + 1 == len(frames) or frames[i + 1] != frame + 1
            if (frame - frames[0]) % every and not ends:
                continue
            b = truth.boxes[frame]
            common = {"type": "rectangle", "occluded": False, "z_order": 0, "rotation": 0.0,
                      "attributes": [], "points": [b.x1, b.y1, b.x2, b.y2]}
            shapes.append({**common, "frame": frame - 1, "outside": False})
            if ends and frame < CLIP.frames:
                shapes.append({**common, "frame": frame, "outside": True})
        tracks.append({"frame": shapes[0]["frame"], "group": 0, "source": "manual",
                       "attributes": [], "shapes": shapes,
                       "label_id": 1 + ["circle", "square", "triangle"].index(truth.class_name)})
    return tracks


def test_a_model_trains_from_cvat_tracks_drawn_on_every_frame(env, tmp_path):
    """Tracks are labels on every frame between their keyframes, as CVAT draws them; the
    frames of the video train as one group, and the version detects the shapes."""
    task = video_task()
    task.annotations["tracks"] = truth_tracks()
    task.jobs[0]["state"] = "completed"
    cvat = FakeCvat()
    cvat.add_task(task)
    settings = run_cli("settings", "cvat-task-5", "--epochs", "8", "--imgsz", "160", env=env)
    assert settings.returncode == 0, settings.stderr
    with serve(cvat) as url:
        trained = run_cvat_cli(url, env, "train", "--cvat-task", "5", "--wait", timeout=900)
    assert trained.returncode == 0, trained.stderr[-3000:] + trained.stdout
    (written,) = (Path(env["MODEL_DIR"]) / "store" / "cvat-task-5").glob("v*/version.json")
    version = json.loads(written.read_text())
    assert version["metrics"]["candidate"]["map50"] >= 0.6, version["metrics"]
    manifest = [e for e in version["dataset"]["manifest"] if e["split"] != "skipped"]
    keyframes = {s["frame"] for t in task.annotations["tracks"] for s in t["shapes"]}
    assert len(manifest) == CLIP.frames > len(keyframes), "every drawn frame is a label"


def test_cvat_tracks_are_drawn_on_the_frames_cvat_draws_them():
    from labelpilot.adapters.cvat.annotations import by_frame, labelled_frames

    def key(frame: int, x: float, outside: bool = False) -> dict:
        return {"type": "rectangle", "frame": frame, "points": [x, 0, x + 10, 10],
                "outside": outside}

    track = {"label_id": 1, "shapes": [key(2, 0), key(6, 4), key(8, 4, True), key(10, 20)]}
    annotations = {"tags": [], "shapes": [], "tracks": [track]}
    assert labelled_frames(annotations, 12) == {2, 3, 4, 5, 6, 7, 10, 11, 12}
    frames = by_frame(annotations, 12)
    assert set(frames) == {2, 3, 4, 5, 6, 7, 10, 11, 12}
    assert frames[4].shapes[0]["points"] == [2, 0, 12, 10]  # halfway from 2 to 6
    assert frames[12].shapes[0]["points"] == [20, 0, 30, 10]  # the last keyframe holds
    assert set(by_frame(annotations, 12, only={4, 9, 11})) == {4, 11}


def test_one_video_is_split_in_runs_of_consecutive_frames():
    """CVAT's frame ids are not zero-padded ("f12" sorts before "f9" as text): runs follow
    frame numbers, so near-copies stay together."""
    from labelpilot.trainers.dataset import _splits
    from labelpilot.trainers.samples import Sample

    samples = [Sample(f"cvat-t5-f{i}", Path(f"{i}.png"), 10, 10, group="cvat-t5")
               for i in range(0, 300, 3)]
    splits = _splits(samples)
    along = [splits[s.sample_id] for s in samples]
    changes = sum(a != b for a, b in pairwise(along))
    assert changes <= 9, along
    assert {"train", "val", "holdout"} <= set(along)
