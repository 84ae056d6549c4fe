"""Acceptance rate for CVAT over real HTTP: the nuclio facade (gunicorn) is called the way
CVAT's lambda manager calls a detector, a stand-in for CVAT's REST API (`tests.fake_cvat`)
holds the job's frames and the annotations an annotator saved, the signed `update:job`
webhook queues a job, and a real RQ worker records the figures."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest
import redis
import requests
from rq.job import Job

from labelpilot.backends.acceptance import AcceptanceLedger
from labelpilot.processes import stop_processes
from tests.conftest import REPO
from tests.fake_cvat import FakeCvat, FakeTask, serve
from tests.helpers import generate_images
from tests.test_cvat_server import b64, facade, signed  # noqa: F401 - the module's fixture

pytestmark = pytest.mark.slow
LABELS = [
    {"id": 1, "name": "circle", "color": "#e6194b", "type": "rectangle", "attributes": []},
    {"id": 2, "name": "square", "color": "#3cb44b", "type": "rectangle", "attributes": []},
    {"id": 3, "name": "triangle", "color": "#4363d8", "type": "rectangle", "attributes": []},
]
LABEL_IDS = {label["name"]: label["id"] for label in LABELS}


def stored(shape: dict, frame: int, label: str | None = None) -> dict:
    """A detector shape as CVAT stores it after the annotator saved the job."""
    return {
        "type": "rectangle",
        "frame": frame,
        "label_id": LABEL_IDS[label or shape["label"]],
        "points": shape["points"],
        "rotation": 0.0,
        "occluded": False,
        "z_order": 0,
        "group": 0,
        "source": "auto",
        "attributes": [],
    }


def test_completed_cvat_job_is_compared_with_what_the_detector_returned(
    facade,  # noqa: F811 - the fixture imported above
    redis_url,
    tmp_path,
) -> None:  # type: ignore[no-untyped-def]
    images = generate_images(tmp_path / "frames", 3, seed=4401)
    frames = [g.path.read_bytes() for g in images]
    detector = next(
        name
        for name, config in facade.functions().items()
        if config["metadata"]["annotations"]["type"] == "detector"
    )
    version = facade.functions()[detector]["metadata"]["annotations"]["model_version"]
    # CVAT runs the detector on frames 0 and 1 (frame 2 is never pre-annotated)
    detected = []
    for data in frames[:2]:
        answer = facade.invoke(detector, {"image": b64(data), "threshold": 0.25})
        assert answer.status_code == 200, answer.text
        detected.append([s for s in answer.json() if s["type"] == "rectangle"])
    assert len(detected[1]) >= 2, "the shapes model found too few shapes to edit"

    # frame 0: every prediction kept; frame 1: first deleted, second relabelled, one added;
    # frame 2: drawn by hand
    other = {"circle": "square", "square": "triangle", "triangle": "circle"}
    shapes = [stored(s, 0) for s in detected[0]]
    shapes += [stored(detected[1][1], 1, other[detected[1][1]["label"]])]
    shapes += [stored(s, 1) for s in detected[1][2:]]
    shapes += [
        {**stored(detected[1][0], 1), "points": [1.0, 1.0, 6.0, 6.0]},
        {**stored(detected[1][0], 2), "points": [1.0, 1.0, 9.0, 9.0]},
    ]
    task_id = 700000 + int(uuid.uuid4().int % 1000)
    job_id = 9000 + task_id % 1000
    cvat = FakeCvat()
    cvat.add_task(
        FakeTask(
            task_id,
            "acceptance",
            frames,
            [g.path.name for g in images],
            LABELS,
            [
                {
                    "id": job_id,
                    "task_id": task_id,
                    "start_frame": 0,
                    "stop_frame": 2,
                    "type": "annotation",
                    "state": "completed",
                }
            ],
            annotations={"version": 1, "tags": [], "shapes": shapes, "tracks": []},
        )
    )
    connection = redis.Redis.from_url(redis_url)
    key = f"cvat-task-{task_id}"
    with serve(cvat) as url:
        event = {
            "event": "update:job",
            "webhook_id": 1,
            "sender": {"username": "ann"},
            "job": {
                "id": job_id,
                "task_id": task_id,
                "project_id": None,
                "state": "completed",
                "stage": "annotation",
            },
            "before_update": {"state": "in progress"},
        }
        raw, headers = signed(event)
        answer = requests.post(f"{facade.url}/cvat/webhook", data=raw, headers=headers, timeout=10)
        assert answer.status_code == 202, answer.text
        training = Job.fetch(answer.json()["job"], connection=connection)
        training.cancel()  # this test is about the acceptance job only
        training.delete()
        accepting = answer.json()["acceptance"]
        log = tmp_path / "worker.log"
        worker = subprocess.Popen(
            [sys.executable, "-m", "labelpilot", "worker"],
            cwd=REPO,
            env={**facade.env, "CVAT_URL": url, "CVAT_ACCESS_TOKEN": "pat"},
            stdout=open(log, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                job = Job.fetch(accepting, connection=connection)
                status = job.get_status(refresh=True)
                if status in ("finished", "failed") or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        finally:
            stop_processes([worker])
        assert status == "finished", f"{status}: {job.exc_info}\n{log.read_text()[-3000:]}"
    n0, n1 = len(detected[0]), len(detected[1])
    ledger = AcceptanceLedger(connection)
    (row,) = ledger.summary(key)
    assert row["model_version"] == version
    # frame 0 keeps n0; frame 1: n1 predicted, n1 - 2 kept, 2 deleted, 2 added
    assert (row["annotations"], row["predicted"], row["kept"], row["added"], row["deleted"]) == (
        2,
        n0 + n1,
        n0 + n1 - 2,
        2,
        2,
    )
    assert ledger.ignored(key) == {key: {"no_labelpilot_prediction": 1}}  # frame 2
    assert job.result["frames"] == 2 and job.result["ignored"] == 1
    (REPO / "test-artifacts").mkdir(exist_ok=True)
    (REPO / "test-artifacts" / "acceptance-cvat-figures.txt").write_text(
        repr({"row": row, "job": job.result, "ignored": ledger.ignored(key)})
    )
