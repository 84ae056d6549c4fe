"""`labelpilot select --cvat-task N`, as an admin runs it, against a stand-in for CVAT's REST
API over real HTTP (`tests.fake_cvat`): the unlabelled frames are scored with the served
shapes model and the batch becomes a new task of the same project, frames in rank order."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.fake_cvat import FakeCvat, FakeTask, serve
from tests.helpers import generate_images, run_cvat_cli

LABELS = [{"id": 1, "name": "circle", "color": "#e6194b", "type": "rectangle", "attributes": []},
          {"id": 2, "name": "square", "color": "#3cb44b", "type": "rectangle", "attributes": []},
          {"id": 3, "name": "triangle", "color": "#4363d8", "type": "rectangle",
           "attributes": []}]


def source_task(tmp: Path, project: int | None) -> FakeTask:
    """12 frames: 0-2 annotated, job 6-8 completed (empty frames count as labelled), frame 11
    corrupt."""
    images = generate_images(tmp, 12, seed=701)
    frames = [g.path.read_bytes() for g in images]
    frames[11] = frames[11][:200]
    shapes = [{"type": "rectangle", "frame": i, "label_id": 1 + ["circle", "square",
               "triangle"].index(b.class_name), "points": [b.x1, b.y1, b.x2, b.y2],
               "rotation": 0.0, "occluded": False, "z_order": 0, "group": 0,
               "source": "manual", "attributes": []}
              for i, g in enumerate(images[:3]) for b in g.boxes]
    jobs = [{"id": 51, "task_id": 5, "start_frame": 0, "stop_frame": 5, "type": "annotation",
             "state": "in progress"},
            {"id": 52, "task_id": 5, "start_frame": 6, "stop_frame": 8, "type": "annotation",
             "state": "completed"},
            {"id": 53, "task_id": 5, "start_frame": 9, "stop_frame": 11, "type": "annotation",
             "state": "new"}]
    return FakeTask(5, "street", frames, [g.path.name for g in images], LABELS, jobs,
                    annotations={"version": 3, "tags": [], "shapes": shapes, "tracks": []},
                    project_id=project)


def run_select(url: str, env_extra: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return run_cvat_cli(url, env_extra, "select", *args)


@pytest.mark.parametrize("project", [7, None], ids=["in-a-project", "own-labels"])
def test_selected_frames_become_a_new_task_in_rank_order(tmp_path, env, project):
    cvat = FakeCvat()
    cvat.add_task(source_task(tmp_path / "frames", project))
    with serve(cvat) as url:
        result = run_select(url, env, "--cvat-task", "5", "--count", "4")
    assert result.returncode == 0, result.stderr + result.stdout
    # frames 0-2 are annotated, 6-8 in a completed job; 11 does not decode
    assert "4 of 5 unlabelled frames selected" in result.stdout, result.stdout
    assert "frame 11:" in result.stdout  # named with its reason
    frames = [int(f) for f in result.stdout.split("frames, in order: [")[1].split("]")[0]
              .split(", ")]
    assert len(frames) == 4 and set(frames) <= {3, 4, 5, 9, 10}

    (spec,) = cvat.created
    assert spec["name"] == "street · next 4 (labelpilot)"
    if project is None:  # the same labels, not a project
        assert [label["name"] for label in spec["labels"]] == ["circle", "square", "triangle"]
        assert "project_id" not in spec
    else:
        assert spec["project_id"] == project and "labels" not in spec
    new = cvat.tasks[6]
    names = new.uploaded
    assert [int(n.split("-f")[1].split("_")[0]) for n in names] == frames  # rank order
    assert all(n.startswith(f"{rank:05d}_t5-f") for rank, n in enumerate(names))
    (job,) = new.jobs
    assert (job["start_frame"], job["stop_frame"]) == (0, 3)
    assert f"in CVAT: new task 6, job {job['id']}" in result.stdout


def test_bad_cvat_selection_input_gets_a_clear_message(tmp_path, env):
    cvat = FakeCvat()
    task = source_task(tmp_path / "frames", 7)
    task.jobs = [{**j, "state": "completed"} for j in task.jobs]  # everything labelled
    cvat.add_task(task)
    with serve(cvat) as url:
        done = run_select(url, env, "--cvat-task", "5", "--count", "3")
        missing = run_select(url, env, "--cvat-task", "404", "--count", "3")
    assert done.returncode == 2 and "has no unlabelled frames" in done.stderr, done.stderr
    assert missing.returncode == 2 and "CVAT answered 404" in missing.stderr, missing.stderr
    assert "Traceback" not in done.stderr + missing.stderr
    assert not cvat.created
