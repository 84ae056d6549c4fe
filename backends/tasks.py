"""The model tasks ultralytics YOLO offers, and what the rest of labelpilot needs to know of each.

One table (`TASKS`), in the spirit of ultralytics' ``task_map``: code dispatches on a task's
`TaskSpec` rather than keeping its own per-task copy. What a task means to Label Studio or CVAT
(control kinds, label types) stays in those adapters, in one table each, keyed by these tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from labelpilot.backends.errors import UnknownTaskError

DatasetLayout = Literal["labels", "folders"]


@dataclass(frozen=True)
class TaskSpec:
    name: str  # ultralytics' task name, e.g. "segment"
    default_weights: str  # release weights (downloaded by ultralytics when online)
    scratch_yaml: str  # model YAML to train from when there are no weights to start from
    # "labels": images/<split> + YOLO txt labels/<split>; "folders": <split>/<class>/image
    layout: DatasetLayout
    # holdout metrics reported: (our name, key in ultralytics' `results_dict`); the first is
    # the one the promotion gate judges by
    metrics: tuple[tuple[str, str], ...]
    # the metric (of `metrics`) whose holdout value a first version must reach to be promoted
    # automatically (TrainParams.first_version_floor); an accuracy's floor is above chance
    floor_metric: str = "map50"

    @property
    def primary_metric(self) -> str:
        return self.metrics[0][0]


def _map_metrics(suffix: str) -> tuple[tuple[str, str], ...]:
    """mAP of the task's own output (B: boxes, M: masks, P: keypoints); box mAP besides."""
    own = (("map50_95", f"metrics/mAP50-95{suffix}"), ("map50", f"metrics/mAP50{suffix}"))
    return own if suffix == "(B)" else (*own, ("box_map50_95", "metrics/mAP50-95(B)"))


TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    TaskSpec("detect", "yolo11n.pt", "yolo11n.yaml", "labels", _map_metrics("(B)")),
    TaskSpec("segment", "yolo11n-seg.pt", "yolo11n-seg.yaml", "labels", _map_metrics("(M)")),
    TaskSpec("pose", "yolo11n-pose.pt", "yolo11n-pose.yaml", "labels", _map_metrics("(P)")),
    TaskSpec("obb", "yolo11n-obb.pt", "yolo11n-obb.yaml", "labels", _map_metrics("(B)")),
    TaskSpec("classify", "yolo11n-cls.pt", "yolo11n-cls.yaml", "folders",
             (("accuracy_top1", "metrics/accuracy_top1"),
              ("accuracy_top5", "metrics/accuracy_top5")), floor_metric="accuracy_top1"),
)}


def task_spec(name: str) -> TaskSpec:
    """The spec of model task `name`; UnknownTaskError (a ValueError) names the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(
            f"unknown model task '{name}' (known: {', '.join(TASKS)})") from None
