"""What the watchers found reaches /metrics and `labelpilot models list`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import redis

from labelpilot.backends.acceptance import AcceptanceLedger, Comparison
from labelpilot.backends.model_store import ModelStore
from labelpilot.backends.quality import check_image
from labelpilot.backends.quality_ledger import QualityLedger
from labelpilot.trainers.drift_monitor import record_status
from labelpilot.trainers.retraining import RetrainingRequests
from tests.helpers import run_cli


def _line(text: str, start: str) -> float:
    (found,) = [line for line in text.splitlines() if line.startswith(start)]
    return float(found.rsplit(" ", 1)[1])


def test_findings_acceptance_and_drift_reach_metrics_and_models_list(
        make_client, env: dict[str, str], redis_url: str, shapes_model: Path) -> None:  # type: ignore[no-untyped-def]
    connection = redis.Redis.from_url(redis_url)  # project 77: no other test uses it
    store = ModelStore(Path(env["MODEL_DIR"]) / "store", connection)
    store.write_version("ls-77-label", shapes_model, {
        "metrics": {"candidate": {"map50_95": 0.5}, "current": None},
        "decision": {"promote": True, "reason": "first"}})
    store.promote("ls-77-label", "v1")
    quality = QualityLedger(connection)
    dark = np.full((64, 64, 3), 4, np.uint8)
    rng = np.random.default_rng(0)
    good = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    quality.record("ls-77", "1", check_image(dark))
    quality.record("ls-77", "2", check_image(good))
    AcceptanceLedger(connection).record("ls-77", "ls-77-label-v1", 5,
                                        Comparison(predicted=4, kept=3, added=1, deleted=1))
    record_status(connection, "ls-77-label", {"drifted": True, "p_value": 0.002,
                                              "model_version": "ls-77-label-v1"})
    RetrainingRequests(connection).raise_request("ls-77", "ls-77-label", "ls-77-label-v1",
                                                 "drift", {"p_value": 0.002})

    client = make_client(MODEL_DIR=env["MODEL_DIR"])
    text = client.get("/metrics").get_data(as_text=True)
    assert _line(text, 'labelpilot_quality_findings{finding="checked",project="ls-77"}') == 2
    assert _line(text, 'labelpilot_quality_findings{finding="dark",project="ls-77"}') == 1
    assert _line(text, 'labelpilot_acceptance_rate{model_version="ls-77-label-v1",'
                       'project="ls-77"}') == 0.75
    assert _line(text, 'labelpilot_acceptance_regions{model_version="ls-77-label-v1",'
                       'outcome="added",project="ls-77"}') == 1
    assert _line(text, 'labelpilot_drift_detected{model_key="ls-77-label",'
                       'model_version="ls-77-label-v1"}') == 1
    assert _line(text, 'labelpilot_retraining_requests{project="ls-77",status=') == 1

    listed = run_cli("models", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "acceptance 75 %: annotators kept 3 of 4 predicted regions, deleted 1, added 1 " \
           "(1 annotations)" in listed.stdout


def test_metrics_answer_while_redis_is_down(make_client) -> None:  # type: ignore[no-untyped-def]
    response = make_client(redis_to="redis://127.0.0.1:1/0").get("/metrics")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert "labelpilot_redis_up 0.0" in text and "labelpilot_quality_findings{" not in text
