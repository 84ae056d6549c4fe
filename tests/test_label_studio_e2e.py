"""End to end with a real Label Studio 1.23.2 and the backend served by gunicorn."""

from __future__ import annotations

import time

import pytest
import redis
import requests

from labelpilot.adapters.label_studio.webhook import EVENTS_STREAM
from labelpilot.backends.images import decode_image
from labelpilot.backends.yolo import YoloModel
from labelpilot.label_config import load
from tests.helpers import generate_images, iou, ls_box

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def project(ls_admin, label_studio, backend, tmp_path_factory):
    """A detection project with uploaded, storage-synced (absolute URL) and JSON-imported
    (relative local-files URL) images, one corrupt upload, and the backend connected."""
    pid = ls_admin.create_project("shapes e2e", load("detection_shapes"))
    tmp = tmp_path_factory.mktemp("images")
    uploaded = generate_images(tmp / "upload", 4, seed=101)
    corrupt = tmp / "upload" / "corrupt.png"
    corrupt.write_bytes(uploaded[0].path.read_bytes()[:300])
    upload_ids = ls_admin.upload_images(pid, [g.path for g in uploaded] + [corrupt])
    storage_dir = label_studio.files_root / f"p{pid}"
    synced = generate_images(storage_dir, 2, seed=202)
    ls_admin.add_local_storage(pid, storage_dir)
    extra = generate_images(label_studio.files_root / f"p{pid}-json", 1, seed=303)
    ls_admin.add_local_storage(pid, extra[0].path.parent, regex=r"^$")  # covers the dir only
    json_ids = ls_admin.import_tasks(pid, [
        {"image": f"/data/local-files/?d=p{pid}-json/{extra[0].path.name}"}])
    backend_id = ls_admin.connect_backend(pid, backend.url)
    truth = {}
    tasks = ls_admin.tasks(pid)
    assert len(tasks) == len(upload_ids) + 2 + len(json_ids) == 8
    by_name = {g.path.name: g for g in uploaded + synced + extra}
    corrupt_id = None
    for task in tasks:
        url = task["data"]["image"]
        if url.endswith("corrupt.png"):
            corrupt_id = task["id"]
            continue
        name = next(n for n in by_name if url.endswith(n))
        truth[task["id"]] = by_name[name]
    return {"id": pid, "backend_id": backend_id, "truth": truth, "corrupt": corrupt_id,
            "tasks": tasks, "json_ids": json_ids}


def test_all_label_studio_url_forms_are_present(project):
    urls = [t["data"]["image"] for t in project["tasks"]]
    assert any(u.startswith("/data/upload/") for u in urls)
    assert any(u.startswith("http://") and "/data/local-files/?d=" in u for u in urls)
    assert any(u.startswith("/data/local-files/?d=") for u in urls)


def test_connecting_creates_the_training_webhook(ls_admin, project, backend):
    hooks = requests.get(f"{ls_admin.url}/api/webhooks", params={"project": project["id"]},
                         headers=ls_admin.headers(), timeout=10)
    assert any(h["url"] == f"{backend.url}/webhook" for h in hooks.json())


def test_predictions_in_label_studio_match_the_model_and_the_truth(ls_admin, project, backend,
                                                                   shapes_model):
    setup = requests.post(f"{backend.url}/setup", json={
        "project": f"{project['id']}.0", "schema": load("detection_shapes")}, timeout=10).json()
    answer = ls_admin.retrieve_predictions(project["id"])
    assert answer.get("processed_items", 0) >= 1, answer
    predictions = ls_admin.predictions(project["id"])
    by_task = {p["task"]: p for p in predictions}
    assert set(by_task) == set(project["truth"]), "every good task predicted, corrupt one not"
    assert project["corrupt"] not in by_task
    model = YoloModel(str(shapes_model))
    matched = total = 0
    for task_id, image in project["truth"].items():
        prediction = by_task[task_id]
        assert prediction["model_version"] == setup["model_version"]
        regions = prediction["result"]
        # the same model run here finds the same boxes LS stored
        (direct,) = model.predict([decode_image(image.path.read_bytes())], conf=0.25)
        assert len(regions) == len(direct.instances)
        for region, inst in zip(sorted(regions, key=lambda r: -r["score"]),
                                sorted(direct.instances, key=lambda i: -i.score), strict=True):
            assert region["value"]["rectanglelabels"] == [inst.class_name.capitalize()]
            assert iou(ls_box(region), (inst.box.x1, inst.box.y1, inst.box.x2, inst.box.y2)) \
                > 0.99
        # and the model is good: ground-truth shapes are found with the right label
        for gt in image.boxes:
            total += 1
            matched += any(
                r["value"]["rectanglelabels"] == [gt.class_name.capitalize()]
                and iou(ls_box(r), (gt.x1, gt.y1, gt.x2, gt.y2)) > 0.5 for r in regions)
        assert prediction["score"] == pytest.approx(
            sum(r["score"] for r in regions) / len(regions) if regions else 0.0, abs=1e-3)
    assert matched / total >= 0.8, f"only {matched}/{total} ground-truth shapes found"


def test_retrieving_again_does_not_duplicate(ls_admin, project):
    before = len(ls_admin.predictions(project["id"]))
    ls_admin.retrieve_predictions(project["id"])
    assert len(ls_admin.predictions(project["id"])) == before


def test_uncertainty_sampling_serves_the_least_confident_task_first(ls_admin, project):
    """LS reads `score` as confidence: its Uncertainty sampling serves the lowest one first."""
    pid = project["id"]
    scores = {p["task"]: p["score"] for p in ls_admin.predictions(pid)}
    assert len(set(scores.values())) > 1, "equal scores would make any order pass"
    (version,) = {p["model_version"] for p in ls_admin.predictions(pid)}
    # LS samples among the predictions of the version the project uses (Settings > Annotation
    # > "Use predictions to prelabel tasks"); connecting a backend sets its title there, which
    # no prediction carries, so the admin picks labelpilot's version, as done here
    before = ls_admin.project(pid)["model_version"]
    assert before == "labelpilot", before  # the backend's title: README says what to pick
    ls_admin.patch(f"/api/projects/{pid}", {"sampling": "Uncertainty sampling",
                                            "model_version": version})
    try:
        served = ls_admin.get(f"/api/projects/{pid}/next")
        assert scores[served["id"]] == min(scores.values()), (served["id"], scores)
        most_sure = max(scores, key=lambda t: scores[t])
        assert served["id"] != most_sure
    finally:
        ls_admin.patch(f"/api/projects/{pid}", {"sampling": "Sequential sampling",
                                                "model_version": before})


def test_annotation_and_start_training_webhooks_are_recorded(ls_admin, project, redis_url):
    client = redis.Redis.from_url(redis_url)
    last = client.xrevrange(EVENTS_STREAM, count=1)
    since = last[0][0].decode() if last else "0-0"
    task_id = next(iter(project["truth"]))
    headers = ls_admin.headers()
    started = time.perf_counter()
    created = requests.post(f"{ls_admin.url}/api/tasks/{task_id}/annotations", headers=headers,
                            json={"result": [{
                                "from_name": "label", "to_name": "image",
                                "type": "rectanglelabels", "original_width": 160,
                                "original_height": 160, "value": {
                                    "x": 10, "y": 10, "width": 20, "height": 20, "rotation": 0,
                                    "rectanglelabels": ["Circle"]}}]}, timeout=30)
    assert created.status_code == 201, created.text
    save_seconds = time.perf_counter() - started  # LS sends the webhook inside this request
    trained = requests.post(f"{ls_admin.url}/api/ml/{project['backend_id']}/train",
                            headers=headers, json={}, timeout=30)
    assert trained.status_code in (200, 201), trained.text
    events = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(events) < 2:
        events = [{k.decode(): v.decode() for k, v in fields.items()}
                  for _, fields in client.xrange(EVENTS_STREAM, min=f"({since}")]
        time.sleep(0.2)
    actions = {(e["action"], e["project"]) for e in events}
    assert ("ANNOTATION_CREATED", str(project["id"])) in actions
    assert ("START_TRAINING", str(project["id"])) in actions
    created_event = next(e for e in events if e["action"] == "ANNOTATION_CREATED")
    assert created_event["annotation"] == str(created.json()["id"])
    assert created_event["task"] == str(task_id)
    assert "token" not in str(events)  # the project's API token is not stored
    assert save_seconds < 5


def test_backend_metrics_count_predictions_and_fetch_errors(backend):
    text = requests.get(f"{backend.url}/metrics", timeout=10).text
    assert 'labelpilot_predictions_total{model_version="shapes-' in text
    assert 'labelpilot_image_fetch_errors_total{reason="decode"}' in text
    assert 'labelpilot_http_requests_total{endpoint="/predict",method="POST",status="200"}' in text


def test_personal_access_token_downloads_through_label_studio(label_studio, project,
                                                               personal_access_token):
    """A JWT PAT is refreshed into an access token and used as Bearer for /data/upload."""
    from labelpilot.adapters.label_studio.client import LabelStudioClient
    from labelpilot.adapters.label_studio.image_source import ImageSource

    client = LabelStudioClient(label_studio.url, personal_access_token)
    auth = client.auth
    assert auth is not None and auth.kind == "refresh"
    url = next(t["data"]["image"] for t in project["tasks"]
               if t["data"]["image"].startswith("/data/upload/") and t["id"] in project["truth"])
    data = ImageSource(client).fetch(url)
    assert decode_image(data).shape == (160, 160, 3)
    assert auth.header()["Authorization"].startswith("Bearer ")
