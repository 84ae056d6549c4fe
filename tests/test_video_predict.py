"""Video tasks through the real app in-process: tracked `videorectangle` predictions that match
the generated clips' ground truth, clear per-task errors for bad videos, long clips queued."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import redis
from rq.job import Job

from bench.track_scores import score_tracks
from labelpilot.backends.keyframes import interpolate
from labelpilot.backends.shapes import BBox
from labelpilot.backends.tracks import Keyframe
from labelpilot.label_config import load
from labelpilot.synthetic_video import SyntheticClip, make_clip, write_clip, write_vfr_clip
from tests.helpers import generate_images, serve_directory

CONFIG = load("video_tracking_shapes")
FPS = 12.0


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Generated clips (with truth), broken files and an image, served over HTTP."""
    directory = tmp_path_factory.mktemp("videos")
    clip = make_clip(3, frames=60, objects=3, fps=FPS)
    for suffix in (".mp4", ".webm"):
        write_clip(clip, directory / f"clip{suffix}")
    whole = (directory / "clip.mp4").read_bytes()
    (directory / "truncated.mp4").write_bytes(whole[: len(whole) * 2 // 5])
    noise = np.random.default_rng(0).integers(0, 256, len(whole) // 2, dtype=np.uint8)
    (directory / "corrupt.mp4").write_bytes(whole[:64] + noise.tobytes())
    (directory / "empty.mp4").write_bytes(b"")
    write_vfr_clip([clip.render(1)] * 3, [0.0, 35999.0, 36000.0], directory / "ten-hours.mp4")
    write_clip(make_clip(5, frames=40, objects=1, fps=FPS), directory / "long.mp4")
    generate_images(directory, 1, seed=9)
    with serve_directory(directory) as url:
        yield {"url": url, "clip": clip, "image": f"{url}/img9_0.png"}


def video_task(task_id: int, url: str, fps: object = FPS) -> dict:
    return {"id": task_id, "data": {"video": url, "fps": fps}}


def predict(client, tasks: list[dict], config: str = CONFIG):  # type: ignore[no-untyped-def]
    return client.post("/predict", json={"tasks": tasks, "project": "41.1",
                                         "label_config": config})


def drawn_tracks(regions: list[dict], width: int, height: int, last: int
                 ) -> dict[int, dict[int, BBox]]:
    """Each region's boxes on every frame, drawn from its keyframes as LS draws them."""
    out = {}
    for number, region in enumerate(regions):
        keyframes = [Keyframe(k["frame"], BBox(
            k["x"] * width / 100, k["y"] * height / 100, (k["x"] + k["width"]) * width / 100,
            (k["y"] + k["height"]) * height / 100), k["enabled"])
            for k in region["value"]["sequence"]]
        out[number] = interpolate(keyframes, last)
    return out


def truth_of(clip: SyntheticClip) -> dict[int, dict[int, BBox]]:
    return {t.track_id: dict(t.boxes) for t in clip.tracks}


@pytest.mark.parametrize("name", ["clip.mp4", "clip.webm"])
def test_a_video_task_gets_one_region_per_track_that_draws_the_truth(make_client, videos, name):
    client = make_client()
    clip = videos["clip"]
    answer = predict(client, [video_task(1, f"{videos['url']}/{name}")])
    assert answer.status_code == 200, answer.json
    (result,) = answer.json["results"]
    regions = result["result"]
    assert regions and all(r["type"] == "videorectangle" and r["from_name"] == "box"
                           and r["to_name"] == "video" for r in regions)
    assert {r["value"]["labels"][0] for r in regions} <= {"Circle", "Square", "Triangle"}
    for region in regions:
        value = region["value"]
        assert value["framesCount"] == clip.frames
        assert value["duration"] == pytest.approx(clip.frames / FPS, abs=0.01)
        frames = [k["frame"] for k in value["sequence"]]
        assert frames == sorted(frames) and frames[0] >= 1 and frames[-1] <= clip.frames
        assert all(k["time"] == pytest.approx(k["frame"] / FPS) for k in value["sequence"])
        assert len(frames) < 0.5 * (frames[-1] - frames[0] + 1), "thinned to keyframes"
    assert result["score"] == pytest.approx(np.mean([r["score"] for r in regions]), abs=1e-3)
    scores = score_tracks(truth_of(clip), drawn_tracks(regions, clip.width, clip.height,
                                                       clip.frames),
                          range(1, clip.frames + 1))
    assert scores.coverage >= 0.9, scores
    assert scores.mean_iou >= 0.8, scores
    assert scores.mota >= 0.8, scores
    assert scores.idf1 >= 0.8, scores
    assert scores.id_switches <= 2, scores


@pytest.mark.parametrize("name, fps, fragment", [
    ("corrupt.mp4", FPS, "corrupt"),
    ("truncated.mp4", FPS, "truncated"),
    ("empty.mp4", FPS, "empty"),
    ("img9_0.png", FPS, "this is an image (PNG), not a video"),
    ("ten-hours.mp4", FPS, "over the limit of 3600 s"),
    ("missing.mp4", FPS, "HTTP 404"),
    ("clip.mp4", "abc", "not a number"),
    ("clip.mp4", 1e9, "between 0 and 240"),
    ("clip.mp4", None, "no 'fps' field"),
])
def test_a_bad_video_fails_its_task_with_the_reason_and_the_others_are_served(
        make_client, videos, name, fps, fragment):
    client = make_client()
    bad = video_task(2, f"{videos['url']}/{name}", fps)
    if fps is None:
        del bad["data"]["fps"]
    answer = predict(client, [video_task(1, f"{videos['url']}/clip.mp4"), bad])
    assert answer.status_code == 200, answer.json
    good, failed = answer.json["results"]
    assert good["result"], "the good task is served"
    assert "result" not in failed
    (error,) = answer.json["errors"]
    assert error["task"] == 2 and fragment in error["error"], error


def test_a_video_given_to_an_image_config_says_to_use_a_video_tag(make_client, videos):
    client = make_client()
    answer = client.post("/predict", json={
        "tasks": [{"id": 1, "data": {"image": f"{videos['url']}/clip.mp4"}}],
        "project": "41.1", "label_config": load("detection_shapes")})
    assert answer.status_code == 200
    assert "this is a video (MP4), not an image: use a <Video> tag" in \
        answer.json["errors"][0]["error"]


@pytest.mark.parametrize("config, fragment", [
    (CONFIG.replace('framerate="$fps"', 'framerate="0"'), "between 0 and 240"),
    (CONFIG.replace('model_tracker="bytetrack"', 'model_tracker="sort3"'),
     'model_tracker="sort3"'),
    (CONFIG.replace('<Labels name="videoLabels" toName="video">', '<Labels name="l" toName="x">'),
     "no Labels tag on Video"),
])
def test_video_configs_the_backend_cannot_serve_are_422_at_setup(make_client, config, fragment):
    answer = make_client().post("/setup", json={"project": "41.1", "schema": config})
    assert answer.status_code == 422 and fragment in answer.json["error"], answer.json


def test_tracker_settings_on_the_control_are_checked(make_client, videos):
    client = make_client()
    tuned = CONFIG.replace('model_tracker="bytetrack"',
                           'model_tracker="bytetrack" bytetrack_track_buffer="60"')
    assert predict(client, [video_task(1, f"{videos['url']}/clip.mp4")], tuned).status_code == 200
    for attribute, fragment in (('bytetrack_nonsense="1"', "has no setting 'nonsense'"),
                                ('bytetrack_track_buffer="lots"', "is not a int"),
                                ('model_tracker="botsort" botsort_gmc_method="foo"',
                                 "Unknown GMC method: foo")):
        wrong = CONFIG.replace('model_tracker="bytetrack"',
                               attribute if attribute.startswith("model_tracker")
                               else f'model_tracker="bytetrack" {attribute}')
        answer = predict(client, [video_task(1, f"{videos['url']}/clip.mp4")], wrong)
        assert answer.status_code == 422 and fragment in answer.json["error"], answer.json


def test_the_inline_frames_are_a_budget_for_the_whole_request(make_client, videos, redis_url):
    """Two 60-frame clips with 100 frames inline: the first is tracked, the second queued."""
    client = make_client(LABELPILOT_VIDEO_INLINE_FRAMES="100")
    answer = predict(client, [video_task(1, f"{videos['url']}/clip.mp4"),
                              video_task(2, f"{videos['url']}/clip.webm")])
    assert answer.status_code == 200, answer.json
    first, second = answer.json["results"]
    assert first["result"] and "result" not in second
    (queued,) = answer.json["jobs"]
    assert queued["task"] == 2
    Job.fetch(queued["job"], connection=redis.Redis.from_url(redis_url)).delete()


def test_a_long_clip_is_queued_once_and_the_answer_comes_at_once(make_client, videos, redis_url):
    client = make_client(LABELPILOT_VIDEO_INLINE_FRAMES="20")
    connection = redis.Redis.from_url(redis_url)
    task = video_task(7, f"{videos['url']}/long.mp4")
    answer = predict(client, [task, video_task(8, f"{videos['url']}/clip.mp4")])
    assert answer.status_code == 200, answer.json
    for result in answer.json["results"]:  # 40 and 60 frames: both queued
        assert "result" not in result and "job" not in result, "LS stores nothing yet"
    jobs = {j["task"]: j["job"] for j in answer.json["jobs"]}
    assert set(jobs) == {7, 8}
    job = Job.fetch(jobs[7], connection=connection)
    assert job.meta["phase"] == "queued" and job.meta["key"] == "ls-41"
    assert job.kwargs["request"]["task_id"] == 7
    again = predict(client, [task]).json
    assert again["jobs"] == [{"task": 7, "job": jobs[7]}], "asking again joins the queued job"
    assert connection.llen("rq:queue:labelpilot") >= 2
    for job_id in jobs.values():
        Job.fetch(job_id, connection=connection).delete()


def test_without_a_queue_a_long_clip_fails_with_what_to_change(videos, shapes_model, tmp_path):
    from labelpilot.adapters.label_studio.config import parse_label_config
    from labelpilot.adapters.label_studio.image_source import ImageSource
    from labelpilot.adapters.label_studio.payloads import Task
    from labelpilot.adapters.label_studio.predictor import Predictor
    from labelpilot.adapters.label_studio.video import VideoLimits
    from labelpilot.backends.model_ref import ModelLocator
    from labelpilot.backends.model_store import ModelStore

    store = ModelStore(tmp_path / "store", redis.Redis.from_url("redis://127.0.0.1:1"))
    predictor = Predictor(store, ModelLocator(tmp_path, allow_custom_paths=True),
                          video=VideoLimits(inline_frames=10))
    plan = parse_label_config(CONFIG.replace('model_tracker="bytetrack"',
                                             f'model_path="{shapes_model}"'))
    out = predictor.predict([Task(id=1, data={"video": f"{videos['url']}/long.mp4",
                                              "fps": FPS})],
                            plan, ImageSource(allowed_hosts=frozenset({"127.0.0.1"})))
    assert "more than LABELPILOT_VIDEO_INLINE_FRAMES=10" in out[0]["error"]


def test_a_failed_tracking_job_is_reported_and_not_redone_at_once(make_client, videos,
                                                                   redis_url):
    from rq import Queue, SimpleWorker

    client = make_client(LABELPILOT_VIDEO_INLINE_FRAMES="20")
    connection = redis.Redis.from_url(redis_url)
    task = video_task(9, f"{videos['url']}/long.mp4")
    (queued,) = predict(client, [task]).json["jobs"]
    queue = Queue("labelpilot", connection=connection)
    assert queue.job_ids == [queued["job"]]
    # the worker has no Label Studio token for project 41: the job fails, with its reason
    SimpleWorker([queue], connection=connection).work(burst=True)
    assert Job.fetch(queued["job"], connection=connection).get_status() == "failed"
    again = predict(client, [task]).json
    assert "jobs" not in again and queue.job_ids == []
    (error,) = again["errors"]
    assert f"tracking job {queued['job']} failed:" in error["error"], error
    assert "token" in error["error"].lower(), error
    Job.fetch(queued["job"], connection=connection).delete()
