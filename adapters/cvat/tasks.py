"""What each model task (`labelpilot.backends.tasks`) is in CVAT's terms: one table."""

from __future__ import annotations

from dataclasses import dataclass

from labelpilot.backends.tasks import TaskSpec, task_spec


@dataclass(frozen=True)
class CvatTask:
    task: TaskSpec
    label_type: str  # the CVAT label type of the model's outputs
    trains_from: frozenset[str]  # CVAT label types whose shapes or tags it learns from


def _row(task: str, label_type: str, *trains_from: str) -> CvatTask:
    return CvatTask(task_spec(task), label_type, frozenset(trains_from))


# in the order that breaks ties when choosing the task a CVAT task's labels train
CVAT_TASKS: dict[str, CvatTask] = {row.task.name: row for row in (
    _row("pose", "skeleton", "skeleton"),
    _row("segment", "mask", "any", "polygon", "mask"),
    _row("obb", "rectangle", "any", "rectangle"),
    _row("detect", "rectangle", "any", "rectangle", "polygon", "mask"),
    _row("classify", "tag", "any", "tag"),
)}


def cvat_task(task: str) -> CvatTask:
    """The CVAT side of model task `task`; a ValueError for a task CVAT has no label type for."""
    row = CVAT_TASKS.get(task)
    if row is None:
        raise ValueError(f"no CVAT label type for a '{task}' model")
    return row
