"""`labelpilot select` for Label Studio: which unlabelled tasks to label next.

The project's served model scores every unlabelled task (`YoloScorer`: class-score vectors and
pooled backbone features in one pass), `labelpilot.trainers.selection.select` picks a batch
that is uncertain, balances the classes labelled so far and is diverse, and the batch is marked
where annotators work: the task data field `labelpilot_next` (1 = label first; a Data Manager
column) and the Data Manager tab "labelpilot: next to label", which lists exactly the batch in
that order.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from labelpilot.adapters.label_studio.annotations import task_instances
from labelpilot.adapters.label_studio.config import (
    ControlDefaults,
    ControlSpec,
    parse_label_config,
    store_key,
)
from labelpilot.adapters.label_studio.image_source import ImageSource, ImageSourceError
from labelpilot.adapters.label_studio.task_marks import (
    NEXT_FIELD,
    NEXT_VIEW,
    mark_tasks,
    save_ranked_view,
)
from labelpilot.adapters.label_studio.training import trainable_control
from labelpilot.backends.images import DEFAULT_MAX_PIXELS, ImageError, decode_image
from labelpilot.backends.model_ref import ModelLocator
from labelpilot.backends.model_store import ModelStore, serving_weights
from labelpilot.backends.yolo_scoring import ImageScore, YoloScorer
from labelpilot.trainers.selection import SelectionError, select

log = logging.getLogger(__name__)
SCORE_CHUNK = 16  # images decoded and scored at a time: memory stays bounded on big projects
Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class SelectionReport:
    project: int
    strategy: str
    model_version: str
    candidates: int  # unlabelled tasks scored
    selected: list[int]  # task ids, label the first one first
    skipped: dict[int, str] = field(default_factory=dict)  # task id → why it was left out
    labelled_classes: dict[str, int] = field(default_factory=dict)
    view: int | None = None  # the Data Manager tab's id
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"project {self.project}: {len(self.selected)} of {self.candidates} unlabelled "
                 f"tasks selected ({self.strategy}, model {self.model_version}, "
                 f"{self.seconds:.1f} s)",
                 f"  labelled so far: {dict(self.labelled_classes) or 'nothing'}",
                 f"  next to label, in order: {self.selected}",
                 f"  in Label Studio: Data Manager tab '{NEXT_VIEW}' (id {self.view}), "
                 f"column data.{NEXT_FIELD} (1 = first)"]
        if self.skipped:
            lines.append(f"  left out ({len(self.skipped)}): " + "; ".join(
                f"task {t}: {why}" for t, why in list(self.skipped.items())[:5]))
        return "\n".join(lines)


def detection_control(label_config: str, defaults: ControlDefaults | None) -> ControlSpec:
    control = trainable_control(parse_label_config(label_config, defaults))
    if control.kind != "rectangle":
        raise SelectionError(
            f"selection scores detections; this project's trainable control '{control.name}' "
            f"is {control.kind} (use a project whose trained control is RectangleLabels)")
    return control


def labelled_class_counts(tasks: Sequence[Mapping[str, Any]],
                          control: ControlSpec) -> dict[str, int]:
    """Objects per label in the tasks' chosen annotations (LS label names)."""
    counts: Counter[str] = Counter()
    for task in tasks:
        instances, annotation = task_instances(dict(task), control, 1, 1)
        if annotation is not None:
            counts.update(i.class_name for i in instances)
    return {label: counts.get(label, 0) for label in control.labels}


def model_counts(counts: Mapping[str, int], control: ControlSpec,
                 class_names: Sequence[str]) -> dict[str, int]:
    """LS label counts → the model's class names (a label counts for the classes it maps)."""
    out = dict.fromkeys(class_names, 0)
    for name in class_names:
        label = control.label_for(name)
        if label is not None:
            out[name] = counts.get(label, 0)
    return out


def score_tasks(tasks: Sequence[Mapping[str, Any]], control: ControlSpec, images: ImageSource,
                scorer: YoloScorer, conf: float, max_pixels: int,
                progress: Progress) -> tuple[list[int], list[ImageScore], dict[int, str]]:
    """Scores of the tasks whose image could be read; the others with the reason."""
    ids: list[int] = []
    scores: list[ImageScore] = []
    skipped: dict[int, str] = {}
    for start in range(0, len(tasks), SCORE_CHUNK):
        chunk_ids, pixels = [], []
        for task in tasks[start:start + SCORE_CHUNK]:
            url = (task.get("data") or {}).get(control.image_key)
            try:
                pixels.append(decode_image(images.fetch(str(url), int(task["id"])),
                                           max_pixels=max_pixels))
                chunk_ids.append(int(task["id"]))
            except (ImageSourceError, ImageError) as exc:
                skipped[int(task["id"])] = str(exc)
        ids.extend(chunk_ids)
        scores.extend(scorer.score(pixels, conf=conf))
        progress({"phase": "scoring", "done": min(start + SCORE_CHUNK, len(tasks)),
                  "total": len(tasks)})
    return ids, scores, skipped


def select_tasks(project_id: int, images: ImageSource, store: ModelStore,
                 locator: ModelLocator, *, count: int, strategy: str = "balanced",
                 seed: int = 0, device: str = "", conf: float = 0.05,
                 max_pixels: int = DEFAULT_MAX_PIXELS, defaults: ControlDefaults | None = None,
                 progress: Progress | None = None) -> SelectionReport:
    """Score the project's unlabelled tasks with its served model, pick `count`, mark them."""
    began = time.monotonic()
    report = progress or (lambda update: log.info("select ls-%s: %s", project_id, update))
    if count < 1:
        raise SelectionError(f"--count must be at least 1 (got {count})")
    api = images.api
    control = detection_control(api.project(project_id)["label_config"], defaults)
    tasks = list(api.iter_tasks(project_id))
    labelled = [t for t in tasks if t.get("is_labeled") or t.get("total_annotations")]
    unlabelled = [t for t in tasks if t not in labelled]
    if not unlabelled:
        raise SelectionError(f"project {project_id} has no unlabelled tasks to select from "
                             f"({len(tasks)} tasks, all labelled)")
    counts = labelled_class_counts(labelled, control)  # tasks carry their annotations
    key = store_key(project_id, control)
    weights, version = serving_weights(store, [key] if key else [], locator, control.model_ref)
    scorer = YoloScorer(weights, device=device)
    report({"phase": "scoring", "done": 0, "total": len(unlabelled), "model": version})
    ids, scores, skipped = score_tasks(unlabelled, control, images, scorer, conf, max_pixels,
                                       report)
    if not ids:
        raise SelectionError(f"none of the {len(unlabelled)} unlabelled tasks of project "
                             f"{project_id} has a readable image: " + "; ".join(
                                 f"task {t}: {why}" for t, why in list(skipped.items())[:3]))
    order = select(scores, min(count, len(ids)), strategy=strategy,
                   class_names=scorer.class_names,
                   labelled_class_counts=model_counts(counts, control, scorer.class_names),
                   seed=seed)
    chosen = [ids[i] for i in order]
    report({"phase": "marking", "selected": len(chosen)})
    mark_tasks(api, tasks, {t: {NEXT_FIELD: rank} for rank, t in enumerate(chosen, 1)},
               (NEXT_FIELD,))
    view = save_ranked_view(api, project_id, NEXT_VIEW, NEXT_FIELD, minimum=1)
    return SelectionReport(project_id, strategy, version, len(ids), chosen, skipped, counts,
                           view, round(time.monotonic() - began, 2))
