"""Training from CVAT: pull a task's or project's labels and frames, train, publish a version.

The RQ job (`train_cvat`) first writes a *snapshot* of what it pulled through cvat-sdk
(labels, each task's annotations, the labelled frames as PNG) and then trains from that
snapshot with the same pipeline as Label Studio (`labelpilot.trainers.pipeline.run_training`). A
snapshot can also be given directly (``snapshot=DIR``) to retrain from a saved export.

Which frames train: every frame with at least one shape or tag, plus every frame of a job in
state "completed" (those without labels are negatives). The model task follows the labels:
mostly skeletons → pose, masks/polygons → segment, rotated rectangles → obb, rectangles →
detect, only tags → classify (``task_type`` overrides).

The model-store key (and training queue key) is ``cvat-task-<id>`` or ``cvat-project-<id>``;
its promoted versions appear in CVAT as detector ``labelpilot-cvat-task-<id>``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import cv2
from labelpilot.adapters.cvat.annotations import (
    by_frame,
    choose_task,
    class_names_for,
    frame_labels,
    keypoint_layout,
    label_infos,
    text_value,
)
from labelpilot.backends.errors import ModelNotFoundError
from labelpilot.backends.images import decode_image
from labelpilot.backends.model_ref import resolve_model
from labelpilot.backends.model_store import ModelStore
from labelpilot.trainers import queue
from labelpilot.trainers.job import running_job
from labelpilot.trainers.pipeline import Progress, TrainRequest, run_training, scratch_model
from labelpilot.trainers.samples import Sample
from labelpilot.trainers.settings import load_params

from labelpilot.redis_conn import get_redis

log = logging.getLogger(__name__)
JOB_FUNC = "labelpilot.adapters.cvat.training.train_cvat"
KINDS = ("task", "project")


def store_key(kind: str, ident: int) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not '{kind}'")
    return f"cvat-{kind}-{int(ident)}"


def request_cvat_training(kind: str, ident: int, trigger: dict[str, Any],
                          **options: Any) -> queue.Enqueued:
    """Queue (or join) the training of a CVAT task or project."""
    return queue.request_training(get_redis(), store_key(kind, ident), JOB_FUNC,
                                  {"kind": kind, "ident": int(ident), "trigger": trigger,
                                   **options}, trigger)


def _dump(obj: Any) -> Any:
    return obj.to_dict() if hasattr(obj, "to_dict") else obj


def export_snapshot(client: Any, kind: str, ident: int, directory: Path,
                    progress: Progress = lambda _: None) -> Path:
    """Pull labels, annotations and the frames that train from CVAT into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "project":
        project = client.projects.retrieve(ident)
        labels, tasks = project.get_labels(), project.get_tasks()
    else:
        task = client.tasks.retrieve(ident)
        labels, tasks = task.get_labels(), [task]
    (directory / "labels.json").write_text(json.dumps([_dump(x) for x in labels], default=str))
    for number, task in enumerate(tasks, 1):
        progress({"phase": "downloading", "task": task.id, "tasks_done": number - 1,
                  "tasks": len(tasks)})
        _export_task(task, directory / "tasks" / str(task.id))
    (directory / "source.json").write_text(json.dumps({"kind": kind, "id": ident}))
    return directory


def _export_task(task: Any, directory: Path) -> None:
    frames_dir = directory / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    annotations = _dump(task.get_annotations())
    (directory / "annotations.json").write_text(json.dumps(annotations, default=str))
    meta = task.get_meta()
    deleted = set(getattr(meta, "deleted_frames", None) or [])
    infos = list(meta.frames)
    size = int(getattr(meta, "size", len(infos)) or len(infos))
    completed: set[int] = set()
    for job in task.get_jobs():
        if text_value(getattr(job, "state", "")) == "completed":
            completed.update(range(int(job.start_frame), int(job.stop_frame) + 1))
    labelled = set(by_frame(annotations))
    entries = []
    for index in sorted((labelled | completed) - deleted):
        if index >= size:
            continue
        info = infos[index] if index < len(infos) else infos[0]  # video: one entry for all
        image = decode_image(task.get_frame(index, quality="original").read())
        path = frames_dir / f"{index}.png"
        cv2.imwrite(str(path), image)
        entries.append({"index": index, "name": str(getattr(info, "name", index)),
                        "file": f"frames/{index}.png", "width": image.shape[1],
                        "height": image.shape[0], "completed": index in completed})
    (directory / "frames.json").write_text(json.dumps(entries))


def snapshot_samples(snapshot: Path) -> tuple[list[Sample], dict[int, Any]]:
    """A snapshot's labelled frames as `Sample`s, and its labels by id."""
    labels = label_infos(json.loads((snapshot / "labels.json").read_text()))
    samples: list[Sample] = []
    for task_dir in sorted((snapshot / "tasks").iterdir(), key=lambda p: p.name):
        frames = by_frame(json.loads((task_dir / "annotations.json").read_text()))
        for entry in json.loads((task_dir / "frames.json").read_text()):
            index = int(entry["index"])
            frame = frames.get(index)
            if frame is None and not entry.get("completed"):
                continue
            width, height = int(entry["width"]), int(entry["height"])
            instances, tags = frame_labels(frame, labels, width, height) if frame else ((), ())
            samples.append(Sample(
                sample_id=f"cvat-t{task_dir.name}-f{index}", image=task_dir / entry["file"],
                width=width, height=height, instances=instances, classes=tags,
                provenance={"task": task_dir.name, "frame": str(index),
                            "name": str(entry.get("name", ""))}))
    return samples, labels


def _default_model(task: str) -> tuple[str, str | None]:
    """(weights to start from, weights serving now) when the key has no version yet."""
    ref = os.environ.get(f"LABELPILOT_MODEL_{task.upper()}")
    if ref:
        try:
            resolved = resolve_model(ref)
            return resolved, None if resolved.endswith((".yaml", ".yml")) else resolved
        except ModelNotFoundError as exc:
            log.warning("%s; training %s from scratch", exc, task)
    return scratch_model(task), None


def train_request(key: str, samples: list[Sample], labels: dict[int, Any], store: ModelStore,
                  params: Any, trigger: dict[str, Any],
                  task_type: str | None = None) -> TrainRequest:
    task = task_type or choose_task((i for s in samples for i in s.instances),
                                    sum(1 for s in samples if s.classes))
    class_names = class_names_for(task, labels)
    if not class_names:
        raise ValueError(f"the CVAT labels have no label that can train a {task} model")
    current = store.current(key)
    start, serving = _default_model(task)
    extra: dict[str, Any] = {}
    keypoints = keypoint_layout(labels) if task == "pose" else ()
    if keypoints:  # kept in the version's info: CVAT's skeleton sublabels keep their names
        extra["keypoint_names"] = list(keypoints)
    return TrainRequest(key=key, task=task, class_names=class_names, samples=samples,
                        base_model=str(current.weights) if current else start,
                        serving_weights=serving, params=params, keypoint_count=len(keypoints),
                        trigger={**trigger, "labelled_frames": len(samples), **extra})


def train_cvat(kind: str, ident: int, trigger: dict[str, Any] | None = None,
               snapshot: str | None = None, task_type: str | None = None) -> dict[str, Any]:
    """RQ job: pull from CVAT (or read `snapshot`), train, evaluate, write, maybe promote."""
    from rq import get_current_job

    key = store_key(kind, ident)
    connection = get_redis()
    job = get_current_job()
    with running_job(connection, key) as progress, tempfile.TemporaryDirectory(
            prefix=f"{key}-") as tmp:
        if snapshot:
            source = Path(snapshot)
        else:
            from labelpilot.adapters.cvat.client import cvat_client

            source = export_snapshot(cvat_client(), kind, ident, Path(tmp) / "snapshot",
                                     progress)
        samples, labels = snapshot_samples(source)
        progress({"phase": "converting", "samples": len(samples)})
        request = train_request(key, samples, labels, ModelStore(),
                                load_params(connection, key),
                                {**(trigger or {}), "job": job.id if job else None,
                                 "cvat": f"{kind} {ident}"}, task_type)
        return run_training(request, ModelStore(), progress)
