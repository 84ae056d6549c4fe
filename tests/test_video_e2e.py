"""Video end to end with a real Label Studio 1.23.2: uploaded clips, "Retrieve predictions",
tracked boxes stored as LS `videorectangle` predictions that draw the ground truth; long clips
tracked by a real RQ worker that posts the prediction, with its progress visible."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bench.track_scores import score_tracks
from labelpilot.label_config import load
from labelpilot.synthetic_video import SyntheticClip, make_clip, write_clip
from tests.conftest import ARTIFACTS, REPO, start_backend
from tests.helpers import wait_for
from tests.test_retraining_e2e import start_worker
from tests.test_video_predict import drawn_tracks, truth_of

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CONFIG = load("video_tracking_shapes")
FPS = 12.0


def upload_clips(ls_admin, project: int, clips: dict[str, SyntheticClip],  # type: ignore[no-untyped-def]
                 directory: Path) -> dict[int, SyntheticClip]:
    """Upload each clip (LS gives it a /data/upload URL) and add its frame rate to the task."""
    paths = [write_clip(clip, directory / name) for name, clip in clips.items()]
    task_ids = ls_admin.upload_images(project, paths)
    assert len(task_ids) == len(paths)
    by_task = {}
    for task in ls_admin.tasks(project):
        name = next(n for n in clips if task["data"]["video"].endswith(n))
        ls_admin.update_task_data(task["id"], {**task["data"], "fps": FPS})
        by_task[task["id"]] = clips[name]
    return by_task


@pytest.fixture(scope="module")
def video_project(ls_admin, backend, tmp_path_factory) -> dict:  # type: ignore[no-untyped-def]
    pid = ls_admin.create_project("video e2e", CONFIG)
    clips = {"walk.mp4": make_clip(11, frames=60, objects=3, fps=FPS),
             "walk.webm": make_clip(12, frames=48, objects=2, fps=FPS)}
    truth = upload_clips(ls_admin, pid, clips, tmp_path_factory.mktemp("clips"))
    ls_admin.connect_backend(pid, backend.url)
    return {"id": pid, "truth": truth}


def test_retrieved_video_predictions_draw_the_tracked_objects(ls_admin, video_project, backend):
    setup = requests.post(f"{backend.url}/setup", json={
        "project": f"{video_project['id']}.0", "schema": CONFIG}, timeout=10).json()
    answer = ls_admin.retrieve_predictions(video_project["id"])
    assert answer.get("processed_items", 0) >= 1, answer
    predictions = ls_admin.predictions(video_project["id"])
    assert {p["task"] for p in predictions} == set(video_project["truth"])
    for prediction in predictions:
        clip = video_project["truth"][prediction["task"]]
        assert prediction["model_version"] == setup["model_version"]
        regions = prediction["result"]
        assert all(r["type"] == "videorectangle" for r in regions)
        scores = score_tracks(truth_of(clip), drawn_tracks(regions, clip.width, clip.height,
                                                           clip.frames),
                              range(1, clip.frames + 1))
        assert scores.coverage >= 0.9 and scores.mean_iou >= 0.8, scores
        assert scores.mota >= 0.8 and scores.idf1 >= 0.8, scores
        assert scores.id_switches <= 2, scores
        assert len(regions) <= len(clip.tracks) + 2, "about one region per object"


def test_retrieving_video_predictions_again_adds_nothing(ls_admin, video_project):
    before = ls_admin.predictions(video_project["id"])
    ls_admin.retrieve_predictions(video_project["id"])
    assert len(ls_admin.predictions(video_project["id"])) == len(before)


def test_the_annotator_sees_the_tracked_boxes_on_the_video(ls_admin, label_studio,
                                                           video_project):
    from tests.video_browser import open_video_task

    task = next(t for t, clip in video_project["truth"].items() if clip.frames == 60)
    ARTIFACTS.mkdir(exist_ok=True)
    report = open_video_task(label_studio.url, label_studio.username, label_studio.password,
                             video_project["id"], task, 20, ARTIFACTS / "video-task.png")
    assert report["ok"], report
    assert report["regions"] >= 2, report
    assert set(report["labels"]) <= {"Circle", "Square", "Triangle"}, report
    assert report["frame"] == 20 and len(report["boxes"]) >= 2 and report["painted"] > 0, \
        "the boxes are drawn over the video at that frame"


@pytest.fixture(scope="module")
def worker_backend(shapes_model, redis_url, tmp_path_factory) -> Iterator[dict]:  # type: ignore[no-untyped-def]
    """A backend that tracks at most 30 frames inside /predict, and a real RQ worker."""
    tmp = tmp_path_factory.mktemp("video-worker")
    env = {"REDIS_URL": redis_url, "MODEL_DIR": str(tmp / "models"),
           "LABELPILOT_VIDEO_INLINE_FRAMES": "30", "LABELPILOT_ALLOWED_HOSTS": "127.0.0.1",
           "LABELPILOT_MODEL_DETECT": str(shapes_model), "LABELPILOT_ADMIN_TOKEN": "video-admin"}
    backend = start_backend(tmp, env, workers=1)
    log = tmp / "worker.log"
    worker = start_worker(env, log)
    yield {"backend": backend, "env": env, "tmp": tmp}
    worker.terminate()
    worker.wait(30)
    backend.stop()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "video-worker.log").write_bytes(log.read_bytes())
    (ARTIFACTS / "video-backend.log").write_bytes(backend.log.read_bytes())


def test_a_long_clip_is_tracked_by_a_worker_that_posts_the_prediction(ls_admin, worker_backend):
    backend, env = worker_backend["backend"], worker_backend["env"]
    pid = ls_admin.create_project("video long clip", CONFIG)
    clip = make_clip(13, frames=72, objects=2, fps=FPS)
    truth = upload_clips(ls_admin, pid, {"long.mp4": clip}, worker_backend["tmp"])
    (task_id,) = truth
    ls_admin.connect_backend(pid, backend.url)
    answer = requests.post(f"{backend.url}/predict", json={
        "tasks": [{"id": task_id, "data": ls_admin.tasks(pid)[0]["data"]}],
        "project": f"{pid}.0", "label_config": CONFIG}, timeout=60).json()
    (queued,) = answer["jobs"]
    assert "result" not in answer["results"][0], "nothing stored until the job posts it"
    predictions = wait_for("the worker's prediction in LS",
                           lambda: ls_admin.predictions(pid), 180, 2)
    (prediction,) = predictions
    regions = prediction["result"]
    scores = score_tracks(truth_of(clip), drawn_tracks(regions, clip.width, clip.height,
                                                       clip.frames),
                          range(1, clip.frames + 1))
    assert scores.coverage >= 0.9 and scores.mota >= 0.8, scores
    setup = requests.post(f"{backend.url}/setup", json={"project": f"{pid}.0",
                                                        "schema": CONFIG}, timeout=10)
    assert prediction["model_version"] == setup.json()["model_version"]
    jobs_cli = wait_for("the job listed as done",
                        lambda: _jobs_line(env, pid, queued["job"], "posted"), 30, 1)
    assert f"tracks posted to task {task_id}" in jobs_cli, jobs_cli
    listed = requests.get(f"{backend.url}/jobs", params={"key": f"ls-{pid}"}, timeout=10)
    meta = next(j["meta"] for j in listed.json()["jobs"] if j["id"] == queued["job"])
    assert meta["phase"] == "done" and meta["frames"] == clip.frames, meta
    # LS asking again (task opened, Retrieve predictions) never duplicates it
    ls_admin.retrieve_predictions(pid)
    again = requests.post(f"{backend.url}/predict", json={
        "tasks": [{"id": task_id, "data": ls_admin.tasks(pid)[0]["data"]}],
        "project": f"{pid}.0", "label_config": CONFIG}, timeout=60).json()
    wait_for("the second job to finish",
             lambda: _job_done(backend.url, pid, again["jobs"][0]["job"]), 120, 2)
    assert len(ls_admin.predictions(pid)) == 1


def test_an_annotators_two_keyframes_are_filled_by_tracking(ls_admin, worker_backend):
    """The annotator draws one object on two frames around its U-turn and submits: the worker
    fills the frames between (and after, until the object is lost) into the annotation."""
    backend = worker_backend["backend"]
    pid = ls_admin.create_project("video propagation", CONFIG)
    clip = make_clip(14, frames=60, objects=2, fps=FPS)
    (task_id,) = upload_clips(ls_admin, pid, {"turn.mp4": clip}, worker_backend["tmp"])
    ls_admin.connect_backend(pid, backend.url)
    requests.post(f"{backend.url}/setup", json={"project": f"{pid}.0", "schema": CONFIG},
                  timeout=10).raise_for_status()
    track = max(clip.tracks, key=lambda t: len(t.boxes))
    first, last = min(track.boxes) + 2, max(track.boxes) - 12

    def key(frame: int) -> dict:
        b = track.boxes[frame]
        return {"frame": frame, "enabled": True, "rotation": 0, "time": frame / FPS,
                "x": 100 * b.x1 / clip.width, "y": 100 * b.y1 / clip.height,
                "width": 100 * (b.x2 - b.x1) / clip.width,
                "height": 100 * (b.y2 - b.y1) / clip.height}

    region = {"id": "obj1", "from_name": "box", "to_name": "video", "type": "videorectangle",
              "origin": "manual", "value": {"framesCount": clip.frames,
                                            "duration": clip.frames / FPS,
                                            "labels": [track.class_name.capitalize()],
                                            "sequence": [key(first), key(last)]}}
    created = ls_admin.post(f"/api/tasks/{task_id}/annotations", {"result": [region]})
    truth = {0: {f: b for f, b in track.boxes.items() if first <= f <= last}}
    linear = score_tracks(truth, drawn_tracks([region], clip.width, clip.height, clip.frames),
                          range(first, last + 1))

    def filled() -> list[dict] | None:
        result = ls_admin.get(f"/api/annotations/{created['id']}")["result"]
        sequence = result[0]["value"]["sequence"]
        return result if len(sequence) > 2 else None

    result = wait_for("the annotation filled by propagation", filled, 240, 2)
    sequence = result[0]["value"]["sequence"]
    frames = [k["frame"] for k in sequence]
    assert first in frames and last in frames, "the annotator's keyframes stay"
    at_first = next(k for k in sequence if k["frame"] == first)
    assert at_first["x"] == pytest.approx(key(first)["x"], abs=1e-6)
    drawn = drawn_tracks(result, clip.width, clip.height, clip.frames)
    between = score_tracks(truth, drawn, range(first, last + 1))
    assert between.mean_iou >= 0.8 and between.mean_iou >= linear.mean_iou + 0.1, \
        (between, linear)
    after = score_tracks({0: dict(track.boxes)}, drawn, range(last + 1, clip.frames + 1))
    assert after.coverage >= 0.7, ("followed after the last keyframe", after)
    time.sleep(5)  # labelpilot's own update sends a webhook: it must start nothing
    jobs = requests.get(f"{backend.url}/jobs", params={"key": f"ls-{pid}"}, timeout=10).json()
    fills = [j for j in jobs["jobs"] if j["id"].startswith(f"propagate-ls-{pid}-")]
    assert len(fills) == 1, fills
    assert ls_admin.get(f"/api/annotations/{created['id']}")["result"] == result


def _jobs_line(env: dict[str, str], pid: int, job_id: str, word: str) -> str:
    done = subprocess.run([sys.executable, "-m", "labelpilot", "jobs", "--key", f"ls-{pid}"],
                          cwd=REPO, env={**os.environ, **env, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=60)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(job_id)), "")
    return line if word in line else ""


def _job_done(url: str, pid: int, job_id: str) -> bool:
    jobs = requests.get(f"{url}/jobs", params={"key": f"ls-{pid}"}, timeout=10).json()["jobs"]
    return any(j["id"] == job_id and j["status"] in ("finished", "failed") for j in jobs)


def truth_region(track, clip: SyntheticClip, every: int = 6) -> dict:  # type: ignore[no-untyped-def]
    """An annotator's region for one truth track: a keyframe every few frames, disabled where
    the object stops being visible."""
    frames = sorted(track.boxes)
    keys = []
    for i, frame in enumerate(frames):
        last_of_run = i + 1 == len(frames) or frames[i + 1] != frame + 1
        if (frame - frames[0]) % every and not last_of_run and frame != frames[0]:
            continue
        b = track.boxes[frame]
        keys.append({"frame": frame, "enabled": not last_of_run, "rotation": 0,
                     "time": frame / clip.fps, "x": 100 * b.x1 / clip.width,
                     "y": 100 * b.y1 / clip.height, "width": 100 * (b.x2 - b.x1) / clip.width,
                     "height": 100 * (b.y2 - b.y1) / clip.height})
    return {"from_name": "box", "to_name": "video", "type": "videorectangle", "origin": "manual",
            "value": {"framesCount": clip.frames, "duration": clip.frames / clip.fps,
                      "labels": [track.class_name.capitalize()], "sequence": keys}}


def test_annotated_videos_train_a_version_that_holds_out_whole_videos(ls_admin, worker_backend):
    backend = worker_backend["backend"]
    admin = {"Authorization": "Bearer video-admin"}
    pid = ls_admin.create_project("video training", CONFIG.replace(
        ' model_propagate="true"', ""))
    clips = {f"train{seed}.mp4": make_clip(seed, frames=48, objects=3, fps=FPS)
             for seed in (31, 32, 33, 34, 35)}
    truth = upload_clips(ls_admin, pid, clips, worker_backend["tmp"])
    backend_id = ls_admin.connect_backend(pid, backend.url)
    requests.put(f"{backend.url}/admin/projects/ls-{pid}/settings", headers=admin,
                 json={"epochs": 8, "imgsz": 160, "batch": 8}, timeout=10).raise_for_status()
    for task_id, clip in truth.items():
        ls_admin.post(f"/api/tasks/{task_id}/annotations",
                      {"result": [truth_region(t, clip) for t in clip.tracks]})
    started = requests.post(f"{ls_admin.url}/api/ml/{backend_id}/train",
                            headers=ls_admin.headers(), json={}, timeout=30)
    assert started.status_code in (200, 201), started.text

    def trained() -> dict | None:
        jobs = requests.get(f"{backend.url}/jobs", params={"key": f"ls-{pid}"}, timeout=10)
        done = [j for j in jobs.json()["jobs"] if j["id"].startswith("train-")]
        assert not any(j["status"] == "failed" for j in done), done
        return done[0] if done and done[0]["status"] == "finished" else None

    job = wait_for("the training job", trained, 600, 3)
    key = f"ls-{pid}-box"
    (written,) = (worker_backend["tmp"] / "models" / "store" / key).glob("v*/version.json")
    version = json.loads(written.read_text())
    assert version["metrics"]["candidate"]["map50"] >= 0.6, (version["metrics"], job["meta"])
    splits: dict[str, set[str]] = {}
    for entry in version["dataset"]["manifest"]:
        splits.setdefault(entry["task"], set()).add(entry["split"])
    assert set(splits) == {str(t) for t in truth}
    assert all(len(s) == 1 for s in splits.values()), ("whole videos in one split", splits)
    assert {"train", "holdout"} <= {s for kept in splits.values() for s in kept}
    models = requests.get(f"{backend.url}/admin/models", headers=admin, timeout=10).json()
    assert any(m["key"] == key for m in models["models"])
