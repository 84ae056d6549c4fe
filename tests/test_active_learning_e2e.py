"""`labelpilot select` (and `label-errors`) against a real Label Studio 1.23.2, as an admin runs
them: the CLI in its own process, with LS's URL and token and the shapes model as served."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from labelpilot.adapters.label_studio.task_marks import (
    NEXT_FIELD,
    NEXT_VIEW,
    REVIEW_FIELD,
    REVIEW_REASON_FIELD,
    REVIEW_VIEW,
)
from labelpilot.label_config import load
from tests.helpers import generate_images, ground_truth_result

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
ONE_CLASS = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image"><Label value="Circle"/></RectangleLabels>
</View>"""
POLYGONS = """<View>
  <Image name="image" value="$image"/>
  <PolygonLabels name="label" toName="image"><Label value="Circle"/></PolygonLabels>
</View>"""


@pytest.fixture(scope="module")
def cli_env(label_studio, redis_url, shapes_model, tmp_path_factory):
    env = dict(os.environ)
    env.update({"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
                "REDIS_URL": redis_url, "MODEL_DIR": str(tmp_path_factory.mktemp("models")),
                "LABELPILOT_MODEL_DETECT": str(shapes_model), "PYTHONPATH": str(REPO)})
    return env


def labelpilot(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labelpilot", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def make_project(ls_admin, tmp: Path, title: str, config: str, count: int, labelled: int,
                 seed: int) -> tuple[int, list[int]]:
    """A project of `count` generated images, the first `labelled` of them annotated."""
    pid = ls_admin.create_project(title, config)
    images = generate_images(tmp / title.replace(" ", "-"), count, seed=seed)
    ids = ls_admin.upload_images(pid, [g.path for g in images])
    assert len(ids) == count
    by_name = {g.path.name: g for g in images}
    for task in ls_admin.tasks(pid)[:labelled]:
        image = next(g for n, g in by_name.items() if task["data"]["image"].endswith(n))
        created = requests.post(f"{ls_admin.url}/api/tasks/{task['id']}/annotations",
                                headers=ls_admin.headers(),
                                json={"result": ground_truth_result(image)}, timeout=30)
        assert created.status_code == 201, created.text
    return pid, ids


def marks(ls_admin, pid: int) -> dict[int, int]:
    return {t["id"]: t["data"][NEXT_FIELD] for t in ls_admin.iter_tasks(pid)
            if NEXT_FIELD in t["data"]}


def view_order(ls_admin, pid: int) -> list[int]:
    views = ls_admin.get("/api/dm/views", {"project": pid})
    (view,) = [v for v in views if v["data"]["title"] == NEXT_VIEW]
    hidden = view["data"]["hiddenColumns"]["explore"]  # LS's bookkeeping, not the task's data
    assert "tasks:inner_id" in hidden and "tasks:predictions_results" in hidden
    assert "tasks:data.image" not in hidden and f"tasks:data.{NEXT_FIELD}" not in hidden
    return [t["id"] for t in ls_admin.iter_tasks(pid, view=view["id"])]


def test_select_marks_the_next_batch_on_unlabelled_tasks(ls_admin, cli_env, tmp_path):
    pid, _ = make_project(ls_admin, tmp_path, "select e2e", load("detection_shapes"), 14,
                          labelled=4, seed=501)
    labelled = {t["id"] for t in ls_admin.tasks(pid) if t["is_labeled"]}
    assert len(labelled) == 4

    result = labelpilot(cli_env, "select", "--ls-project", str(pid), "--count", "5")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "5 of 10 unlabelled tasks selected" in result.stdout, result.stdout
    first = marks(ls_admin, pid)
    assert sorted(first.values()) == [1, 2, 3, 4, 5]
    assert not set(first) & labelled, "labelled tasks are never selected"
    assert view_order(ls_admin, pid) == sorted(first, key=lambda t: first[t])
    # "Label All Tasks" from the tab hands out the batch in rank order (LS's Data Manager queue)
    views = ls_admin.get("/api/dm/views", {"project": pid})
    tab = next(v["id"] for v in views if v["data"]["title"] == NEXT_VIEW)
    assert ls_admin.get(f"/api/projects/{pid}/next", {"view": tab})["id"] == \
        min(first, key=lambda t: first[t])

    # a new, smaller batch replaces the old marks: the tab shows only the latest
    again = labelpilot(cli_env, "select", "--ls-project", str(pid), "--count", "2",
                       "--strategy", "uncertainty")
    assert again.returncode == 0, again.stderr + again.stdout
    second = marks(ls_admin, pid)
    assert sorted(second.values()) == [1, 2]
    assert view_order(ls_admin, pid) == sorted(second, key=lambda t: second[t])

    # more than there are: all unlabelled tasks, ranked
    everything = labelpilot(cli_env, "select", "--ls-project", str(pid), "--count", "50")
    assert everything.returncode == 0, everything.stderr
    assert "10 of 10 unlabelled tasks selected" in everything.stdout
    assert sorted(marks(ls_admin, pid).values()) == list(range(1, 11))


def test_select_on_one_class_and_without_predictions_works(ls_admin, cli_env, tmp_path):
    pid, _ = make_project(ls_admin, tmp_path, "select one class", ONE_CLASS, 6, labelled=0,
                          seed=502)
    result = labelpilot(cli_env, "select", "--ls-project", str(pid), "--count", "3")
    assert result.returncode == 0, result.stderr + result.stdout
    assert sorted(marks(ls_admin, pid).values()) == [1, 2, 3]


@pytest.mark.parametrize(("case", "message"), [
    ("all labelled", "has no unlabelled tasks"),
    ("polygons", "is polygon"),
    ("zero count", "--count must be at least 1"),
    ("no project", "404"),
])
def test_select_refuses_bad_input_with_a_clear_message(ls_admin, cli_env, tmp_path, case,
                                                        message):
    count = "0" if case == "zero count" else "3"
    if case == "no project":
        pid = 99999
    else:
        config = POLYGONS if case == "polygons" else load("detection_shapes")
        pid, _ = make_project(ls_admin, tmp_path, f"select {case}", config, 3,
                              labelled=3 if case == "all labelled" else 0, seed=503)
    result = labelpilot(cli_env, "select", "--ls-project", str(pid), "--count", count)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cannot select:" in result.stderr and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def injected(image, kind: str) -> list[dict]:
    """The ground truth of `image` with one annotator mistake of `kind`."""
    result = ground_truth_result(image)
    if kind == "missing":
        return result[1:]
    value = result[0]["value"]
    if kind == "wrong_class":
        other = {"Circle": "Square", "Square": "Triangle", "Triangle": "Circle"}
        value["rectanglelabels"] = [other[value["rectanglelabels"][0]]]
    elif kind == "bad_location":
        value["x"] += value["width"] * 0.45
        value["y"] += value["height"] * 0.3
    return result


def test_label_errors_marks_the_wrong_annotations_for_review(ls_admin, cli_env, tmp_path):
    from tests.helpers import wait_for
    from tests.test_retraining_e2e import start_worker

    pid = ls_admin.create_project("label errors e2e", load("detection_shapes"))
    images = [g for g in generate_images(tmp_path / "errors", 40, seed=601)
              if len(g.boxes) >= 2][:16]
    assert len(images) == 16
    ls_admin.upload_images(pid, [g.path for g in images])
    by_name = {g.path.name: g for g in images}
    mistakes = {"missing": None, "wrong_class": None, "bad_location": None}
    for number, task in enumerate(ls_admin.tasks(pid)):
        image = next(g for n, g in by_name.items() if task["data"]["image"].endswith(n))
        kind = list(mistakes)[number] if number < len(mistakes) else None
        result = injected(image, kind) if kind else ground_truth_result(image)
        if kind:
            mistakes[kind] = task["id"]
        created = requests.post(f"{ls_admin.url}/api/tasks/{task['id']}/annotations",
                                headers=ls_admin.headers(), json={"result": result}, timeout=30)
        assert created.status_code == 201, created.text

    worker = start_worker(cli_env, tmp_path / "worker.log")
    try:
        queued = labelpilot(cli_env, "label-errors", "--ls-project", str(pid), "--epochs", "2")
        assert queued.returncode == 0 and "enqueued: job" in queued.stdout, queued.stderr
        seen: list[str] = []

        def finished() -> bool:
            out = labelpilot(cli_env, "jobs", "--key", f"errors-ls-{pid}").stdout
            seen.append(out)
            assert "failed" not in out, (out, (tmp_path / "worker.log").read_text()[-3000:])
            return "finished" in out

        wait_for("the label-error job", finished, 600, 0.5)
    finally:
        worker.terminate()
        worker.wait(30)
    assert any("fold 1/2 epoch" in s for s in seen), seen  # progress while it ran
    assert "flagged for review" in seen[-1]

    tasks = {t["id"]: t["data"] for t in ls_admin.iter_tasks(pid)}
    assert all(REVIEW_FIELD in data for data in tasks.values()), "every checked task scored"
    views = ls_admin.get("/api/dm/views", {"project": pid})
    (view,) = [v for v in views if v["data"]["title"] == REVIEW_VIEW]
    listed = [t["id"] for t in ls_admin.iter_tasks(pid, view=view["id"])]
    scores = [tasks[t][REVIEW_FIELD] for t in listed]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.5
    words = {"missing": "missing", "wrong_class": "looks like", "bad_location": "box off"}
    for kind, task_id in mistakes.items():
        assert task_id in listed[:5], (kind, task_id, listed, tasks[task_id])
        assert words[kind] in tasks[task_id][REVIEW_REASON_FIELD], tasks[task_id]
    clean_flagged = [t for t in listed if t not in mistakes.values()]
    assert len(clean_flagged) <= 2, [(t, tasks[t]) for t in clean_flagged]
