"""The KPI dashboard: its JSON and HTML through the app, its three kinds of visitor (admin,
read-only, none configured), 404s for unknown projects and versions, the predictions-per-day
counter, and the page in a real headless Chromium against a gunicorn-served labelpilot."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from rq import Queue

from labelpilot.backends.acceptance import AcceptanceLedger, Comparison
from labelpilot.backends.drift import Reference, image_statistics
from labelpilot.backends.model_store import ModelStore
from labelpilot.backends.observation import Observation
from labelpilot.backends.quality import check_image
from labelpilot.backends.quality_ledger import QualityLedger
from labelpilot.backends.usage import PredictionCounter
from labelpilot.trainers.drift_monitor import DriftObserver, drift_status
from labelpilot.trainers.drift_reference import REFERENCE_FILE
from labelpilot.trainers.pipeline import TrainParams
from labelpilot.trainers.queue import QUEUE_NAME
from labelpilot.trainers.retraining import RetrainingRequests
from tests.conftest import ARTIFACTS, REPO, start_backend

TOKEN = "dashboard-admin-token"
VIEWER = ("annotators", "read-only-pass")
KEY = "ls-3-label"
DAY = 86400


@pytest.fixture()
def connection(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


def _info(
    *,
    metric: float,
    current: float | None,
    trigger: dict[str, Any],
    promote: bool,
    reason: str,
    skipped: int = 0,
) -> dict[str, Any]:
    """version.json as trainers/pipeline.py writes it."""
    manifest = [
        {"sample": f"task-{i}", "split": "train" if i % 5 else "val", "sha1": f"{i:040x}"}
        for i in range(1, 21)
    ]
    manifest += [
        {"sample": f"task-{100 + i}", "split": "skipped", "reason": "corrupt image: truncated JPEG"}
        for i in range(skipped)
    ]
    return {
        "task": "detect",
        "class_names": ["circle", "square", "triangle"],
        "keypoint_count": 0,
        "base_model": "yolo11n.yaml",
        "parent_version": None,
        "compared_with": None,
        "metrics": {
            "candidate": {"map50_95": metric, "map50": min(1.0, metric + 0.3)},
            "current": None if current is None else {"map50_95": current, "map50": current + 0.3},
            "holdout_images": 4,
        },
        "dataset": {
            "counts": {"train": 16, "holdout": 4, "skipped": skipped},
            "manifest": manifest,
        },
        "params": asdict(TrainParams(epochs=20, imgsz=160)),
        "trigger": trigger,
        "decision": {"promote": promote, "reason": reason},
        "timings": {"dataset_s": 0.4, "train_s": 91.2, "evaluate_s": 3.1, "total_s": 95.0},
    }


def _written(version: Any, at: float) -> None:
    """Date a version back (as if trained then): the plot spreads versions over time."""
    path = version.path / "version.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "written_at": at}))


def fill_project(store: ModelStore, connection: redis.Redis, weights: Path) -> dict[str, Any]:
    """Project ls-3 as after a few days of use: v1 serving (promoted by the gate), v2 written
    and held back, acceptance figures for v1, predictions on three days, a quality check of
    four images (one dark, two the same), a queued training job with progress."""
    now = time.time()
    v1 = store.write_version(
        KEY,
        weights,
        _info(
            metric=0.41,
            current=None,
            promote=True,
            skipped=1,
            trigger={
                "event": "ANNOTATION_CREATED",
                "at": now - 3 * DAY,
                "annotation": 7,
                "user": 1,
                "job": "train-ls-3-1",
            },
            reason="no comparable current model; holdout map50 0.710 reaches the floor 0.050",
        ),
    )
    _written(v1, now - 3 * DAY)
    store.promote(KEY, v1.version, by="auto-gate")
    request = drift_request(store, connection, v1.model_version)
    v2 = store.write_version(
        KEY,
        weights,
        _info(
            metric=0.55,
            current=0.41,
            promote=False,
            trigger={"reason": request["reason"], "request": request["id"], "vetting": "manual"},
            reason="manual promotion: waiting for an admin",
        ),
    )
    _written(v2, now - 3600)
    RetrainingRequests(connection).attach_candidate(request["id"], v2.version)
    acceptance = AcceptanceLedger(connection)
    acceptance.record(
        "ls-3", v1.model_version, 101, Comparison(predicted=10, kept=6, added=2, deleted=4)
    )
    acceptance.record(
        "ls-3", v1.model_version, 102, Comparison(predicted=5, kept=3, added=0, deleted=2)
    )
    counter = PredictionCounter(connection)
    counter.add({("ls-3", v1.model_version): 12}, at=now - 2 * DAY)
    counter.add({("ls-3", v1.model_version): 5}, at=now - DAY)
    counter.observe([_observation(v1.model_version) for _ in range(3)])
    quality = QualityLedger(connection)
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
    dark = np.full((96, 96, 3), 8, np.uint8)
    for item, image in (
        ("1", sharp),
        ("2", dark),
        ("3", sharp.copy()),
        ("4", rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)),
    ):
        quality.record("ls-3", item, check_image(image))
    job = Queue(QUEUE_NAME, connection=connection).enqueue(
        "tests.dashboard_jobs.progress_job",
        kwargs={"key": "ls-3", "epochs": 10, "pause_s": 0.1},
        job_id="train-ls-3-20261129-queued",
        description="train ls-3",
        meta={"key": "ls-3", "phase": "training", "epoch": 3, "epochs": 10},
    )
    Queue(QUEUE_NAME, connection=connection).enqueue(
        "tests.dashboard_jobs.progress_job",
        kwargs={"key": "scan-ls-3", "epochs": 2, "pause_s": 0.1},
        job_id="scan-ls-3-20261129-queued",
        description="scan ls-3",
        meta={"key": "scan-ls-3", "phase": "scanning", "done": 2, "total": 4},
    )
    return {"v1": v1, "v2": v2, "job": job.id, "request": request["id"]}


def drift_request(store: ModelStore, connection: redis.Redis, model_version: str) -> dict[str, Any]:
    """The retraining request the drift monitor raises when the served version's reference
    is of mid-gray images and /predict then sees dark ones (the real monitor, stats only)."""
    rng = np.random.default_rng(1)
    version = model_version.removeprefix(f"{KEY}-")
    bright = [rng.integers(60, 200, (48, 48, 3), dtype=np.uint8) for _ in range(30)]
    Reference(
        np.stack([image_statistics(i) for i in bright]),
        np.zeros((30, 0), np.float32),
        np.full(30, 0.8, np.float32),
    ).save(store.root / KEY / version / REFERENCE_FILE)
    monitor = DriftObserver(
        connection, store, window=24, requests=RetrainingRequests(connection), background=False
    )
    dark = [rng.integers(0, 30, (48, 48, 3), dtype=np.uint8) for _ in range(24)]
    monitor.observe([_observation(model_version, image, confidence=0.5) for image in dark])
    status = drift_status(connection, KEY)
    assert status is not None and status["drifted"], status
    [request] = RetrainingRequests(connection).list("ls-3")
    return request


def _observation(
    model_version: str, image: np.ndarray | None = None, confidence: float = 0.9
) -> Observation:
    return Observation(
        project="ls-3",
        model_key=KEY,
        model_version=model_version,
        item="5",
        image=np.zeros((8, 8, 3), np.uint8) if image is None else image,
        bands=3,
        features=None,
        confidences=(confidence,),
    )


@pytest.fixture()
def project(tmp_path: Path, connection: redis.Redis, shapes_model: Path) -> dict[str, Any]:
    store = ModelStore(tmp_path / "models" / "store", connection)
    return {
        "store": store,
        "model_dir": str(tmp_path / "models"),
        **fill_project(store, connection, shapes_model),
    }


@pytest.fixture()
def client(make_client, project, monkeypatch):  # type: ignore[no-untyped-def]
    """The app with both credentials configured."""
    return make_client(
        MODEL_DIR=project["model_dir"],
        LABELPILOT_ADMIN_TOKEN=TOKEN,
        BASIC_AUTH_USER=VIEWER[0],
        BASIC_AUTH_PASS=VIEWER[1],
    )


def _basic(user: str, password: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


ADMIN = _basic("carol", TOKEN)
READ_ONLY = _basic(*VIEWER)


# --- the predictions-per-day counter ----------------------------------------------------------


def test_prediction_counter_counts_per_project_version_and_day(connection: redis.Redis) -> None:
    day0 = 1_764_000_000.0  # 2025-11-24 16:00 UTC
    counter = PredictionCounter(connection, keep_days=30, clock=lambda: day0)
    counter.observe([_observation("ls-3-label-v1")] * 4 + [_observation("ls-3-label-v2")])
    counter.add({("ls-3", "ls-3-label-v1"): 2, ("ls-9", "yolo11n"): 7}, at=day0 - 2 * DAY)
    days = counter.per_day("ls-3", days=3)
    assert [d["day"] for d in days] == ["2025-11-22", "2025-11-23", "2025-11-24"]
    assert [d["total"] for d in days] == [2, 0, 5]
    assert days[-1]["by_version"] == {"ls-3-label-v1": 4, "ls-3-label-v2": 1}
    assert counter.totals("ls-3") == {"ls-3-label-v1": 6, "ls-3-label-v2": 1}
    assert counter.projects() == ["ls-3", "ls-9"]
    # bounded: every day's hash expires after keep_days (+1)
    ttls = [connection.ttl(k) for k in connection.scan_iter("labelpilot:usage:ls-*")]
    assert ttls and all(0 < t <= 31 * DAY for t in ttls)
    assert len(counter.per_day("ls-3", days=500)) == 30  # never more than what is kept
    with pytest.raises(ValueError, match="keep_days"):
        PredictionCounter(connection, keep_days=0)


def test_predict_counts_show_on_the_dashboard(make_client, connection, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """/predict → the PredictionCounter observer (runtime.build_observers) → the dashboard."""
    from labelpilot.label_config import load
    from tests.helpers import generate_images, serve_directory

    generate_images(tmp_path / "served", 3, seed=11, size=96)
    client = make_client(MODEL_DIR=str(tmp_path / "models"), LABELPILOT_ADMIN_TOKEN=TOKEN)
    with serve_directory(tmp_path / "served") as url:
        tasks = [{"id": i, "data": {"image": f"{url}/img{11}_{i}.png"}} for i in range(3)]
        answer = client.post(
            "/predict",
            json={
                "tasks": tasks,
                "project": "5.1700000000",
                "label_config": load("detection_shapes"),
                "params": {"context": None},
            },
        )
    assert answer.status_code == 200, answer.get_json()
    version = answer.get_json()["results"][0]["model_version"]
    assert "ls-5" in [
        p["project"]
        for p in client.get("/dashboard/api/projects", headers=ADMIN).get_json()["projects"]
    ]
    detail = client.get("/dashboard/api/projects/ls-5", headers=ADMIN).get_json()
    assert detail["predictions_per_day"][-1] == {
        "day": time.strftime("%Y-%m-%d", time.gmtime()),
        "total": 3,
        "by_version": {version: 3},
    }
    assert detail["models"] == []  # default weights serve: no trained version yet
    page = client.get("/dashboard/projects/ls-5", headers=ADMIN).get_data(as_text=True)
    assert "No trained versions yet" in page and 'id="plot-predictions"' in page


# --- who may see it ---------------------------------------------------------------------------


def test_dashboard_is_off_until_a_credential_is_configured(
    make_client, project, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    for name in ("LABELPILOT_ADMIN_TOKEN", "BASIC_AUTH_USER", "BASIC_AUTH_PASS"):
        monkeypatch.delenv(name, raising=False)
    client = make_client(MODEL_DIR=project["model_dir"])
    answer = client.get("/dashboard/api/projects", headers=ADMIN)
    assert answer.status_code == 403
    assert "set LABELPILOT_ADMIN_TOKEN" in answer.get_json()["error"]
    page = client.get("/dashboard")
    assert page.status_code == 403 and page.mimetype == "text/html"
    assert "set LABELPILOT_ADMIN_TOKEN" in page.get_data(as_text=True)


def test_admin_and_read_only_views(client) -> None:  # type: ignore[no-untyped-def]
    for headers in ({}, _basic("carol", "wrong"), _basic(VIEWER[0], "wrong")):
        answer = client.get("/dashboard/api/projects", headers=headers)
        assert answer.status_code == 401, headers
        assert answer.headers["WWW-Authenticate"].startswith("Basic")
        assert "LABELPILOT_ADMIN_TOKEN" in answer.get_json()["error"]
    page = client.get("/dashboard")
    assert page.status_code == 401 and "log in" in page.get_data(as_text=True)

    assert client.get("/dashboard/api/projects", headers=ADMIN).get_json()["role"] == "admin"
    for header in ({"Authorization": f"Bearer {TOKEN}"}, {"X-Labelpilot-Admin-Token": TOKEN}):
        assert client.get("/dashboard/api/projects", headers=header).get_json()["role"] == "admin"
    assert client.get("/dashboard/api/projects", headers=READ_ONLY).get_json()["role"] == "viewer"
    admin_page = client.get("/dashboard/projects/ls-3", headers=ADMIN).get_data(as_text=True)
    viewer_page = client.get("/dashboard/projects/ls-3", headers=READ_ONLY).get_data(as_text=True)
    assert "Admin (carol)" in admin_page and "Read-only view" in viewer_page
    assert "log in with the admin token to decide" in viewer_page


# --- the figures ------------------------------------------------------------------------------


def test_projects_and_project_figures(client, project) -> None:  # type: ignore[no-untyped-def]
    overview = client.get("/dashboard/api/projects", headers=ADMIN).get_json()
    [card] = overview["projects"]
    assert card["project"] == "ls-3"
    assert card["serving"] == [{"key": KEY, "version": "v1"}]
    assert card["metric"] == {"name": "map50_95", "value": 0.41}
    assert card["acceptance_rate"] == pytest.approx(9 / 15, abs=1e-4)
    assert card["predictions_7d"] == 20
    assert card["checked"] == 4 and card["findings"] >= 2  # dark + duplicate at least
    assert card["active_jobs"] == 2  # a training and a quality scan wait
    assert card["drifted"] == [KEY] and card["pending_retraining"] == 1
    assert card["drift_checked"] is True

    detail = client.get("/dashboard/api/projects/ls-3", headers=READ_ONLY).get_json()
    [model] = detail["models"]
    assert model["key"] == KEY and model["current"] == "v1"
    assert model["drift"]["drifted"] is True and model["drift"]["window"] == 24
    v1, v2 = model["versions"]
    assert (v1["serving"], v2["serving"]) == (True, False)
    assert v1["metric"]["value"] == 0.41 and v2["metric"]["value"] == 0.55
    assert v1["written_at"] < v2["written_at"]
    assert v1["acceptance"]["kept"] == 9 and v1["acceptance"]["predicted"] == 15
    assert v1["predictions"] == 20 and v2["predictions"] == 0
    assert v1["trigger"]["event"] == "ANNOTATION_CREATED"
    assert v2["trigger"]["request"] == project["request"]
    assert v1["decision"]["promote"] is True and v2["decision"]["promote"] is False
    assert [d["total"] for d in detail["predictions_per_day"][-3:]] == [12, 5, 3]
    assert len(detail["predictions_per_day"]) == 30
    assert detail["quality"]["dark"] == 1 and detail["quality"]["duplicate"] == 1
    assert detail["quality"]["checked"] == 4
    jobs = {j["kind"]: j for j in detail["jobs"]}
    assert set(jobs) == {"training", "quality scan"}
    train, scan = jobs["training"], jobs["quality scan"]
    assert train["id"] == project["job"] and train["status"] == "queued"
    assert (train["done"], train["total"], train["progress"]) == (3, 10, 0.3)
    assert (scan["project"], scan["phase"], scan["progress"]) == ("ls-3", "scanning", 0.5)
    week = client.get("/dashboard/api/projects/ls-3?days=7", headers=ADMIN).get_json()
    assert len(week["predictions_per_day"]) == 7
    polled = client.get("/dashboard/api/jobs?project=ls-3", headers=READ_ONLY).get_json()
    assert {j["id"] for j in polled["jobs"]} == {j["id"] for j in detail["jobs"]}
    assert client.get("/dashboard/api/jobs?project=ls-999", headers=ADMIN).get_json()["jobs"] == []


def test_version_audit_trail(client, project) -> None:  # type: ignore[no-untyped-def]
    v1 = client.get(f"/dashboard/api/models/{KEY}/v1", headers=ADMIN).get_json()
    assert v1["model_version"] == "ls-3-label-v1" and v1["serving"] is True
    assert v1["trigger"] == {
        "event": "ANNOTATION_CREATED",
        "at": pytest.approx(v1["trigger"]["at"]),
        "annotation": 7,
        "user": 1,
        "job": "train-ls-3-1",
    }
    assert v1["dataset"]["counts"] == {"train": 16, "holdout": 4, "skipped": 1}
    assert v1["dataset"]["by_split"] == {"train": 16, "val": 4, "skipped": 1}
    assert v1["dataset"]["left_out"] == [
        {"sample": "task-100", "reason": "corrupt image: truncated JPEG"}
    ]
    assert v1["params"]["epochs"] == 20 and v1["timings"]["train_s"] == 91.2
    assert v1["metrics"]["holdout_images"] == 4
    assert [p["by"] for p in v1["promotions"]] == ["auto-gate"] and v1["vetted_by"] is None
    # an admin promoting v2 by hand is who vetted it
    project["store"].promote(KEY, "v2", by="alice")
    v2 = client.get(f"/dashboard/api/models/{KEY}/v2", headers=ADMIN).get_json()
    assert v2["serving"] is True and v2["vetted_by"] == "alice"
    assert v2["metrics"]["current"]["map50_95"] == 0.41


def test_unknown_projects_and_versions_answer_404_json(client) -> None:  # type: ignore[no-untyped-def]
    cases = {
        "/dashboard/api/projects/ls-999": "unknown project 'ls-999'",
        "/dashboard/api/projects/%3Cscript%3E": "unknown project '<script>'",
        "/dashboard/api/models/ls-999-label/v1": "unknown model 'ls-999-label'",
        f"/dashboard/api/models/{KEY}/v9": f"model '{KEY}' has no version 'v9'",
        f"/dashboard/api/models/{KEY}/..": "has no version",
        f"/dashboard/api/models/{KEY}/v1x": "has no version",
    }
    for path, message in cases.items():
        answer = client.get(path, headers=ADMIN)
        assert answer.status_code == 404, (path, answer.get_data(as_text=True))
        body = answer.get_json()
        assert body["status"] == "error" and message in body["error"], (path, body)
    assert (
        "ls-3" in client.get("/dashboard/api/projects/ls-999", headers=ADMIN).get_json()["error"]
    )  # names the known ones
    page = client.get("/dashboard/projects/ls-999", headers=ADMIN)
    assert page.status_code == 404 and page.mimetype == "text/html"
    assert "unknown project" in page.get_data(as_text=True)
    bad = client.get("/dashboard/api/projects/ls-3?days=forever", headers=ADMIN)
    assert bad.status_code == 400 and "days" in bad.get_json()["error"]


def test_a_fresh_install_shows_an_empty_dashboard(make_client, connection, tmp_path) -> None:  # type: ignore[no-untyped-def]
    client = make_client(MODEL_DIR=str(tmp_path / "models"), LABELPILOT_ADMIN_TOKEN=TOKEN)
    assert client.get("/dashboard/api/projects", headers=ADMIN).get_json() == {
        "role": "admin",
        "projects": [],
    }
    page = client.get("/dashboard", headers=ADMIN)
    assert page.status_code == 200 and "No projects yet" in page.get_data(as_text=True)
    missing = client.get("/dashboard/api/projects/ls-1", headers=ADMIN).get_json()
    assert missing["error"] == (
        "unknown project 'ls-1': known projects are none yet (GET /dashboard/api/projects)"
    )


def test_redis_down_answers_503_saying_so(make_client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    client = make_client(
        "redis://127.0.0.1:1/0", MODEL_DIR=str(tmp_path / "models"), LABELPILOT_ADMIN_TOKEN=TOKEN
    )  # nothing listens on port 1
    for path in ("/dashboard/api/projects", "/dashboard/api/jobs"):
        answer = client.get(path, headers=ADMIN)
        assert answer.status_code == 503 and "Redis is unreachable" in answer.get_json()["error"]
    page = client.get("/dashboard", headers=ADMIN)
    assert page.status_code == 503 and "REDIS_URL" in page.get_data(as_text=True)


def test_project_page_draws_the_plots_on_the_server(client) -> None:  # type: ignore[no-untyped-def]
    page = client.get("/dashboard/projects/ls-3", headers=READ_ONLY)
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    for figure, title in (
        ("plot-versions", "Holdout mAP50-95 per model version"),
        ("plot-predictions", "Images predicted per day"),
        ("plot-acceptance", "Predicted regions annotators kept"),
        ("plot-quality", "Images with each quality finding"),
    ):
        start = html.index(f'<figure id="{figure}">')
        svg = html[start : html.index("</figure>", start)]
        assert "<svg" in svg and 'class="plot"' in svg and title in svg, figure
        assert svg.count("<path") >= 3, figure
    # nothing is fetched from elsewhere: no scripts, styles, fonts or images by address
    assert re.findall(r'(?:src|href)="(?!#|data:|/dashboard)([^"]*)"', html) == []
    assert re.findall(r"url\((?!#)", html) == [] and "@import" not in html
    assert "Audit trail of v1" in html and "corrupt image: truncated JPEG" in html
    assert "manual promotion: waiting for an admin" in html
    overview = client.get("/dashboard", headers=READ_ONLY).get_data(as_text=True)
    assert 'href="/dashboard/projects/ls-3"' in overview


# --- deciding retraining requests -------------------------------------------------------------


def test_only_an_admin_approves_a_retraining_request(client, project) -> None:  # type: ignore[no-untyped-def]
    store: ModelStore = project["store"]
    path = f"/dashboard/api/retraining/{project['request']}/approve"
    action = {"X-Labelpilot-Dashboard": "1"}
    detail = client.get("/dashboard/api/projects/ls-3", headers=ADMIN).get_json()
    [pending] = detail["pending_retraining"]
    assert pending["id"] == project["request"] and pending["candidate"] == "v2"
    page = client.get("/dashboard/projects/ls-3", headers=ADMIN).get_data(as_text=True)
    assert f'data-action="approve" data-request="{project["request"]}"' in page
    viewer_page = client.get("/dashboard/projects/ls-3", headers=READ_ONLY).get_data(as_text=True)
    assert "data-action=" not in viewer_page and "waiting for an admin" in viewer_page

    refused = client.post(path, headers={**READ_ONLY, **action})
    assert refused.status_code == 403 and "read-only" in refused.get_json()["error"]
    no_header = client.post(path, headers=ADMIN)  # what a cross-site form could send
    assert (
        no_header.status_code == 403 and "X-Labelpilot-Dashboard" in no_header.get_json()["error"]
    )
    assert client.post(path, headers=action).status_code == 401
    assert store.current(KEY).version == "v1"  # none of those changed anything

    approved = client.post(path, headers={**ADMIN, **action})
    assert approved.status_code == 200, approved.get_json()
    assert approved.get_json()["request"]["status"] == "approved"
    assert store.current(KEY).version == "v2"
    v2 = client.get(f"/dashboard/api/models/{KEY}/v2", headers=ADMIN).get_json()
    assert v2["vetted_by"] == "carol (dashboard)" and v2["serving"] is True
    assert [r["id"] for r in v2["retraining_requests"]] == [project["request"]]
    # v1's drift no longer counts against the project: v2 serves and was not tested yet
    [card] = client.get("/dashboard/api/projects", headers=ADMIN).get_json()["projects"]
    assert card["drifted"] == [] and card["drift_checked"] is False
    assert card["pending_retraining"] == 0 and card["serving"] == [{"key": KEY, "version": "v2"}]

    again = client.post(path, headers={**ADMIN, **action})
    assert again.status_code == 409 and "approved" in again.get_json()["error"]
    reject_decided = client.post(path.replace("approve", "reject"), headers={**ADMIN, **action})
    assert reject_decided.status_code == 409
    unknown = client.post("/dashboard/api/retraining/rr-nope/approve", headers={**ADMIN, **action})
    assert unknown.status_code == 404 and "rr-nope" in unknown.get_json()["error"]
    odd = client.post(
        f"/dashboard/api/retraining/{project['request']}/promote", headers={**ADMIN, **action}
    )
    assert odd.status_code == 404 and "approve or reject" in odd.get_json()["error"]


# --- in a real browser ------------------------------------------------------------------------

BROWSER_SCRIPT = Path(__file__).parent / "browser" / "dashboard.mjs"


@pytest.mark.e2e
@pytest.mark.slow
def test_dashboard_in_a_real_browser(
    tmp_path: Path, redis_url: str, connection: redis.Redis, shapes_model: Path
) -> None:
    """gunicorn-served labelpilot with two versions, acceptance figures, a quality check, a
    ready retraining request and an RQ worker running a job that reports progress: the page
    loads without console errors, its plots are drawn, the job's bar moves without a reload,
    and Approve promotes the candidate."""
    from labelpilot.processes import stop_processes
    from tests.test_sam_e2e import browser_tools

    node, chromium, modules = browser_tools()
    store = ModelStore(tmp_path / "models" / "store", connection)
    filled = fill_project(store, connection, shapes_model)
    queue = Queue(QUEUE_NAME, connection=connection)
    running = queue.enqueue(
        "tests.dashboard_jobs.progress_job",
        job_id="train-ls-3-running",
        kwargs={"key": "ls-3", "epochs": 80, "pause_s": 0.4},
        meta={"key": "ls-3", "phase": "queued"},
        description="train ls-3",
    )
    queue.enqueue(
        "tests.dashboard_jobs.progress_job",
        job_id="train-ls-3-waiting",
        kwargs={"key": "ls-3", "epochs": 2, "pause_s": 0.1},
        meta={"key": "ls-3", "phase": "queued"},
        description="train ls-3",
    )
    backend = start_backend(
        tmp_path,
        {
            "REDIS_URL": redis_url,
            "LABELPILOT_ADMIN_TOKEN": TOKEN,
            "LABELPILOT_MODEL_DETECT": str(shapes_model),
        },
        workers=1,
    )
    worker_log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "rq"),
            "worker",
            "--burst",
            "--url",
            redis_url,
            "--worker-class",
            "rq.worker.SimpleWorker",
            QUEUE_NAME,
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=open(worker_log, "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    ARTIFACTS.mkdir(exist_ok=True)
    shots = {
        name: str(ARTIFACTS / f"dashboard-{name}.png")
        for name in ("overview", "project", "approved")
    }
    try:
        deadline = time.monotonic() + 60
        while running.get_status(refresh=True) != "started" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert running.get_status() == "started", worker_log.read_text()[-2000:]
        config = tmp_path / "browser.json"
        config.write_text(
            json.dumps(
                {
                    "playwright": str(modules),
                    "chromium": chromium,
                    "url": backend.url,
                    "user": "carol",
                    "password": TOKEN,
                    "project": "ls-3",
                    "request": filled["request"],
                    "shots": shots,
                    "watchSeconds": 7,
                }
            )
        )
        done = subprocess.run(
            [node, str(BROWSER_SCRIPT), str(config)], capture_output=True, text=True, timeout=300
        )
    finally:
        stop_processes([worker])
        backend.stop()
        shutil.copyfile(backend.log, ARTIFACTS / "dashboard-backend.log")
    assert done.returncode == 0 and done.stdout.strip(), done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    (ARTIFACTS / "dashboard-report.json").write_text(json.dumps(report, indent=1))
    assert report["ok"], report
    assert report["errors"] == [], report["errors"]
    assert [c["project"] for c in report["overview"]] == ["ls-3"]
    plots = {p["figure"]: p for p in report["plots"]}
    assert set(plots) == {"plot-versions", "plot-predictions", "plot-acceptance", "plot-quality"}, (
        report["plots"]
    )
    for name, plot in plots.items():
        assert plot["drawn"] >= 3 and plot["width"] > 300 and plot["height"] > 100, (name, plot)
    # the running job's bar moved while the page stayed (polling, no reload)
    progress = report["progress"]
    assert len(progress) >= 2 and progress == sorted(progress) and progress[-1] > progress[0], (
        report
    )
    assert report["reloaded"] is False
    assert any("running" in row for row in report["jobs"]), report["jobs"]
    assert any("queued" in row for row in report["jobs"]), report["jobs"]
    assert "Why it was trained" in report["audit"] and "drift" in report["audit"]
    # Approve promoted the candidate
    assert report["approve"]["status"] == 200, report["approve"]
    assert report["approve"]["body"]["request"]["status"] == "approved"
    current = store.current(KEY)
    assert current is not None and current.version == "v2"
    assert store.history(KEY)[-1]["by"] == "carol (dashboard)"
    assert report["after"]["servingBadges"] == ["v2"] and "v2" in report["after"]["serving"]
    assert report["after"]["buttons"] == 0
    for shot in shots.values():
        assert Path(shot).stat().st_size > 20_000, shot
