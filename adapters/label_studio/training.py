"""Training for Label Studio projects: when to train (webhooks) and LS's `LabelSource`.

The job pulls the project's *current* annotations from LS when it starts, so a lost webhook
loses nothing and deleted annotations are respected; `labelpilot.trainers.job` does the rest
with our own `Sample`s.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import redis

from labelpilot.adapters.label_studio.annotations import (
    POSE_CLASS,
    chosen_annotation,
    task_choices,
    task_instances,
    task_poses,
    video_boxes,
)
from labelpilot.adapters.label_studio.config import (
    CONTROL_TASKS,
    ControlDefaults,
    ControlSpec,
    ServingPlan,
    parse_label_config,
    store_key,
)
from labelpilot.adapters.label_studio.connections import hold_token, release_token
from labelpilot.adapters.label_studio.image_source import ImageSource, ImageSourceError
from labelpilot.adapters.label_studio.payloads import Task, WebhookEvent
from labelpilot.adapters.label_studio.video import VideoLimits, VideoTaskError, fetch_clip
from labelpilot.backends.bands import BandMapping
from labelpilot.backends.images import DEFAULT_MAX_PIXELS, ImageError, decode_image
from labelpilot.backends.model_ref import ModelLocator
from labelpilot.backends.model_store import ModelStore
from labelpilot.backends.shapes import Instance
from labelpilot.trainers import queue
from labelpilot.trainers.band_settings import load_band_mapping
from labelpilot.trainers.job import run_training_job
from labelpilot.trainers.pipeline import Progress
from labelpilot.trainers.samples import Sample, SampleSet, Skipped
from labelpilot.trainers.settings import load_params
from labelpilot.trainers.source import TrainSpec
from labelpilot.trainers.video_samples import VideoSampling, sample_video_frames

log = logging.getLogger(__name__)
TRAINABLE = CONTROL_TASKS  # every control kind trains the model task it is served by
_CHANGES = "labelpilot:train:changes:ls-{}"
# how long a queued training keeps the project's LS token: a job waits at most for the one
# running before it (JOB_TIMEOUT), and reads the token when it starts
TOKEN_HOLD_S = queue.JOB_TIMEOUT + 3600


def queue_key(project_id: int) -> str:
    """The project's training queue and settings key."""
    return f"ls-{project_id}"


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
                     "KeyPointLabels, Choices or VideoRectangle without model_path) in this "
                     "project's label config")


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


def on_training_event(event: WebhookEvent, connection: redis.Redis,
                      job_func: str) -> queue.Enqueued | None:
    """Apply the project's policy: START_TRAINING always; annotations every N changes.
    `job_func`: the RQ entry point that runs `train_project` (imported by name by the worker)."""
    project = event.project_id
    if project is None:  # check_for_training() refuses such events first
        raise ValueError("the event names no project")
    if event.action != "START_TRAINING":
        every = load_params(connection, queue_key(project)).train_every
        changes = connection.incr(_CHANGES.format(project))
        if every <= 0 or changes < every:
            return None
    connection.delete(_CHANGES.format(project))
    trigger = {"event": event.action, "at": time.time(),
               "annotation": (event.annotation or {}).get("id"),
               "user": (event.annotation or {}).get("completed_by")}
    return request_project_training(connection, job_func, project, trigger)


def request_project_training(connection: redis.Redis, job_func: str, project_id: int,
                             trigger: dict[str, Any]) -> queue.Enqueued:
    """Queue (or join) the training of an LS project; the job gets `project_id`, `trigger`
    (never the LS token: the job reads the one /setup left in Redis, kept for it until it
    ends, see `connections.hold_token`)."""
    queued = queue.request_training(connection, queue_key(project_id), job_func,
                                    {"project_id": project_id, "trigger": trigger}, trigger)
    hold_token(connection, project_id, TOKEN_HOLD_S)
    return queued


def training_ended(connection: redis.Redis, project_id: int, token_seconds: int) -> None:
    """A training job of the project ended: unless another one waits, its LS token goes back
    to the lifetime it has after a /setup (`token_seconds`)."""
    if queue.waiting_job(connection, queue_key(project_id)) is None:
        release_token(connection, project_id, token_seconds)


def collect_samples(tasks: list[dict[str, Any]], plan: ServingPlan, control: ControlSpec,
                    source: ImageSource, directory: Path,
                    max_pixels: int = DEFAULT_MAX_PIXELS, *, video: VideoLimits | None = None,
                    sampling: VideoSampling | None = None,
                    bands: BandMapping | None = None) -> SampleSet:
    """The annotated tasks as samples; an annotated task whose image fails is `skipped`.
    `bands`: the project's band mapping (the mapped 8-bit image is what trains).
    A VideoRectangle control's tasks give frames (`collect_video_samples`; `video`: the
    download and decoding limits, by default `VideoLimits(max_pixels=max_pixels)`)."""
    if control.kind == "video":
        limits = video or VideoLimits(max_pixels=max_pixels)
        return collect_video_samples(tasks, control, source, directory, limits,
                                     sampling or VideoSampling())
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    for task in tasks:
        url = (task.get("data") or {}).get(control.image_key)
        try:
            data = source.fetch(str(url), task.get("id"))
            image = decode_image(data, max_pixels=max_pixels, bands=bands)
        except (ImageSourceError, ImageError) as exc:
            labelled = task_labels(task, plan, control, 1, 1)[2]  # the size matters not here
            if labelled is not None:
                log.warning("task %s left out of training: %s", task.get("id"), exc)
                skipped.append(Skipped(f"task-{task.get('id')}", str(exc), {
                    "task": str(task.get("id")), "annotation": str(labelled.get("id"))}))
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
    return SampleSet(samples, skipped)


def collect_video_samples(tasks: list[dict[str, Any]], control: ControlSpec,
                          source: ImageSource, directory: Path, limits: VideoLimits,
                          sampling: VideoSampling) -> SampleSet:
    """Each annotated video task → its sampled frames with the boxes LS draws on them (see
    `trainers.video_samples`), one split group per task; a task whose video fails is
    `skipped` with the reason."""
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    for task in tasks:
        annotation = chosen_annotation(task)
        if annotation is None:
            continue
        group = f"task-{task.get('id')}"
        ids = {"task": str(task.get("id")), "annotation": str(annotation.get("id"))}
        try:
            clip = fetch_clip(Task(id=task.get("id"), data=task.get("data") or {}), control,
                              source, limits)
            boxes = video_boxes(annotation, control, clip.info.width, clip.info.height,
                                clip.frames)
            frames, duplicates = sample_video_frames(
                clip.data, clip.framerate, boxes, directory / group, group=group,
                stride=sampling.stride(clip.framerate), max_frames=sampling.max_frames,
                min_change=sampling.min_change, max_seconds=limits.max_seconds,
                max_pixels=limits.max_pixels)
        except (VideoTaskError, ValueError) as exc:  # VideoError is a ValueError
            log.warning("task %s left out of training: %s", task.get("id"), exc)
            skipped.append(Skipped(group, str(exc), ids))
            continue
        made = {**ids, "completed_by": str(annotation.get("completed_by")),
                "updated_at": str(annotation.get("updated_at")),
                "video_frames_kept": str(len(frames)), "video_near_duplicates": str(duplicates)}
        samples += [dataclasses.replace(f, provenance={**made, **f.provenance}) for f in frames]
        log.info("task %s: %d frames of %d for training (%d near-duplicates skipped)",
                 task.get("id"), len(frames), clip.frames, duplicates)
    return SampleSet(samples, skipped)


class LabelStudioSource:
    """LS's `LabelSource`: a project's current annotations for its trainable control."""

    def __init__(self, project_id: int, images: ImageSource,
                 max_pixels: int = DEFAULT_MAX_PIXELS, defaults: ControlDefaults | None = None,
                 video: VideoLimits | None = None, bands: BandMapping | None = None):
        self.project_id = project_id
        self.bands = bands  # the project's band mapping (None: the default)
        self.images = images  # the project's LS: API calls (`.api`) and task images
        self.max_pixels = max_pixels
        self.defaults = defaults  # the models of controls without model_path
        self.video = video  # video projects: download and decoding limits

    @property
    def key(self) -> str:
        return queue_key(self.project_id)

    @cached_property
    def _target(self) -> tuple[ServingPlan, ControlSpec]:
        project = self.images.api.project(self.project_id)
        plan = parse_label_config(project["label_config"], self.defaults)
        return plan, trainable_control(plan)

    def write_samples(self, directory: Path, progress: Progress) -> SampleSet:
        plan, control = self._target
        tasks = self.images.api.export_tasks(self.project_id)
        progress({"phase": "downloading", "tasks": len(tasks)})
        return collect_samples(tasks, plan, control, self.images, directory, self.max_pixels,
                               video=self.video, bands=self.bands)

    def describe(self, samples: Sequence[Sample]) -> TrainSpec:
        plan, control = self._target
        key = store_key(self.project_id, control)
        assert key is not None  # the trainable control has no explicit model_path
        return TrainSpec(model_key=key, task=TRAINABLE[control.kind].default.name,
                         class_names=training_classes(plan, control),
                         keypoint_count=keypoint_count(control), default_model=control.model_ref,
                         notes={"annotated_tasks": len({s.group or s.sample_id
                                                        for s in samples}),
                                **_slicing_notes(control)})


def _slicing_notes(control: ControlSpec) -> dict[str, Any]:
    """A control served sliced (model_slice) trains on tiles: noted for the training job
    (trainers/tiling.py `training_slicing`), and kept in the version's trigger."""
    spec = control.slicing
    return {} if spec is None else {"model_slice": spec.size, "model_slice_overlap": spec.overlap}


def train_project(project_id: int, images: ImageSource, connection: redis.Redis,
                  store: ModelStore, trigger: dict[str, Any] | None = None, *,
                  locator: ModelLocator, device: str = "",
                  max_pixels: int = DEFAULT_MAX_PIXELS,
                  defaults: ControlDefaults | None = None,
                  video: VideoLimits | None = None) -> dict[str, Any]:
    """Pull the project's annotations from LS, train, evaluate, write and maybe promote.
    (`locator`, `device`: see `run_training_job`; larger images than `max_pixels` are
    skipped; `defaults`: see `parse_label_config`; `video`: limits for video tasks.)"""
    source = LabelStudioSource(project_id, images, max_pixels, defaults, video,
                               load_band_mapping(connection, queue_key(project_id)))
    return run_training_job(source, connection, store, trigger, locator=locator,
                            device=device)
