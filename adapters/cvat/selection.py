"""`labelpilot select --cvat-task N`: which unlabelled frames of a CVAT task to label next.

CVAT cannot add an annotation job over chosen frames of an existing task (only ground-truth
jobs take a frame list, and their labels stay out of the task's annotations), so the batch
becomes a new task in the same project (or with the same labels): its one job holds the
selected frames in the order to label them, each named after its source frame
(`t<task>-f<frame>_<name>`). `labelpilot train --cvat-project P` learns from it with the rest.

Reads go through cvat-sdk's API client as raw JSON (robust across CVAT versions), the new
task's images through cvat-sdk's uploader.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2

from labelpilot.adapters.cvat.annotations import by_frame, label_infos, text_value
from labelpilot.adapters.cvat.client import json_body, json_pages
from labelpilot.adapters.cvat.training import store_key
from labelpilot.backends.images import ImageError, decode_image
from labelpilot.backends.model_ref import ModelLocator
from labelpilot.backends.model_store import ModelStore, serving_weights
from labelpilot.backends.yolo_scoring import ImageScore, YoloScorer
from labelpilot.trainers.selection import SelectionError, select

log = logging.getLogger(__name__)
SCORE_CHUNK = 16
MAX_CANDIDATES = 1000  # frames scored at most; a longer task is sampled evenly
Progress = Callable[[dict[str, Any]], None]
_LABEL_FIELDS = ("name", "color", "type", "attributes")


@dataclass(frozen=True)
class CvatSelectionReport:
    task: int
    strategy: str
    model_version: str
    candidates: int  # unlabelled frames scored
    frames: list[int]  # selected source frames, label the first one first
    new_task: int | None = None
    new_job: int | None = None
    skipped: dict[int, str] = field(default_factory=dict)
    labelled_classes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"CVAT task {self.task}: {len(self.frames)} of {self.candidates} unlabelled "
                 f"frames selected ({self.strategy}, model {self.model_version}, "
                 f"{self.seconds:.1f} s)",
                 f"  labelled so far: {dict(self.labelled_classes) or 'nothing'}",
                 f"  frames, in order: {self.frames}",
                 f"  in CVAT: new task {self.new_task}, job {self.new_job}, with these frames "
                 "in this order"]
        if self.skipped:
            lines.append(f"  left out ({len(self.skipped)}): " + "; ".join(
                f"frame {f}: {why}" for f, why in list(self.skipped.items())[:5]))
        return "\n".join(lines)


@dataclass(frozen=True)
class TaskState:
    """What selection needs to know about a CVAT task."""

    task: dict[str, Any]
    labels: list[dict[str, Any]]
    frame_names: list[str]
    unlabelled: list[int]
    labelled_classes: dict[str, int]


def read_task(api: Any, task_id: int) -> TaskState:
    _, response = api.tasks_api.retrieve(task_id, _parse_response=False)
    task = json_body(response)
    labels = json_pages(api.labels_api.list, task_id=task_id)
    _, response = api.tasks_api.retrieve_data_meta(task_id, _parse_response=False)
    meta = json_body(response)
    _, response = api.tasks_api.retrieve_annotations(task_id, _parse_response=False)
    frames = by_frame(json_body(response))
    infos = label_infos(labels)
    completed: set[int] = set()
    for job in json_pages(api.jobs_api.list, task_id=task_id):
        if text_value(job.get("state", "")) == "completed":
            completed.update(range(int(job["start_frame"]), int(job["stop_frame"]) + 1))
    size = int(meta.get("size") or task.get("size") or 0)
    deleted = set(meta.get("deleted_frames") or [])
    names = [str(f.get("name", i)) for i, f in enumerate(meta.get("frames") or [])]
    unlabelled = [i for i in range(size) if i not in frames and i not in completed
                  and i not in deleted]
    counts: Counter[str] = Counter()
    for frame in frames.values():
        for shape in frame.shapes:
            info = infos.get(int(shape["label_id"]))
            if info is not None and text_value(shape.get("type")) == "rectangle":
                counts[info.name] += 1
    return TaskState(task, labels, names, unlabelled,
                     {info.name: counts.get(info.name, 0) for info in infos.values()})


def evenly(items: Sequence[int], limit: int) -> list[int]:
    if len(items) <= limit:
        return list(items)
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def score_frames(api: Any, task_id: int, frames: Sequence[int], scorer: YoloScorer,
                 conf: float, progress: Progress) -> tuple[list[int], list[ImageScore],
                                                           dict[int, str]]:
    kept: list[int] = []
    scores: list[ImageScore] = []
    skipped: dict[int, str] = {}
    for start in range(0, len(frames), SCORE_CHUNK):
        chunk, pixels = [], []
        for frame in frames[start:start + SCORE_CHUNK]:
            _, response = api.tasks_api.retrieve_data(task_id, type="frame", number=frame,
                                                      quality="original",
                                                      _parse_response=False)
            try:
                pixels.append(decode_image(response.data))
                chunk.append(frame)
            except ImageError as exc:
                skipped[frame] = str(exc)
        kept.extend(chunk)
        scores.extend(scorer.score(pixels, conf=conf))
        progress({"phase": "scoring", "done": min(start + SCORE_CHUNK, len(frames)),
                  "total": len(frames)})
    return kept, scores, skipped


def create_image_task(client: Any, name: str, images: Sequence[Path], *,
                      project_id: int | None = None, labels: Sequence[dict[str, Any]] = (),
                      timeout: float = 600) -> tuple[int, int]:
    """A new task `name` of the image files, in this order, as one job, in project
    `project_id` or with `labels` (CVAT label dicts: name, and optionally color, type,
    attributes); returns (task id, job id)."""
    from cvat_sdk.api_client import models
    from cvat_sdk.core.uploading import DataUploader

    api = client.api_client
    spec: dict[str, Any] = {"name": name, "segment_size": max(len(images), 1)}
    if project_id is not None:
        spec["project_id"] = int(project_id)
    else:
        spec["labels"] = [models.PatchedLabelRequest(**{k: v for k, v in label.items()
                                                         if k in _LABEL_FIELDS})
                          for label in labels]
    _, response = api.tasks_api.create(models.TaskWriteRequest(**spec), _parse_response=False)
    new_id = int(json_body(response)["id"])
    url = client.api_map.make_endpoint_url(api.tasks_api.create_data_endpoint.path,
                                           kwsub={"id": new_id})
    uploaded = DataUploader(client).upload_files(url, list(images), image_quality=95,
                                                 sorting_method="predefined")
    rq_id = json_body(uploaded).get("rq_id")
    deadline = time.monotonic() + timeout
    while rq_id and time.monotonic() < deadline:
        _, response = api.requests_api.retrieve(rq_id, _parse_response=False)
        status = text_value(json_body(response).get("status"))
        if status == "finished":
            break
        if status == "failed":
            raise SelectionError(f"CVAT could not create task {new_id}: "
                                 f"{json_body(response).get('message')}")
        time.sleep(0.5)
    jobs = json_pages(api.jobs_api.list, task_id=new_id)
    job = next((int(j["id"]) for j in jobs if j.get("type", "annotation") == "annotation"), 0)
    return new_id, job


def create_batch_task(client: Any, state: TaskState, frames: Sequence[int],
                      images: Mapping[int, Path], timeout: float = 600) -> tuple[int, int]:
    """A new task holding `frames` in this order (one job); returns (task id, job id)."""
    task = state.task
    project = int(task["project_id"]) if task.get("project_id") else None
    return create_image_task(client, f"{task.get('name', task['id'])} · next {len(frames)} "
                             "(labelpilot)", [images[f] for f in frames], project_id=project,
                             labels=() if project is not None else state.labels,
                             timeout=timeout)


def select_frames(client: Any, task_id: int, store: ModelStore, locator: ModelLocator, *,
                  count: int, default_model: str, strategy: str = "balanced", seed: int = 0,
                  device: str = "", conf: float = 0.05, max_candidates: int = MAX_CANDIDATES,
                  progress: Progress | None = None) -> CvatSelectionReport:
    """Score the task's unlabelled frames with the served detector, pick `count`, and put
    them in a new task (one job) to label next."""
    began = time.monotonic()
    report = progress or (lambda update: log.info("select cvat-task-%s: %s", task_id, update))
    if count < 1:
        raise SelectionError(f"--count must be at least 1 (got {count})")
    api = client.api_client
    state = read_task(api, task_id)
    if not state.unlabelled:
        raise SelectionError(f"CVAT task {task_id} has no unlabelled frames to select from")
    candidates = evenly(state.unlabelled, max_candidates)
    keys = [store_key("task", task_id)]  # the task's own detector, else its project's
    if state.task.get("project_id"):
        keys.append(store_key("project", int(state.task["project_id"])))
    weights, version = serving_weights(store, keys, locator, default_model)
    scorer = YoloScorer(weights, device=device)
    report({"phase": "scoring", "done": 0, "total": len(candidates), "model": version})
    kept, scores, skipped = score_frames(api, task_id, candidates, scorer, conf, report)
    if not kept:
        raise SelectionError(f"none of the {len(candidates)} unlabelled frames of CVAT task "
                             f"{task_id} could be decoded")
    by_lower = {name.lower(): n for name, n in state.labelled_classes.items()}
    counts = {c: by_lower.get(c.lower(), 0) for c in scorer.class_names}
    order = select(scores, min(count, len(kept)), strategy=strategy,
                   class_names=scorer.class_names, labelled_class_counts=counts, seed=seed)
    chosen = [kept[i] for i in order]
    report({"phase": "creating task", "selected": len(chosen)})
    with tempfile.TemporaryDirectory(prefix=f"cvat-select-{task_id}-") as tmp:
        images: dict[int, Path] = {}
        for rank, frame in enumerate(chosen):
            _, response = api.tasks_api.retrieve_data(task_id, type="frame", number=frame,
                                                      quality="original",
                                                      _parse_response=False)
            name = Path(state.frame_names[frame] if frame < len(state.frame_names)
                        else str(frame)).stem
            path = Path(tmp) / f"{rank:05d}_t{task_id}-f{frame}_{name}.png"
            cv2.imwrite(str(path), decode_image(response.data))
            images[frame] = path
        new_task, new_job = create_batch_task(client, state, chosen, images)
    return CvatSelectionReport(task_id, strategy, version, len(kept), chosen, new_task,
                               new_job, skipped, state.labelled_classes,
                               round(time.monotonic() - began, 2))
