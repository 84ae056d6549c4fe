"""The demo's first hour of work: an annotator labels shape tasks (from the generated ground
truth), labelpilot trains twice and scans the project, so the dashboard has versions, an
acceptance rate and quality findings to show.

Everything goes through the real paths: annotations through Label Studio's API (its webhooks
reach the backend, which measures how many predicted boxes were kept), training and the scan
through the RQ queue the backend's worker serves.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import redis

from labelpilot.adapters.label_studio.client import LabelStudioClient
from labelpilot.backends.acceptance import AcceptanceLedger
from labelpilot.synthetic import ShapeImage, make_image

log = logging.getLogger(__name__)
SHAPES_SEED = 2024  # the seed `demo.sample_images` draws the shapes tasks with
JOB_WAIT_S = 900.0


@dataclass(frozen=True)
class Activity:
    annotated: int
    versions: list[str]
    scan: str
    acceptance: list[dict[str, Any]]  # AcceptanceLedger.summary rows of the project


def shape_truth(count: int, size: int = 160) -> list[ShapeImage]:
    """The demo's shapes_<i>.png images, drawn again with their exact boxes."""
    rng = random.Random(SHAPES_SEED)
    return [make_image(rng, size) for _ in range(count)]


def ls_boxes(truth: ShapeImage, control: str = "label",
             image: str = "image") -> list[dict[str, Any]]:
    """The ground truth as Label Studio `rectanglelabels` results (percent of the image)."""
    height, width = truth.image.shape[:2]
    return [{"from_name": control, "to_name": image, "type": "rectanglelabels",
             "original_width": width, "original_height": height, "image_rotation": 0,
             "value": {"x": 100 * b.x1 / width, "y": 100 * b.y1 / height,
                       "width": 100 * (b.x2 - b.x1) / width,
                       "height": 100 * (b.y2 - b.y1) / height, "rotation": 0,
                       "rectanglelabels": [b.class_name.capitalize()]}}
            for b in truth.boxes]


def shape_tasks(tasks: Sequence[dict[str, Any]]) -> dict[int, int]:
    """shapes_<i>.png index → LS task id (uploads are named `<hash>-shapes_<i>.png`)."""
    found: dict[int, int] = {}
    for task in tasks:
        match = re.search(r"shapes_(\d+)\.png$", str((task.get("data") or {}).get("image", "")))
        if match:
            found[int(match.group(1))] = int(task["id"])
    return found


def annotate(admin: LabelStudioClient, task_ids: dict[int, int], truth: Sequence[ShapeImage],
             indices: Sequence[int]) -> int:
    """Submit the ground truth of the shapes tasks `indices` that have no annotation yet."""
    done = 0
    for index in indices:
        task = task_ids.get(index)
        if task is None or admin.get(f"/api/tasks/{task}").get("total_annotations"):
            continue
        admin.post(f"/api/tasks/{task}/annotations",
                   {"result": ls_boxes(truth[index]), "lead_time": 12.0})
        done += 1
    return done


def wait_for_job(connection: redis.Redis, job_id: str, what: str,
                 timeout: float = JOB_WAIT_S) -> dict[str, Any]:
    """Block until the RQ job ends; its result (a failed job raises with its reason)."""
    from rq.job import Job, JobStatus

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        job = Job.fetch(job_id, connection=connection)
        status = job.get_status(refresh=True)
        if status == JobStatus.FINISHED:
            result = job.return_value()
            return dict(result) if isinstance(result, dict) else {"result": result}
        if status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
            raise RuntimeError(f"{what} failed: {job.latest_result()}")
        phase = str({k: v for k, v in job.meta.items() if k in ("phase", "epoch", "epochs",
                                                                  "done", "total")})
        if phase != last:
            log.info("demo: %s %s", what, phase)
            last = phase
        time.sleep(1.0)
    raise TimeoutError(f"{what} did not end within {timeout:.0f} s")


def run_activity(admin: LabelStudioClient, connection: redis.Redis, project: int,
                 train: Callable[[int, dict[str, Any]], str],
                 scan: Callable[[int], str]) -> Activity:
    """Label half of the shapes tasks, train v1; retrieve predictions, label a quarter more,
    train v2; retrieve predictions from what serves then and label the rest (so acceptance is
    measured for two versions when the gate promoted one); scan the project.
    `train(project, trigger)` and `scan(project)` queue the jobs and return their ids."""
    tasks = shape_tasks(admin.tasks(project))
    truth = shape_truth(max(tasks, default=-1) + 1)
    cuts = [0, len(truth) // 2, 3 * len(truth) // 4, len(truth)]
    versions: list[str] = []
    annotated = 0
    for step, (start, end) in enumerate(pairwise(cuts)):
        if start > 0:  # the annotator now sees what serves after the last training
            admin.retrieve_predictions(project)
        annotated += annotate(admin, tasks, truth, range(start, end))
        if step < 2:
            job = train(project, {"event": "demo", "user": "demo annotator"})
            result = wait_for_job(connection, job, "training")
            versions.append(str(result.get("model_version", "")))
    scanned = wait_for_job(connection, scan(project), "quality scan")
    # the comparisons were queued (by LS's webhooks) before the scan: they are done now
    accepted = AcceptanceLedger(connection).summary(f"ls-{project}")
    return Activity(annotated, versions, str(scanned.get("summary", scanned)), accepted)
