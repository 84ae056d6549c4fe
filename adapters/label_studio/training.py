"""Training for Label Studio projects: when to train (webhooks) and the RQ job itself.

The job pulls the project's *current* annotations from LS when it starts, so a lost webhook
loses nothing and deleted annotations are respected; then hands our own `Sample`s to
`labelpilot.trainers.pipeline`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
from labelpilot.adapters.label_studio.annotations import (
    POSE_CLASS,
    task_choices,
    task_instances,
    task_poses,
)
from labelpilot.adapters.label_studio.config import (
    DEFAULT_TASK,
    ControlSpec,
    ServingPlan,
    parse_label_config,
    store_key,
)
from labelpilot.adapters.label_studio.connections import Connections
from labelpilot.adapters.label_studio.image_source import ImageSource, ImageSourceError
from labelpilot.adapters.label_studio.payloads import WebhookEvent
from labelpilot.backends.errors import ModelNotFoundError
from labelpilot.backends.images import ImageError, decode_image
from labelpilot.backends.model_ref import resolve_model
from labelpilot.backends.model_store import ModelStore
from labelpilot.backends.shapes import Instance
from labelpilot.trainers import queue
from labelpilot.trainers.job import running_job
from labelpilot.trainers.pipeline import TrainRequest, run_training, scratch_model
from labelpilot.trainers.samples import Sample
from labelpilot.trainers.settings import load_params

from labelpilot.redis_conn import get_redis

log = logging.getLogger(__name__)
TRAINABLE = DEFAULT_TASK  # every control kind trains the model task it is served by
JOB_FUNC = "labelpilot.adapters.label_studio.training.train_project"
_CHANGES = "labelpilot:train:changes:ls-{}"


def trainable_control(plan: ServingPlan) -> ControlSpec:
    """The control whose model the project trains: the first one without `model_path`, except
    that KeyPointLabels win (their pose model gives boxes too; rectangles then group points)."""
    trainable = [c for c in plan.controls if c.kind in TRAINABLE and not c.explicit_model]
    for control in trainable:
        if control.kind == "keypoint":
            return control
    if trainable:
        return trainable[0]
    raise ValueError("no trainable control (RectangleLabels, PolygonLabels, BrushLabels, "
                     "KeyPointLabels or Choices without model_path) in this project's label "
                     "config")


def pose_boxes(plan: ServingPlan, control: ControlSpec) -> ControlSpec | None:
    """The RectangleLabels control on the same image as a KeyPointLabels one, if any."""
    return next((c for c in plan.controls if c.kind == "rectangle"
                 and c.to_name == control.to_name), None)


def training_classes(plan: ServingPlan, control: ControlSpec) -> tuple[str, ...]:
    """Class names of the model trained for `control` (pose: the object classes)."""
    if control.kind != "keypoint":
        return control.labels
    boxes = pose_boxes(plan, control)
    return boxes.labels if boxes is not None else (POSE_CLASS,)


def keypoint_count(control: ControlSpec) -> int:
    return max(control.keypoint_labels) + 1 if control.kind == "keypoint" else 0


Labelled = tuple[tuple[Instance, ...], tuple[str, ...], dict[str, Any] | None]


def task_labels(task: dict[str, Any], plan: ServingPlan, control: ControlSpec, width: int,
                height: int) -> Labelled:
    """What a person labelled on a task for `control`: objects, image classes, the annotation."""
    if control.kind == "choices":
        classes, annotation = task_choices(task, control)
        return (), classes, annotation
    if control.kind == "keypoint":
        poses, annotation = task_poses(task, control, pose_boxes(plan, control), width, height)
        return poses, (), annotation
    instances, annotation = task_instances(task, control, width, height)
    return instances, (), annotation


def on_training_event(event: WebhookEvent) -> queue.Enqueued | None:
    """Apply the project's policy: START_TRAINING always; annotations every N changes."""
    connection = get_redis()
    project = event.project_id
    if event.action != "START_TRAINING":
        every = load_params(connection, f"ls-{project}").train_every
        changes = connection.incr(_CHANGES.format(project))
        if every <= 0 or changes < every:
            return None
    connection.delete(_CHANGES.format(project))
    trigger = {"event": event.action, "at": time.time(),
               "annotation": (event.annotation or {}).get("id"),
               "user": (event.annotation or {}).get("completed_by")}
    return queue.request_training(connection, f"ls-{project}", JOB_FUNC,
                                  {"project_id": project, "trigger": trigger}, trigger)


def collect_samples(tasks: list[dict[str, Any]], plan: ServingPlan, control: ControlSpec,
                    source: ImageSource, directory: Path) -> list[Sample]:
    samples: list[Sample] = []
    for task in tasks:
        url = (task.get("data") or {}).get(control.image_key)
        try:
            data = source.fetch(str(url), task.get("id"))
            image = decode_image(data)
        except (ImageSourceError, ImageError) as exc:
            log.warning("task %s skipped for training: %s", task.get("id"), exc)
            continue
        height, width = image.shape[:2]
        instances, classes, annotation = task_labels(task, plan, control, width, height)
        if annotation is None:
            continue
        # the decoded, upright 8-bit pixels: training sees exactly what prediction sees
        path = directory / f"task-{task['id']}.png"
        cv2.imwrite(str(path), image)
        samples.append(Sample(
            sample_id=f"task-{task['id']}", image=path, width=width, height=height,
            instances=instances, classes=classes, provenance={
                "task": str(task["id"]), "annotation": str(annotation.get("id")),
                "completed_by": str(annotation.get("completed_by")),
                "updated_at": str(annotation.get("updated_at"))}))
    return samples


def train_project(project_id: int, trigger: dict[str, Any] | None = None) -> dict[str, Any]:
    """RQ job: pull annotations from LS, train, evaluate, write and maybe promote a version."""
    from rq import get_current_job

    job = get_current_job()
    connection = get_redis()
    queue_key = f"ls-{project_id}"
    with running_job(connection, queue_key) as progress:
        source = Connections().image_source(project_id)
        project = source.api_json(f"/api/projects/{project_id}")
        plan = parse_label_config(project["label_config"])
        control = trainable_control(plan)
        key = store_key(project_id, control)
        assert key is not None
        tasks = source.api_json(f"/api/projects/{project_id}/export", exportType="JSON",
                        download_all_tasks="false")
        params = load_params(connection, queue_key)
        store = ModelStore()
        with tempfile.TemporaryDirectory(prefix=f"ls-{project_id}-images-") as tmp:
            progress({"phase": "downloading", "tasks": len(tasks)})
            samples = collect_samples(tasks, plan, control, source, Path(tmp))
            task = TRAINABLE[control.kind]
            current = store.current(key)
            default = _base_model(control, task)
            request = TrainRequest(
                key=key, task=task, class_names=training_classes(plan, control),
                samples=samples, keypoint_count=keypoint_count(control),
                base_model=str(current.weights) if current else default,
                serving_weights=None if default.endswith(".yaml") else default,
                params=params, trigger={**(trigger or {}), "annotated_tasks": len(samples),
                                        "job": job.id if job else None})
            return run_training(request, store, progress)


def _base_model(control: ControlSpec, task: str) -> str:
    """The control's default weights when we can get them, else train from the YAML."""
    try:
        return resolve_model(control.model_ref)
    except ModelNotFoundError:
        return scratch_model(task)
