"""Training from CVAT: pull a task's or project's labels and frames, train, publish a version.

CVAT's `LabelSource` (`CvatSource`) first writes a *snapshot* of what it pulled through
cvat-sdk (labels, each task's annotations, the labelled frames as PNG) and then reads the
samples from that snapshot; the job itself is Label Studio's too
(`labelpilot.trainers.job.run_training_job`). A snapshot can also be given directly
(``snapshot=DIR``) to retrain from a saved export.

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
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import redis

from labelpilot.adapters.cvat.annotations import (
    by_frame,
    choose_task,
    class_names_for,
    frame_labels,
    get,
    keypoint_layout,
    label_infos,
    labelled_frames,
    text_value,
)
from labelpilot.backends.bands import BandMapping
from labelpilot.backends.images import ImageError, decode_image
from labelpilot.backends.model_ref import ModelLocator
from labelpilot.backends.model_store import ModelStore
from labelpilot.trainers import queue
from labelpilot.trainers.band_settings import load_band_mapping
from labelpilot.trainers.job import run_training_job
from labelpilot.trainers.pipeline import Progress
from labelpilot.trainers.samples import Sample, SampleSet, Skipped
from labelpilot.trainers.source import TrainSpec
from labelpilot.trainers.video_samples import VideoSampling

log = logging.getLogger(__name__)
MAX_VIDEO_FRAMES = VideoSampling().max_frames  # frames of one video task that train, at most
KINDS = ("task", "project")


def store_key(kind: str, ident: int) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not '{kind}'")
    return f"cvat-{kind}-{int(ident)}"


def request_cvat_training(connection: redis.Redis, job_func: str, kind: str, ident: int,
                          trigger: dict[str, Any], **options: Any) -> queue.Enqueued:
    """Queue (or join) the training of a CVAT task or project. `job_func`: the RQ entry point
    that runs `train_cvat`; it gets `kind`, `ident`, `trigger` and `options` (`snapshot`,
    `task_type`)."""
    return queue.request_training(connection, store_key(kind, ident), job_func,
                                  {"kind": kind, "ident": int(ident), "trigger": trigger,
                                   **options}, trigger)


def _dump(obj: Any) -> Any:
    return obj.to_dict() if hasattr(obj, "to_dict") else obj


def export_snapshot(client: Any, kind: str, ident: int, directory: Path,
                    progress: Progress = lambda _: None,
                    bands: BandMapping | None = None) -> Path:
    """Pull labels, annotations and the frames that train from CVAT into `directory`
    (`bands`: the task's band mapping; the mapped 8-bit frames are written)."""
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
        _export_task(task, directory / "tasks" / str(task.id), bands)
    (directory / "source.json").write_text(json.dumps({"kind": kind, "id": ident}))
    return directory


def _export_task(task: Any, directory: Path, bands: BandMapping | None = None) -> None:
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
    labelled = labelled_frames(annotations, size - 1)
    # a video task (CVAT keeps one frame entry for it) or a sequence labelled with tracks:
    # neighbouring frames are near-copies, trained as one group
    video = (len(infos) == 1 and size > 1) or bool(annotations.get("tracks"))
    wanted = [i for i in sorted((labelled | completed) - deleted) if i < size]
    if video:  # neighbouring frames are near-copies: a spread of at most MAX_VIDEO_FRAMES
        wanted = wanted[::max(1, math.ceil(len(wanted) / MAX_VIDEO_FRAMES))]
    entries = []
    for index in wanted:
        info = infos[index] if index < len(infos) else infos[0]  # video: one entry for all
        try:
            image = decode_image(task.get_frame(index, quality="original").read(), bands=bands)
        except ImageError as exc:  # left out, and named in the version's manifest
            log.warning("task %s frame %s left out of training: %s", task.id, index, exc)
            entries.append({"index": index, "name": str(getattr(info, "name", index)),
                            "skipped": str(exc)})
            continue
        path = frames_dir / f"{index}.png"
        cv2.imwrite(str(path), image)
        entries.append({"index": index, "name": str(getattr(info, "name", index)),
                        "file": f"frames/{index}.png", "width": image.shape[1],
                        "height": image.shape[0], "completed": index in completed,
                        "video": video})
    (directory / "frames.json").write_text(json.dumps(entries))


def snapshot_samples(snapshot: Path) -> tuple[list[Sample], dict[int, Any]]:
    """A snapshot's labelled frames as `Sample`s, and its labels by id."""
    labels = label_infos(json.loads((snapshot / "labels.json").read_text()))
    samples: list[Sample] = []
    for task_dir in sorted((snapshot / "tasks").iterdir(), key=lambda p: p.name):
        entries = json.loads((task_dir / "frames.json").read_text())
        last = max((int(e["index"]) for e in entries), default=None)
        frames = by_frame(json.loads((task_dir / "annotations.json").read_text()), last,
                          only={int(e["index"]) for e in entries})
        for entry in entries:
            if "skipped" in entry:
                continue
            index = int(entry["index"])
            frame = frames.get(index)
            if frame is not None and not frame.shapes and not any(
                    int(get(t, "label_id")) in labels for t in frame.tags):
                frame = None  # only quality-scan tags on it: not a labelled frame
            if frame is None and not entry.get("completed"):
                continue
            width, height = int(entry["width"]), int(entry["height"])
            instances, tags = frame_labels(frame, labels, width, height) if frame else ((), ())
            samples.append(Sample(
                sample_id=f"cvat-t{task_dir.name}-f{index}", image=task_dir / entry["file"],
                width=width, height=height, instances=instances, classes=tags,
                group=f"cvat-t{task_dir.name}" if entry.get("video") else "",
                provenance={"task": task_dir.name, "frame": str(index),
                            "name": str(entry.get("name", ""))}))
    return samples, labels


def snapshot_skipped(snapshot: Path) -> list[Skipped]:
    """The frames the snapshot left out (their image failed), and why."""
    return [Skipped(f"cvat-t{task_dir.name}-f{entry['index']}", str(entry["skipped"]),
                    {"task": task_dir.name, "frame": str(entry["index"]),
                     "name": str(entry.get("name", ""))})
            for task_dir in sorted((snapshot / "tasks").iterdir(), key=lambda p: p.name)
            for entry in json.loads((task_dir / "frames.json").read_text())
            if "skipped" in entry]


def train_spec(key: str, samples: Sequence[Sample], labels: dict[int, Any],
               task_type: str | None = None,
               default_models: Mapping[str, str] | None = None) -> TrainSpec:
    """What to train from CVAT labels: the model task follows the labels unless `task_type`.
    `default_models`: the model set for a task (LABELPILOT_MODEL_<TASK>), which a first
    version starts from and must beat; a task without one trains from its YAML."""
    task = task_type or choose_task((i for s in samples for i in s.instances),
                                    sum(1 for s in samples if s.classes))
    class_names = class_names_for(task, labels)
    if not class_names:
        raise ValueError(f"the CVAT labels have no label that can train a {task} model")
    notes: dict[str, Any] = {"labelled_frames": len(samples)}
    keypoints = keypoint_layout(labels) if task == "pose" else ()
    if keypoints:  # kept in the version's info: CVAT's skeleton sublabels keep their names
        notes["keypoint_names"] = list(keypoints)
    return TrainSpec(model_key=key, task=task, class_names=class_names,
                     keypoint_count=len(keypoints),
                     default_model=(default_models or {}).get(task) or None,
                     notes=notes)


@dataclass
class CvatSource:
    """CVAT's `LabelSource`: a task or project pulled through cvat-sdk, or a saved snapshot."""

    kind: str  # "task" | "project"
    ident: int
    connect: Callable[[], Any]  # a cvat-sdk client, made when the job pulls
    snapshot: Path | None = None  # train from this snapshot instead of pulling from CVAT
    task_type: str | None = None  # the model task; default: what the labels mostly are
    default_models: Mapping[str, str] = field(default_factory=dict)  # see `train_spec`
    bands: BandMapping | None = None  # the band mapping of the task/project's settings
    _labels: dict[int, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        store_key(self.kind, self.ident)  # a wrong kind fails here, not in the job

    @property
    def key(self) -> str:
        return store_key(self.kind, self.ident)

    def write_samples(self, directory: Path, progress: Progress) -> SampleSet:
        snapshot = self.snapshot or export_snapshot(self.connect(), self.kind, self.ident,
                                                    directory / "snapshot", progress,
                                                    self.bands)
        samples, self._labels = snapshot_samples(snapshot)
        progress({"phase": "converting", "samples": len(samples)})
        return SampleSet(samples, snapshot_skipped(snapshot))

    def describe(self, samples: Sequence[Sample]) -> TrainSpec:
        spec = train_spec(self.key, samples, self._labels, self.task_type,
                          self.default_models)
        return replace(spec, notes={**spec.notes, "cvat": f"{self.kind} {self.ident}"})


def train_cvat(kind: str, ident: int, connection: redis.Redis, store: ModelStore,
               trigger: dict[str, Any] | None = None, *, snapshot: str | None = None,
               task_type: str | None = None, locator: ModelLocator, device: str = "",
               connect: Callable[[], Any],
               default_models: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Pull from CVAT through `connect()` (or read `snapshot`), train, evaluate, write and
    maybe promote. (`locator`, `device`: see `run_training_job`; `default_models`: see
    `train_spec`.)"""
    source = CvatSource(kind, int(ident), connect, Path(snapshot) if snapshot else None,
                        task_type, dict(default_models or {}),
                        load_band_mapping(connection, store_key(kind, ident)))
    return run_training_job(source, connection, store, trigger, locator=locator,
                            device=device)
