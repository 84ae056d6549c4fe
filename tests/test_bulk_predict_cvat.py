"""`labelpilot predict --cvat-task N`, as an admin runs it, against the stand-in for CVAT's REST
API over real HTTP: every frame of an image task gets the shapes model's boxes as CVAT shapes
(source auto, on its own frame), a corrupt frame is reported with its reason, a second run
writes nothing twice, and bad input ends with one line saying what to fix."""

from __future__ import annotations

import pytest

from tests.fake_cvat import FakeCvat, FakeTask, serve
from tests.helpers import generate_images, iou, run_cvat_cli
from tests.test_cvat_select import LABELS

pytestmark = pytest.mark.slow


def image_task(tmp_path) -> tuple[FakeTask, list]:  # type: ignore[no-untyped-def]
    images = generate_images(tmp_path, 30, seed=811)
    frames = [g.path.read_bytes() for g in images]
    frames[4] = frames[4][:150]  # corrupt
    jobs = [{"id": 71, "task_id": 9, "start_frame": 0, "stop_frame": 29, "type": "annotation",
             "state": "new"}]
    manual = {"type": "rectangle", "frame": 7, "label_id": 1, "points": [1, 1, 9, 9],
              "rotation": 0.0, "occluded": False, "z_order": 0, "group": 0,
              "source": "manual", "attributes": []}
    return FakeTask(9, "shapes", frames, [g.path.name for g in images], LABELS, jobs,
                    annotations={"version": 1, "tags": [], "shapes": [manual],
                                 "tracks": []}), images


def test_every_frame_of_a_cvat_task_gets_shapes_once(env, tmp_path):
    cvat = FakeCvat()
    task, images = image_task(tmp_path / "images")
    cvat.add_task(task)
    with serve(cvat) as url:
        done = run_cvat_cli(url, env, "predict", "--cvat-task", "9", "--wait",
                            "--chunk-size", "8")
        assert done.returncode == 0, done.stderr + done.stdout
        # 30 frames, none deleted or left out (frame 7's shape is manual): all 30 counted done
        assert "30/30 tasks" in done.stdout, done.stdout
        assert "failed: task 4: frame 4:" in done.stdout, done.stdout
        shapes = [s for s in task.annotations["shapes"] if s["source"] == "auto"]
        by_frame: dict[int, list] = {}
        for s in shapes:
            by_frame.setdefault(s["frame"], []).append(s)
        assert 4 not in by_frame and len(by_frame) >= 25, sorted(by_frame)
        # `written` counts the frames that got shapes, nothing else
        assert f" {len(by_frame)} predictions written" in done.stdout, done.stdout
        names = {label["id"]: label["name"] for label in LABELS}
        hits = total = 0
        for frame, found in by_frame.items():
            for box in images[frame].boxes:
                total += 1
                hits += any(names[s["label_id"]] == box.class_name and iou(
                    tuple(s["points"]), (box.x1, box.y1, box.x2, box.y2)) > 0.5 for s in found)
        assert hits >= 0.7 * total, (hits, total)

        again = run_cvat_cli(url, env, "predict", "--cvat-task", "9", "--wait")
        assert again.returncode == 0 and "0 predictions written" in again.stdout, again.stdout
        assert [s for s in task.annotations["shapes"] if s["source"] == "auto"] == shapes

        missing = run_cvat_cli(url, env, "predict", "--cvat-task", "404", "--wait")
        assert missing.returncode == 2 and "404" in missing.stderr, missing.stderr
        version = run_cvat_cli(url, env, "predict", "--cvat-task", "9", "--model-version",
                               "nope-v1")
        assert version.returncode == 2 and "'nope-v1' is not servable" in version.stderr
        for out in (missing, version):
            assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_a_cvat_task_with_slicing_set_is_predicted_sliced(env, redis_url, tmp_path):
    """`labelpilot settings cvat-task-19 --slice 640`: the bulk run slices every frame, as
    the facade's detector does for that key (the whole-frame pass misses these small shapes,
    see tests/test_slicing.py)."""
    import cv2
    import redis

    from labelpilot.synthetic_huge import make_huge_image, recall
    from labelpilot.trainers.settings import save_params

    sample = make_huge_image(seed=3, size=2048, count=60)
    frame = cv2.imencode(".png", sample.image)[1].tobytes()
    jobs = [{"id": 72, "task_id": 19, "start_frame": 0, "stop_frame": 0, "type": "annotation",
             "state": "new"}]
    task = FakeTask(19, "huge", [frame], ["huge.png"], LABELS, jobs)
    cvat = FakeCvat()
    cvat.add_task(task)
    connection = redis.Redis.from_url(redis_url)
    save_params(connection, "cvat-task-19", slice=640, slice_overlap=0.25)
    try:
        with serve(cvat) as url:
            done = run_cvat_cli(url, env, "predict", "--cvat-task", "19", "--wait")
    finally:
        connection.delete("labelpilot:settings:cvat-task-19")
    assert done.returncode == 0 and "1 predictions written" in done.stdout, done.stdout
    names = {label["id"]: label["name"] for label in LABELS}
    found = [(names[s["label_id"]], s["points"]) for s in task.annotations["shapes"]]
    assert recall(sample.boxes, found) >= 0.85, len(found)
