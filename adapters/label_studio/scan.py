"""Quality findings marked in Label Studio: every scanned task gets `labelpilot_quality` (the
findings in words: "ok", "dark, blurry", "duplicate of 12", "corrupt: <why>") and
`labelpilot_quality_issues` (how many findings, 0 when ok) in its data. The Data Manager shows
both as columns (sortable; filterable as text and number), and the tab "labelpilot: quality"
lists the tasks with at least one finding, most findings first."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from typing import Any

import redis

from labelpilot.adapters.label_studio.client import LabelStudioClient
from labelpilot.adapters.label_studio.connections import hold_token
from labelpilot.adapters.label_studio.image_source import ImageSource, ImageSourceError
from labelpilot.adapters.label_studio.task_marks import mark_tasks, save_ranked_view
from labelpilot.adapters.label_studio.training import TOKEN_HOLD_S, queue_key
from labelpilot.trainers import queue
from labelpilot.trainers.scan import FetchError, ScanItem, Scanned, describe, scan_key

log = logging.getLogger(__name__)
QUALITY_FIELD = "labelpilot_quality"
QUALITY_ISSUES_FIELD = "labelpilot_quality_issues"
QUALITY_VIEW = "labelpilot: quality"


def image_key(label_config: str) -> str:
    """The task data field of the config's (first) <Image> tag, e.g. "image" for
    value="$image"; ValueError when the config has none."""
    try:
        root = ET.fromstring(label_config or "")
    except ET.ParseError as exc:
        raise ValueError(f"the project's label config is not valid XML: {exc}") from exc
    for tag in root.iter():
        value = tag.get("value") or ""
        if tag.tag == "Image" and value.startswith("$"):
            return value[1:]
    raise ValueError(
        'the project\'s label config has no <Image value="$..."> tag: '
        "a quality scan checks images only"
    )


class LabelStudioScan:
    """The items of one LS project (its tasks' images) and the `ScanSink` that marks them."""

    def __init__(self, images: ImageSource, project_id: int):
        self.images = images
        self.api: LabelStudioClient = images.api
        self.project_id = project_id
        project = self.api.project(project_id)
        self.key = image_key(str(project.get("label_config") or ""))
        self.total = int(project.get("task_number") or 0)
        self._tasks: dict[int, dict[str, Any]] = {}  # fetched, waiting to be marked
        self.marked = 0

    def items(self) -> Iterator[ScanItem]:
        for task in self.api.iter_tasks(self.project_id):
            task_id = int(task["id"])
            self._tasks[task_id] = task
            yield ScanItem(
                str(task_id), self._fetcher(task_id, (task.get("data") or {}).get(self.key))
            )

    def _fetcher(self, task_id: int, url: Any) -> Any:
        def fetch() -> bytes:
            if not url:
                raise FetchError(f"the task has no '{self.key}' field")
            try:
                return self.images.fetch(str(url), task_id)
            except ImageSourceError as exc:
                raise FetchError(str(exc)) from exc

        return fetch

    def publish(self, scanned: Sequence[Scanned]) -> dict[str, Any]:
        values: dict[int, dict[str, Any]] = {}
        for s in scanned:
            if s.report is None:
                values[int(s.item)] = {
                    QUALITY_FIELD: f"not checked: {s.error}",
                    QUALITY_ISSUES_FIELD: 0,
                }
            else:
                values[int(s.item)] = {
                    QUALITY_FIELD: describe(s.report),
                    QUALITY_ISSUES_FIELD: len(s.report.findings),
                }
        tasks = [self._tasks.pop(t) for t in values if t in self._tasks]
        counts = mark_tasks(self.api, tasks, values, (QUALITY_FIELD, QUALITY_ISSUES_FIELD))
        self.marked += counts.marked
        return {"marked": counts.marked}

    def finish(self) -> dict[str, Any]:
        view = save_ranked_view(
            self.api,
            self.project_id,
            QUALITY_VIEW,
            QUALITY_ISSUES_FIELD,
            minimum=1,
            descending=True,
            shown=(QUALITY_FIELD,),
        )
        return {"view": view, "marked": self.marked, "ls_project": self.project_id}


def request_scan(
    connection: redis.Redis, job_func: str, project_id: int, trigger: dict[str, Any]
) -> queue.Enqueued:
    """Queue (or join) a quality scan of an LS project; like a training, the job reads the LS
    token /setup left, held for it until it ends."""
    queued = queue.request_training(
        connection,
        scan_key(queue_key(project_id)),
        job_func,
        {"project_id": project_id, "trigger": trigger},
        trigger,
    )
    hold_token(connection, project_id, TOKEN_HOLD_S)
    return queued
