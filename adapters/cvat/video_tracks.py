"""`labelpilot annotate --cvat-task N`: detect + track through a CVAT task's frames (a video
task or an image sequence) and write **tracks** with keyframes through cvat-sdk, not one shape
per frame (CVAT's own auto-annotation writes per-frame shapes, cvat-ai/cvat #9502).

CVAT tracks (0-based frames): a track's shapes are its keyframes; CVAT interpolates boxes
linearly between them, and a shape with `outside: true` hides the object from that frame until
the next keyframe. Our keyframes end a box *after* a disabled keyframe (Label Studio's rule), so
each disabled keyframe becomes its shape plus an `outside` shape on the next frame.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from labelpilot.adapters.cvat.annotations import text_value
from labelpilot.adapters.cvat.client import json_body, json_pages
from labelpilot.adapters.cvat.training import store_key
from labelpilot.backends.images import ImageError, decode_image
from labelpilot.backends.keyframes import thin_track
from labelpilot.backends.model_ref import ModelLocator
from labelpilot.backends.model_store import ModelStore, serving_weights
from labelpilot.backends.tracking import MIN_TRACK_FRAMES, TrackerSpec, track_video
from labelpilot.backends.tracks import Track
from labelpilot.backends.video import VideoFrame
from labelpilot.backends.yolo import YoloModel

log = logging.getLogger(__name__)
DEFAULT_TRACKER = TrackerSpec()
Progress = Callable[[dict[str, Any]], None]


class AnnotateError(ValueError):
    """The task cannot be annotated as asked; the message says what to change."""


@dataclass(frozen=True)
class AnnotateReport:
    task: int
    model_version: str
    frames: int
    tracks: int
    keyframes: int
    labels: dict[str, int]  # tracks per CVAT label
    unmatched: dict[str, int] = field(default_factory=dict)  # model classes with no CVAT label
    skipped_frames: dict[int, str] = field(default_factory=dict)
    written: bool = False
    cleared: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        verb = "written" if self.written else "found (dry run: nothing written)"
        lines = [f"CVAT task {self.task}: {self.tracks} tracks with {self.keyframes} keyframes "
                 f"over {self.frames} frames {verb} (model {self.model_version}, "
                 f"{self.seconds:.1f} s, {self.frames / max(self.seconds, 1e-9):.1f} frames/s)",
                 f"  tracks per label: {self.labels or 'none'}"]
        if self.cleared:
            lines.append("  existing annotations of the task were replaced (--clear-existing)")
        if self.unmatched:
            lines.append(f"  model classes without a CVAT label (left out): {self.unmatched}")
        if self.skipped_frames:
            lines.append(f"  frames that could not be decoded ({len(self.skipped_frames)}): "
                         + "; ".join(f"{f}: {why}" for f, why in
                                     list(self.skipped_frames.items())[:3]))
        return "\n".join(lines)


def track_shapes(track: Track, last_frame: int, min_iou: float) -> list[dict[str, Any]]:
    """A track's keyframes as CVAT track shapes (0-based frames, `outside` where it ends)."""
    shapes: list[dict[str, Any]] = []
    for key in thin_track(track.boxes, min_iou=min_iou, last_frame=last_frame):
        box = key.box
        common = {"type": "rectangle", "occluded": False, "z_order": 0, "rotation": 0.0,
                  "attributes": [], "points": [round(v, 2) for v in
                                               (box.x1, box.y1, box.x2, box.y2)]}
        shapes.append({**common, "frame": key.frame - 1, "outside": False})
        if not key.enabled and key.frame < last_frame:
            shapes.append({**common, "frame": key.frame, "outside": True})
    return shapes


def cvat_tracks(tracks: Sequence[Track], label_ids: Mapping[str, int], last_frame: int,
                min_iou: float) -> tuple[list[dict[str, Any]], Counter[str], Counter[str]]:
    """Tracks → CVAT `LabeledTrack` JSON for the labels the task has (matched by name,
    case-insensitively); also the tracks per label and the unmatched model classes."""
    by_name = {name.lower(): label for name, label in label_ids.items()}
    out: list[dict[str, Any]] = []
    per_label: Counter[str] = Counter()
    unmatched: Counter[str] = Counter()
    names = {v: k for k, v in label_ids.items()}
    for track in tracks:
        if len(track.boxes) < MIN_TRACK_FRAMES:
            continue
        label = by_name.get(track.class_name.lower())
        if label is None:
            unmatched[track.class_name] += 1
            continue
        shapes = track_shapes(track, last_frame, min_iou)
        out.append({"frame": shapes[0]["frame"], "label_id": label, "group": 0,
                    "source": "auto", "attributes": [], "shapes": shapes})
        per_label[names[label]] += 1
    return out, per_label, unmatched


def _frames(api: Any, task_id: int, size: int, deleted: set[int],
            skipped: dict[int, str], progress: Progress) -> Iterator[VideoFrame]:
    for index in range(size):
        if index in deleted:
            continue
        _, response = api.tasks_api.retrieve_data(task_id, type="frame", number=index,
                                                  quality="original", _parse_response=False)
        try:
            image = decode_image(response.data)
        except ImageError as exc:
            skipped[index] = str(exc)
            continue
        if index % 25 == 0:
            progress({"phase": "tracking", "done": index, "total": size})
        yield VideoFrame(index + 1, float(index), image)


def annotate_task(client: Any, task_id: int, store: ModelStore, locator: ModelLocator, *,
                  default_model: str, model: str | None = None,
                  tracker: TrackerSpec = DEFAULT_TRACKER, min_iou: float = 0.85,
                  dry_run: bool = False, clear_existing: bool = False, device: str = "",
                  batch: int = 8, progress: Progress | None = None) -> AnnotateReport:
    """Track every object through the task and write the tracks (unless `dry_run`).

    `model`: a model reference; by default the task's served detector (its own trained
    version, else its project's, else `default_model`). Tracks already made by a machine
    (`source` auto) are not written twice: pass `clear_existing` to replace the task's
    annotations, as `cvat-cli task auto-annotate --clear-existing` does."""
    began = time.monotonic()
    report = progress or (lambda update: log.info("annotate cvat-task-%s: %s", task_id, update))
    api = client.api_client
    _, response = api.tasks_api.retrieve(task_id, _parse_response=False)
    task = json_body(response)
    _, response = api.tasks_api.retrieve_data_meta(task_id, _parse_response=False)
    meta = json_body(response)
    size = int(meta.get("size") or task.get("size") or 0)
    if size < 1:
        raise AnnotateError(f"CVAT task {task_id} has no frames")
    labels = {str(label["name"]): int(label["id"])
              for label in json_pages(api.labels_api.list, task_id=task_id)}
    if not labels:
        raise AnnotateError(f"CVAT task {task_id} has no labels to write tracks with")
    _, response = api.tasks_api.retrieve_annotations(task_id, _parse_response=False)
    existing = json_body(response)
    machine = [t for t in existing.get("tracks") or []
               if text_value(t.get("source", "")) in ("auto", "semi-auto")]
    if machine and not (clear_existing or dry_run):
        raise AnnotateError(
            f"CVAT task {task_id} already has {len(machine)} tracks made by a machine; pass "
            "--clear-existing to replace the task's annotations, or --dry-run to only count")
    if model:
        weights, version = locator.resolve(model), locator.version(model)
    else:
        keys = [store_key("task", task_id)]
        if task.get("project_id"):
            keys.append(store_key("project", int(task["project_id"])))
        weights, version = serving_weights(store, keys, locator, default_model)
    detector = YoloModel(weights, device=device, max_batch=batch)
    if detector.task not in ("detect", "segment", "pose"):
        raise AnnotateError(f"'{model or default_model}' is a {detector.task} model; tracks "
                            "need boxes (a detect, segment or pose model)")
    report({"phase": "tracking", "done": 0, "total": size, "model": version})
    skipped: dict[int, str] = {}
    tracks = track_video(detector, _frames(api, task_id, size, set(
        meta.get("deleted_frames") or []), skipped, report), spec=tracker, batch=batch)
    body, per_label, unmatched = cvat_tracks(tracks, labels, size, min_iou)
    keyframes = sum(sum(1 for s in t["shapes"] if not s["outside"]) for t in body)
    if not dry_run:
        _write(api, task_id, body, clear_existing)
    return AnnotateReport(task_id, version, size, len(body), keyframes, dict(per_label),
                          dict(unmatched), skipped, written=not dry_run,
                          cleared=clear_existing and not dry_run,
                          seconds=round(time.monotonic() - began, 2))


def _write(api: Any, task_id: int, tracks: list[dict[str, Any]], replace: bool) -> None:
    from cvat_sdk import models

    data = {"tags": [], "shapes": [], "tracks": [models.LabeledTrackRequest(
        frame=t["frame"], label_id=t["label_id"], group=t["group"], source=t["source"],
        attributes=[], shapes=[models.TrackedShapeRequest(**s) for s in t["shapes"]])
        for t in tracks]}
    if replace:
        api.tasks_api.update_annotations(task_id, labeled_data_request=models.LabeledDataRequest(
            **data))
    else:
        api.tasks_api.partial_update_annotations(
            "create", task_id,
            patched_labeled_data_request=models.PatchedLabeledDataRequest(**data))
