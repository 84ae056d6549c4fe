"""The learning loop with real parts: LS annotations → webhook → RQ worker → train →
evaluate → promote → every gunicorn worker hot-swaps → LS predictions use the new version."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import requests

from label_config import load
from tests.conftest import REPO, BackendServer, start_backend
from tests.helpers import generate_images, iou, ls_box

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ADMIN = {"Authorization": "Bearer test-admin-token"}


def quality(predictions: list[dict], truth: dict[int, object]) -> float:
    """Fraction of ground-truth shapes found with the right label (IoU > 0.5)."""
    found = total = 0
    by_task = {p["task"]: p for p in predictions}
    for task_id, image in truth.items():
        regions = by_task[task_id]["result"] if task_id in by_task else []
        for gt in image.boxes:  # type: ignore[attr-defined]
            total += 1
            found += any(r["value"]["rectanglelabels"] == [gt.class_name.capitalize()]
                         and iou(ls_box(r), (gt.x1, gt.y1, gt.x2, gt.y2)) > 0.5
                         for r in regions)
    return found / total


@pytest.fixture(scope="module")
def loop(tmp_path_factory, redis_url, weak_shapes_model, label_studio) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("loop")
    env = {"REDIS_URL": redis_url, "LABELPILOT_MODEL_DETECT": str(weak_shapes_model),
           "MODEL_DIR": str(tmp / "models"), "LABELPILOT_ADMIN_TOKEN": "test-admin-token"}
    backend = start_backend(tmp, env, workers=2)
    worker_log = tmp / "worker.log"
    worker = subprocess.Popen([sys.executable, "-m", "labelpilot", "worker"], cwd=REPO,
                              env={**os.environ, **env, "PYTHONPATH": str(REPO)},
                              stdout=open(worker_log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
    yield {"backend": backend, "worker": worker, "worker_log": worker_log, "env": env,
           "tmp": tmp}
    worker.terminate()
    worker.wait(30)
    backend.stop()
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "retraining-worker.log").write_bytes(worker_log.read_bytes())
    (artifacts / "retraining-backend.log").write_bytes(backend.log.read_bytes())


def wait_for(predicate, timeout: float, interval: float = 1.0, what: str = ""):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_start_training_in_label_studio_produces_a_better_promoted_version(
        loop, ls_admin, label_studio, tmp_path_factory):
    backend: BackendServer = loop["backend"]
    headers = {"Authorization": f"Token {ls_admin.api_key}"}
    pid = ls_admin.create_project("retraining", load("detection_shapes"))
    images = generate_images(tmp_path_factory.mktemp("loop-images"), 64, seed=4242)
    ls_admin.upload_images(pid, [g.path for g in images])
    backend_id = ls_admin.connect_backend(pid, backend.url)
    by_name = {g.path.name: g for g in images}
    truth = {t["id"]: next(g for n, g in by_name.items() if t["data"]["image"].endswith(n))
             for t in ls_admin.tasks(pid)}
    ls_admin.retrieve_predictions(pid)
    before = ls_admin.predictions(pid)
    first_version = before[0]["model_version"]
    baseline = quality(before, truth)

    settings = requests.put(f"{backend.url}/admin/projects/ls-{pid}/settings", headers=ADMIN,
                            json={"epochs": 15, "imgsz": 160, "batch": 8}, timeout=10)
    assert settings.status_code == 200, settings.text
    for task_id, image in truth.items():  # annotators label every task
        result = [{"from_name": "label", "to_name": "image", "type": "rectanglelabels",
                   "original_width": image.size, "original_height": image.size,
                   "value": {"x": b.x1 / image.size * 100, "y": b.y1 / image.size * 100,
                             "width": (b.x2 - b.x1) / image.size * 100,
                             "height": (b.y2 - b.y1) / image.size * 100, "rotation": 0,
                             "rectanglelabels": [b.class_name.capitalize()]}}
                  for b in image.boxes]
        created = requests.post(f"{ls_admin.url}/api/tasks/{task_id}/annotations",
                                headers=headers, json={"result": result}, timeout=30)
        assert created.status_code == 201, created.text
    no_job_yet = requests.get(f"{backend.url}/jobs", params={"project": pid}, timeout=10)
    assert no_job_yet.json()["jobs"] == []  # annotations alone don't train (train_every=0)

    started = requests.post(f"{ls_admin.url}/api/ml/{backend_id}/train", headers=headers,
                            json={}, timeout=30)
    assert started.status_code in (200, 201), started.text
    phases: set[str] = set()

    def finished() -> dict | None:
        jobs = requests.get(f"{backend.url}/jobs", params={"project": pid}, timeout=10).json()
        assert len(jobs["jobs"]) == 1, jobs
        job = jobs["jobs"][0]
        phases.add(job["meta"].get("phase"))
        assert job["status"] != "failed", job
        return job if job["status"] == "finished" else None

    job = wait_for(finished, timeout=900, interval=2, what="the training job")
    assert {"training", "done"} <= phases | {job["meta"]["phase"]}
    assert job["meta"]["epochs"] == 15 and job["meta"]["trigger"]["event"] == "START_TRAINING"

    models = requests.get(f"{backend.url}/admin/models", headers=ADMIN, timeout=10).json()
    (model,) = [m for m in models["models"] if m["key"] == f"ls-{pid}-label"]
    assert model["current"] == "v1"
    metrics = model["versions"][0]["metrics"]
    assert metrics["candidate"]["map50_95"] > metrics["current"]["map50_95"]
    new_version = f"ls-{pid}-label-v1"

    def everyone_serves_new() -> bool:  # /setup lands on either gunicorn worker
        seen = {requests.post(f"{backend.url}/setup", timeout=5, json={
            "project": f"{pid}.0", "schema": load("detection_shapes")}).json()["model_version"]
            for _ in range(12)}
        return seen == {new_version}

    wait_for(everyone_serves_new, timeout=10, interval=0.5, what="all workers to swap")
    ls_admin.retrieve_predictions(pid)
    after = [p for p in ls_admin.predictions(pid) if p["model_version"] == new_version]
    assert {p["task"] for p in after} == set(truth)  # LS re-predicted with the new version
    assert first_version != new_version
    assert quality(after, truth) > baseline
