"""Acceptance rate against a real Label Studio: LS predicts through the gunicorn backend,
annotations are submitted through LS's API (some regions kept, one nudged, one moved away,
one deleted, one relabelled, one added), LS's webhooks queue jobs on a real RQ worker, and the
ledger's figures per model version are exactly what the edits imply."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from labelpilot.backends.acceptance import AcceptanceLedger
from tests.conftest import REPO, BackendServer, start_backend
from tests.helpers import wait_for
from tests.test_retraining_e2e import shapes_project, start_worker

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
OPS = ("keep", "delete", "relabel", "move_far", "nudge")


@pytest.fixture(scope="module")
def served(tmp_path_factory, redis_url, shapes_model, label_studio) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("acceptance")
    env = {
        "REDIS_URL": redis_url,
        "LABELPILOT_MODEL_DETECT": str(shapes_model),
        "MODEL_DIR": str(tmp / "models"),
        "LABELPILOT_ALLOWED_HOSTS": "127.0.0.1",
    }
    backend = start_backend(tmp, env, workers=2)
    worker_log = tmp / "worker.log"
    worker = start_worker(env, worker_log)
    yield {"backend": backend, "tmp": tmp}
    worker.terminate()
    worker.wait(30)
    backend.stop()
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "acceptance-worker.log").write_bytes(worker_log.read_bytes())
    (artifacts / "acceptance-backend.log").write_bytes(backend.log.read_bytes())


def submitted(region: dict[str, Any]) -> dict[str, Any]:
    """A predicted region as an annotator's result item (no score)."""
    item = copy.deepcopy(region)
    item.pop("score", None)
    item.pop("readonly", None)
    return item


def edit(region: dict[str, Any], op: str) -> list[dict[str, Any]]:
    """What the annotator submits for one predicted region."""
    item = submitted(region)
    value = item["value"]
    if op == "delete":
        return []
    if op == "relabel":
        value["rectanglelabels"] = [
            "Triangle" if value["rectanglelabels"] != ["Triangle"] else "Circle"
        ]
    elif op == "move_far":  # beside where it was: IoU 0 with the prediction
        step = value["width"] if value["x"] + 2 * value["width"] <= 100 else -value["width"]
        value["x"] += step
    elif op == "nudge":  # 5 % of its width: still the same object
        value["x"] = max(0.0, value["x"] - 0.05 * value["width"])
    return [item]


def expected(ops: list[str], added: int) -> dict[str, int]:
    """Kept / added / deleted implied by the edits (a relabel or a far move is both)."""
    changed = sum(op in ("relabel", "move_far") for op in ops)
    deleted = sum(op == "delete" for op in ops) + changed
    return {
        "predicted": len(ops),
        "kept": len(ops) - deleted,
        "added": changed + added,
        "deleted": deleted,
    }


def annotate(
    ls_admin,
    task: int,
    result: list[dict[str, Any]],  # type: ignore[no-untyped-def]
    **extra: Any,
) -> int:
    created = requests.post(
        f"{ls_admin.url}/api/tasks/{task}/annotations",
        headers=ls_admin.headers(),
        json={"result": result, **extra},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    return int(created.json()["id"])


def new_region(size: int) -> dict[str, Any]:
    return {
        "from_name": "label",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": size,
        "original_height": size,
        "value": {
            "x": 1,
            "y": 1,
            "width": 4,
            "height": 4,
            "rotation": 0,
            "rectanglelabels": ["Square"],
        },
    }


def add_figures(total: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    return {k: total.get(k, 0) + v for k, v in more.items()}


def test_acceptance_figures_per_model_version_from_real_label_studio(
    served, ls_admin, tmp_path_factory, redis_url, shapes_model
) -> None:  # type: ignore[no-untyped-def]
    from labelpilot.backends.model_store import ModelStore

    backend: BackendServer = served["backend"]
    ledger = AcceptanceLedger(redis.Redis.from_url(redis_url))
    pid, _, truth = shapes_project(ls_admin, backend, "acceptance", 6, 2929, tmp_path_factory)
    key = f"ls-{pid}"
    ls_admin.retrieve_predictions(pid)
    first = {p["task"]: p for p in ls_admin.predictions(pid)}
    assert set(first) == set(truth)
    v0 = next(iter(first.values()))["model_version"]
    by_size = sorted(truth, key=lambda t: len(first[t]["result"]), reverse=True)
    kept_all, edited_1, edited_2, later, parent_task, _ = by_size
    size = truth[kept_all].size

    # 1. keep every predicted region; 2-3. edits spread over two tasks, one region added each
    figures: dict[str, dict[str, int]] = {}
    a1 = annotate(ls_admin, kept_all, [submitted(r) for r in first[kept_all]["result"]])
    figures[v0] = expected(["keep"] * len(first[kept_all]["result"]), 0)
    regions = [(t, r) for t in (edited_1, edited_2) for r in first[t]["result"]]
    assert len(regions) >= len(OPS), "the generated images gave too few predicted shapes"
    ops = {t: [] for t in (edited_1, edited_2)}  # type: dict[int, list[str]]
    results = {t: [new_region(size)] for t in (edited_1, edited_2)}
    for i, (task, region) in enumerate(regions):
        op = OPS[i % len(OPS)]
        ops[task].append(op)
        results[task] += edit(region, op)
    for task in (edited_1, edited_2):
        annotate(ls_admin, task, results[task])
        figures[v0] = add_figures(figures[v0], expected(ops[task], 1))

    def figures_now(annotations: dict[str, int]) -> dict[str, dict[str, int]] | None:
        rows = {r["model_version"]: r for r in ledger.summary(key)}
        if {v: r["annotations"] for v, r in rows.items()} != annotations:
            return None
        return {
            v: {k: int(r[k]) for k in ("predicted", "kept", "added", "deleted")}  # type: ignore[call-overload]
            for v, r in rows.items()
        }

    got = wait_for("three annotations counted", lambda: figures_now({v0: 3}), 120, 0.5)
    assert got == figures

    # an UPDATED annotation replaces its earlier count: drop one kept region
    fewer = [submitted(r) for r in first[kept_all]["result"]][1:]
    patched = requests.patch(
        f"{ls_admin.url}/api/annotations/{a1}",
        headers=ls_admin.headers(),
        json={"result": fewer},
        timeout=30,
    )
    assert patched.status_code == 200, patched.text
    figures[v0] = add_figures(figures[v0], {"predicted": 0, "kept": -1, "added": 0, "deleted": 1})
    wait_for("the update to replace", lambda: figures_now({v0: 3}) == figures, 120, 0.5)

    # a second version serves: LS predicts every task again with it
    store = ModelStore(served["tmp"] / "models" / "store", redis.Redis.from_url(redis_url))
    store.write_version(f"ls-{pid}-label", shapes_model, {"note": "acceptance e2e"})
    store.promote(f"ls-{pid}-label", "v1")
    v1 = f"ls-{pid}-label-v1"

    def serves_v1() -> bool:
        ls_admin.retrieve_predictions(pid)
        return {p["model_version"] for p in ls_admin.predictions(pid)} == {v0, v1}

    wait_for("predictions of the new version", serves_v1, 60, 1.0)
    second = {p["task"]: p for p in ls_admin.predictions(pid) if p["model_version"] == v1}
    # newest labelpilot prediction: v1; one region deleted, the rest kept
    later_ops = ["delete"] + ["keep"] * (len(second[later]["result"]) - 1)
    annotate(ls_admin, later, [submitted(r) for r in second[later]["result"]][1:])
    figures[v1] = expected(later_ops, 0)
    # the annotation names its parent prediction (v0): counted for v0, all kept
    parent = first[parent_task]
    annotate(
        ls_admin,
        parent_task,
        [submitted(r) for r in parent["result"]],
        parent_prediction=parent["id"],
    )
    figures[v0] = add_figures(figures[v0], expected(["keep"] * len(parent["result"]), 0))
    # skipped, and a task labelpilot never predicted: not compared, counted as ignored
    annotate(ls_admin, kept_all, [], was_cancelled=True)
    (unpredicted,) = ls_admin.import_tasks(pid, [{"image": "/data/upload/none.png"}])
    annotate(ls_admin, unpredicted, [new_region(size)])

    got = wait_for("the v1 annotations", lambda: figures_now({v0: 4, v1: 1}), 120, 0.5)
    assert got == figures
    ignored = {"skipped": 1, "no_labelpilot_prediction": 1}
    wait_for("the ignored annotations", lambda: ledger.ignored(key).get(key) == ignored, 60, 0.5)
    rows = {r["model_version"]: r for r in ledger.summary(key)}
    for version, f in figures.items():
        assert rows[version]["rate"] == round(f["kept"] / f["predicted"], 4)
    report = {"v0": v0, "figures": figures, "rows": rows, "ops": ops}
    (tmp_path_factory.getbasetemp() / "acceptance-figures.txt").write_text(repr(report))
    Path(REPO / "test-artifacts").mkdir(exist_ok=True)
    (REPO / "test-artifacts" / "acceptance-figures.txt").write_text(repr(report))
