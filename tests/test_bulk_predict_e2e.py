"""`labelpilot predict --ls-project` against a real Label Studio 1.23.2: a project of 2,000+
small tasks predicted by two real RQ workers sharing the run in chunks; one worker is killed
midway (SIGKILL, its work horse dies with it), the other takes its chunk over. Every task ends
with exactly one prediction of the model version (written through LS's bulk endpoint
POST /api/projects/{id}/import/predictions), tasks with a bad image are reported with their
reason, and the progress (done/total, rate, ETA) shows in `labelpilot jobs`, /jobs and the
dashboard's jobs list while it runs. A quicker test covers --only-missing, --model-version
and bad input."""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from labelpilot.label_config import load
from labelpilot.trainers.bulk_run import BulkRun
from tests.conftest import ARTIFACTS
from tests.helpers import generate_images, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
DISTINCT = 24  # different images; the tasks reuse them


def make_project(ls_admin, label_studio, title: str, count: int,  # type: ignore[no-untyped-def]
                 bad: dict[str, bytes] | None = None) -> tuple[int, list[int], list[int]]:
    """A detection project of `count` tasks with 64x64 shape images read by LS's local-files
    URLs, plus one task per `bad` file; (project, good task ids, bad task ids)."""
    pid = ls_admin.create_project(title, load("detection_shapes"))
    folder = label_studio.files_root / f"bulk{pid}"
    images = generate_images(folder, DISTINCT, seed=pid, size=64)
    for name, data in (bad or {}).items():
        (folder / name).write_bytes(data)
    url = f"/data/local-files/?d=bulk{pid}/"
    good = ls_admin.import_tasks(pid, [{"image": url + images[i % DISTINCT].path.name}
                                       for i in range(count)])
    broken = ls_admin.import_tasks(pid, [{"image": url + name} for name in
                                         [*(bad or {}), "gone.png"]]) if bad is not None else []
    return pid, good, broken


def worker_env(label_studio, redis_url: str, shapes_model: Path,  # type: ignore[no-untyped-def]
               tmp_path: Path) -> dict[str, str]:
    return {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
            "REDIS_URL": redis_url, "MODEL_DIR": str(tmp_path / "models"),
            "LABELPILOT_MODEL_DETECT": str(shapes_model),
            "LOCAL_FILES_DOCUMENT_ROOT": str(label_studio.files_root),
            "LABELPILOT_WATCH": "false", "OMP_NUM_THREADS": "1"}


def versions_per_task(ls_admin, pid: int) -> dict[int, Counter[str]]:  # type: ignore[no-untyped-def]
    held: dict[int, Counter[str]] = {}
    for p in ls_admin.predictions(pid):
        held.setdefault(int(p["task"]), Counter())[str(p["model_version"])] += 1
    return held


def test_two_workers_predict_a_project_and_survive_a_killed_one(
        ls_admin, label_studio, redis_url, shapes_model, tmp_path, make_client):
    from rq import Worker

    from tests.helpers import wait_for
    from tests.test_retraining_e2e import start_worker

    env = worker_env(label_studio, redis_url, shapes_model, tmp_path)
    pid, good, bad = make_project(ls_admin, label_studio, "bulk predict e2e", 2000,
                                  {"broken.png": b"not an image"})
    connection = redis.Redis.from_url(redis_url)
    workers = [start_worker(env, tmp_path / f"worker{n}.log", new_session=True)
               for n in range(2)]
    try:
        wait_for("two workers", lambda: Worker.count(connection=connection) >= 2, 60, 0.2)
        queued = run_cli("predict", "--ls-project", str(pid), "--shards", "2",
                         "--chunk-size", "50", env=env)
        assert queued.returncode == 0 and "started: run" in queued.stdout, queued.stderr
        run = BulkRun(connection, re.search(r"run (\S+),", queued.stdout)[1])
        total = len(good) + len(bad)

        wait_for("30 % done", lambda: run.progress()["done"] >= total * 0.3, 240, 0.2)
        jobs_out = run_cli("jobs", "--key", f"predict-ls-{pid}", env=env).stdout
        client = make_client(**env, LABELPILOT_ADMIN_TOKEN="bulk-admin")
        admin = {"Authorization": "Bearer bulk-admin"}
        endpoint = client.get(f"/jobs?key=predict-ls-{pid}", headers=admin).get_json()
        dashboard = client.get(f"/dashboard/api/jobs?project=ls-{pid}",
                               headers=admin).get_json()
        at_kill = run.progress()
        os.kill(workers[0].pid, signal.SIGKILL)  # mid-run: its horse dies with it
        workers[0].wait(10)

        assert at_kill["done"] < total and at_kill["rate"] and at_kill["eta_s"] is not None
        assert re.search(r"predicted \d+/\d+ \([\d.]+ tasks/s, ETA \d+ s", jobs_out), jobs_out
        assert any(j["meta"].get("total") == total and j["meta"].get("rate")
                   for j in endpoint["jobs"]), endpoint
        rows = [r for r in dashboard["jobs"] if r["kind"] == "bulk prediction"]
        assert rows and all(r["total"] == total for r in rows), [
            (r["id"][-3:], r["phase"], r["status"], r["done"], r["total"]) for r in rows]
        assert any(r["rate"] and 0 < (r["done"] or 0) < total for r in rows), rows

        started = time.monotonic()
        wait_for("the run to end", lambda: run.progress()["state"] == "finished", 300, 0.5)
        final = run.progress()
        log = (tmp_path / "worker1.log").read_text()
        assert "taken over" in log, log[-3000:]  # the killed shard's chunk, done again
    finally:
        for worker in workers:  # a shard may still wait for others: no warm shutdown
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(30)

    version = run.config["version"]
    held = versions_per_task(ls_admin, pid)
    missing = [t for t in good if held.get(t, Counter())[version] != 1]
    assert not missing, (len(missing), missing[:10], [held.get(t) for t in missing[:10]])
    assert all(sum(c.values()) == 1 for c in held.values())  # nothing duplicated
    assert not set(held) & set(bad)
    assert final["done"] == total and final["failed"] == len(bad) == 2
    assert final["written"] + final["present"] == len(good)
    reasons = {f["item"]: f["reason"] for f in run.failures()}
    assert set(reasons) == set(bad)
    assert "not an image" in reasons[bad[0]] and "gone.png" in reasons[bad[1]], reasons
    predicted = ls_admin.get("/api/predictions", {"task": good[0]})[0]
    assert predicted["result"] and predicted["result"][0]["type"] == "rectanglelabels"
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "bulk_predict_e2e.txt").write_text(
        f"$ labelpilot predict --ls-project {pid} --shards 2 --chunk-size 50\n"
        f"{queued.stdout}\n$ labelpilot jobs --key predict-ls-{pid}   (before the kill)\n"
        f"{jobs_out}\nprogress when worker 0 was killed: {at_kill}\nfinal: {final}\n"
        f"after the kill: {time.monotonic() - started:.1f} s\n")


def test_only_missing_model_version_and_bad_input(
        ls_admin, label_studio, redis_url, shapes_model, tmp_path):
    env = worker_env(label_studio, redis_url, shapes_model, tmp_path)
    pid, good, _ = make_project(ls_admin, label_studio, "bulk predict options", 30)

    gone = run_cli("predict", "--ls-project", "99999", "--wait", env=env)
    assert gone.returncode == 2 and "has no project 99999" in gone.stderr, gone.stderr
    dead = run_cli("predict", "--ls-project", str(pid), "--wait",
                   env={**env, "LABEL_STUDIO_API_KEY": "0" * 40})
    assert dead.returncode == 2 and "refused the token" in dead.stderr, dead.stderr
    unknown = run_cli("predict", "--ls-project", str(pid), "--model-version", "nope-v9",
                      env=env)
    assert unknown.returncode == 2 and "'nope-v9' is not servable" in unknown.stderr
    for out in (gone, dead, unknown):
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert ls_admin.predictions(pid) == []  # nothing half-written
    version = re.search(r"servable: (\S+) \(", unknown.stderr)[1]

    for task in good[:5]:
        ls_admin.create_prediction(task, [], 0.5, "other-v1")
    first = run_cli("predict", "--ls-project", str(pid), "--only-missing", "--model-version",
                    version, "--wait", env=env)
    assert first.returncode == 0, first.stderr
    assert "25 predictions written" in first.stdout and "5 left out" in first.stdout
    held = versions_per_task(ls_admin, pid)
    assert all(held[t] == Counter({"other-v1": 1}) for t in good[:5])
    assert all(held[t] == Counter({version: 1}) for t in good[5:])

    second = run_cli("predict", "--ls-project", str(pid), "--wait", env=env)
    assert second.returncode == 0 and "5 predictions written" in second.stdout, second.stdout
    assert "25 left out" in second.stdout
    again = run_cli("predict", "--ls-project", str(pid), "--wait", env=env)
    assert "0 predictions written" in again.stdout and "30 left out" in again.stdout
    held = versions_per_task(ls_admin, pid)
    assert all(held[t][version] == 1 for t in good), held
