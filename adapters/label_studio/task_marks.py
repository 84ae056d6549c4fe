"""Marks labelpilot leaves on Label Studio tasks, where annotators work: fields in the task's
data, which the Data Manager shows as columns (sortable, filterable), and a Data Manager tab
that filters and orders by one of them.

- `labelpilot_next`: rank (1 = first) of the tasks `labelpilot select` chose to label next;
- `labelpilot_review`: how likely a task's annotation is wrong (0..1), from
  `labelpilot label-errors`, and `labelpilot_review_reason` saying what looks wrong.

A run rewrites its own fields on every task it looked at: a task not chosen again loses its old
mark, so the tab always shows the latest batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from labelpilot.adapters.label_studio.client import LabelStudioClient

NEXT_FIELD = "labelpilot_next"
NEXT_VIEW = "labelpilot: next to label"
REVIEW_FIELD = "labelpilot_review"
REVIEW_REASON_FIELD = "labelpilot_review_reason"
REVIEW_VIEW = "labelpilot: review"


@dataclass(frozen=True)
class MarkCounts:
    marked: int  # tasks that carry a new mark
    cleared: int  # tasks whose old mark was removed
    unchanged: int


def mark_tasks(api: LabelStudioClient, tasks: Iterable[Mapping[str, Any]],
               values: Mapping[int, Mapping[str, Any]], fields: Sequence[str]) -> MarkCounts:
    """Give each task in `values` those data fields; remove `fields` from every other task of
    `tasks`. Only tasks whose data changes are written."""
    marked = cleared = unchanged = 0
    for task in tasks:
        task_id = int(task["id"])
        data = dict(task.get("data") or {})
        new = {k: v for k, v in data.items() if k not in fields}
        new.update(values.get(task_id, {}))
        if new == data:
            unchanged += 1
            continue
        api.update_task_data(task_id, new)
        if task_id in values:
            marked += 1
        else:
            cleared += 1
    return MarkCounts(marked, cleared, unchanged)


LABELPILOT_FIELDS = (NEXT_FIELD, REVIEW_FIELD, REVIEW_REASON_FIELD)
KEPT_COLUMNS = ("tasks:id", "tasks:annotators")  # beside the task's own data


def hidden_columns(api: LabelStudioClient, project: int, shown: Sequence[str]) -> list[str]:
    """The Data Manager columns a labelpilot tab hides: LS's bookkeeping columns and the other
    labelpilot fields, so the task's data and the `shown` fields fit on the screen."""
    columns = (api.get("/api/dm/columns", {"project": project}) or {}).get("columns") or []
    hidden = []
    for column in columns:
        parent, name = column.get("parent"), str(column.get("id"))
        key = f"tasks:{parent}.{name}" if parent else f"tasks:{name}"
        if parent == "data":
            if name in LABELPILOT_FIELDS and name not in shown:
                hidden.append(key)
        elif key not in KEPT_COLUMNS and not column.get("children"):
            hidden.append(key)
    return hidden


def save_ranked_view(api: LabelStudioClient, project: int, title: str, field: str, *,
                     minimum: float, descending: bool = False,
                     shown: Sequence[str] = ()) -> int:
    """A Data Manager tab listing the tasks whose `field` is at least `minimum`, ordered by
    it, showing the task's data, `field` and `shown`; returns the tab's id. (LS 1.23's
    `exists` filter on a Number data column matches only the value 1, so the tab filters by
    value.)"""
    column = f"tasks:data.{field}"
    item = {"filter": f"filter:{column}", "type": "Number", "operator": "greater_or_equal",
            "value": minimum}
    hidden = hidden_columns(api, project, (field, *shown))
    return api.save_view(project, title, {
        "filters": {"conjunction": "and", "items": [item]},
        "ordering": [f"-{column}" if descending else column],
        "hiddenColumns": {"explore": hidden, "labeling": hidden},
    })
