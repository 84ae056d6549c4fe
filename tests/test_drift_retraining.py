"""Retraining requests: the training a drift queues is held for vetting (not auto-promoted,
its version attached to the request with a drift reference), an admin approves it over HTTP
(the candidate serves) or rejects it; unknown ids answer 404, undecidable ones 409."""

from __future__ import annotations

from pathlib import Path

import redis

from labelpilot.backends.model_store import ModelStore
from labelpilot.synthetic import CLASSES
from labelpilot.trainers.drift_monitor import record_status
from labelpilot.trainers.drift_reference import REFERENCE_FILE
from labelpilot.trainers.pipeline import TrainParams, TrainRequest, run_training
from labelpilot.trainers.retraining import RetrainingRequests
from tests.helpers import generate_images, run_cli, shapes_samples

AUTH = {"Authorization": "Bearer admin-secret"}


def test_drift_training_waits_for_an_admin_who_approves_it(
    tmp_path: Path, redis_url: str, shapes_model: Path
) -> None:
    """A 1-epoch retraining of the (good) shapes model would pass the automatic gate; because
    a drift's request asked for it, it is written with its reference and held instead."""
    connection = redis.Redis.from_url(redis_url)
    store = ModelStore(tmp_path / "store", connection)
    key = "ls-41-label"
    queued: list[dict] = []
    requests = RetrainingRequests(
        connection, lambda project, model_key, trigger: queued.append(trigger) or "job-1"
    )
    raised = requests.raise_request("ls-41", key, "yolo11n", "drift", {"p_value": 0.002})
    assert raised is not None and raised["status"] == "training"
    assert requests.raise_request("ls-41", key, "yolo11n", "drift", {}) is None  # one open
    request = TrainRequest(
        key=key,
        task="detect",
        class_names=CLASSES,
        samples=shapes_samples(tmp_path / "images", 14),
        base_model=str(shapes_model),
        serving_weights=None,
        params=TrainParams(epochs=1, imgsz=160, batch=8),
        trigger=queued[0],
    )
    result = run_training(request, store)
    assert result["decision"]["promote"] is False, result["decision"]
    assert raised["id"] in result["decision"]["reason"]
    assert store.current(key) is None
    version = store.get(key, result["version"])
    assert (version.path / REFERENCE_FILE).exists()
    assert result["timings"]["reference_s"] > 0
    ready = requests.get(raised["id"])
    assert ready["status"] == "ready" and ready["candidate"] == version.version

    approved = requests.approve(raised["id"], store, by="alice")
    assert approved["status"] == "approved" and approved["decided_by"] == "alice"
    current = store.current(key)
    assert current is not None and current.version == version.version
    assert store.history(key)[-1]["by"] == "alice"
    assert requests.open_request(key) is None  # a later drift may raise a new one


def test_admin_http_lists_approves_and_rejects(
    make_client, tmp_path: Path, redis_url: str, shapes_model: Path
) -> None:
    client = make_client(LABELPILOT_ADMIN_TOKEN="admin-secret", MODEL_DIR=str(tmp_path))
    connection = redis.Redis.from_url(redis_url)
    store = ModelStore(tmp_path / "store", connection)
    requests = RetrainingRequests(connection)
    key, other = "ls-42-label", "ls-43-label"
    first = requests.raise_request("ls-42", key, "ls-42-label-v1", "drift", {"p_value": 0.001})
    second = requests.raise_request("ls-43", other, "yolo11n", "drift", {"p_value": 0.003})
    assert first is not None and second is not None

    assert client.get("/admin/retraining").status_code == 401
    listed = client.get("/admin/retraining?project=ls-42", headers=AUTH)
    assert listed.status_code == 200
    assert [r["id"] for r in listed.get_json()["requests"]] == [first["id"]]
    assert client.get("/admin/retraining?project=../x", headers=AUTH).status_code == 400

    missing = client.post("/admin/retraining/rr-nope/approve", headers=AUTH)
    assert missing.status_code == 404 and "no retraining request" in missing.get_json()["error"]
    early = client.post(f"/admin/retraining/{first['id']}/approve", headers=AUTH)
    assert early.status_code == 409 and "not ready" in early.get_json()["error"]

    v1 = store.write_version(key, shapes_model, {"task": "detect"})
    store.promote(key, v1.version)
    v2 = store.write_version(key, shapes_model, {"task": "detect"})
    requests.attach_candidate(first["id"], v2.version)
    approved = client.post(
        f"/admin/retraining/{first['id']}/approve", headers=AUTH, json={"by": "alice"}
    )
    assert approved.status_code == 200, approved.get_json()
    assert approved.get_json()["status"] == "approved"
    current = store.current(key)
    assert current is not None and current.version == v2.version
    again = client.post(f"/admin/retraining/{first['id']}/reject", headers=AUTH)
    assert again.status_code == 409

    o1 = store.write_version(other, shapes_model, {"task": "detect"})
    requests.attach_candidate(second["id"], o1.version)
    rejected = client.post(f"/admin/retraining/{second['id']}/reject", headers=AUTH)
    assert rejected.status_code == 200 and rejected.get_json()["status"] == "rejected"
    assert store.current(other) is None  # the default weights keep serving
    assert client.post(f"/admin/retraining/{second['id']}/approve", headers=AUTH).status_code == 409


def test_cli_lists_and_decides_requests(
    env: dict[str, str], redis_url: str, shapes_model: Path
) -> None:
    connection = redis.Redis.from_url(redis_url)
    store = ModelStore(Path(env["MODEL_DIR"]) / "store", connection)
    requests = RetrainingRequests(connection)
    key = "ls-44-label"
    raised = requests.raise_request(
        "ls-44", key, "yolo11n", "drift", {"reasons": ["brightness -3.0 sd"]}
    )
    assert raised is not None
    version = store.write_version(key, shapes_model, {"task": "detect"})
    requests.attach_candidate(raised["id"], version.version)
    record_status(
        connection,
        key,
        {
            "drifted": True,
            "p_value": 0.002,
            "window": 50,
            "confidence_drop": 0.31,
            "model_version": "yolo11n",
        },
    )

    listed = run_cli("models", "requests", "--project", "ls-44", env=env)
    assert listed.returncode == 0, listed.stderr
    assert raised["id"] in listed.stdout and "ready" in listed.stdout
    assert "brightness -3.0 sd" in listed.stdout
    assert f"drift {key}: DRIFT (p=0.002, window 50, confidence drop 0.31" in listed.stdout
    unknown = run_cli("models", "approve", "rr-unknown", env=env)
    assert unknown.returncode == 2 and "no retraining request" in unknown.stderr
    done = run_cli("models", "approve", raised["id"], env=env)
    assert done.returncode == 0, done.stderr
    assert f"{key} serves {version.version}" in done.stdout
    print(listed.stdout, done.stdout)


def test_predict_feeds_the_drift_watch_which_raises_a_request(
    make_client, tmp_path: Path, redis_url: str, shapes_model: Path
) -> None:
    """Real /predict of the in-process app on a promoted version that has a reference: darker
    images complete a window, the test runs in the background, drift is recorded, a retraining
    request is raised and its training queued (an RQ job, no worker needed), visible over HTTP."""
    import time

    import cv2

    from labelpilot.label_config import load
    from labelpilot.trainers.drift_monitor import drift_status
    from labelpilot.trainers.drift_reference import write_reference
    from tests.helpers import serve_directory

    connection = redis.Redis.from_url(redis_url)
    store = ModelStore(tmp_path / "store", connection)
    key = "ls-45-label"  # LS project 45, control "label" of detection_shapes
    reference_dir = tmp_path / "reference"
    images = [g.path for g in generate_images(reference_dir, 40, seed=3)]
    files = write_reference(str(shapes_model), images, tmp_path, imgsz=160)
    version = store.write_version(key, shapes_model, {"task": "detect"}, extra_files=files)
    store.promote(key, version.version)
    served = tmp_path / "served"
    for g in generate_images(served, 12, seed=4):
        cv2.imwrite(str(g.path), (cv2.imread(str(g.path)) * 0.5).astype("uint8"))
    client = make_client(
        LABELPILOT_ADMIN_TOKEN="admin-secret", MODEL_DIR=str(tmp_path), LABELPILOT_DRIFT_WINDOW="10"
    )
    with serve_directory(served) as url:
        tasks = [
            {"id": i, "data": {"image": f"{url}/{p.name}"}}
            for i, p in enumerate(sorted(served.iterdir())[:10])
        ]
        body = {
            "tasks": tasks,
            "project": "45.1700000000",
            "label_config": load("detection_shapes"),
            "params": {"context": None},
        }
        answer = client.post("/predict", json=body)
    assert answer.status_code == 200, answer.get_json()
    deadline = time.monotonic() + 60
    while (status := drift_status(connection, key)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status is not None and status["drifted"] is True, status
    assert status["model_version"] == version.model_version and status["window"] == 10
    while not RetrainingRequests(connection).list("ls-45") and time.monotonic() < deadline:
        time.sleep(0.2)
    listed = client.get("/admin/retraining?project=ls-45", headers=AUTH).get_json()["requests"]
    assert [r["status"] for r in listed] == ["training"]
    assert listed[0]["job"] and listed[0]["job"].startswith("train-ls-45-")


def test_a_request_whose_training_fails_is_closed_and_drift_can_raise_a_new_one(
        redis_url: str) -> None:
    import redis as redis_module

    from labelpilot.trainers.retraining import RetrainingRequests

    requests = RetrainingRequests(redis_module.Redis.from_url(redis_url))
    first = requests.raise_request("ls-88", "ls-88-label", "ls-88-label-v1", "drift", {})
    assert first is not None
    assert requests.raise_request("ls-88", "ls-88-label", "ls-88-label-v1", "drift", {}) is None
    failed = requests.fail(first["id"], "the training failed: no labelled images")
    assert failed is not None and failed["status"] == "failed"
    assert "no labelled images" in failed["error"]
    assert requests.fail(first["id"], "again") is None, "only a training request fails"
    again = requests.raise_request("ls-88", "ls-88-label", "ls-88-label-v1", "drift", {})
    assert again is not None and again["id"] != first["id"]
