"""Quality findings marked in CVAT: a tag "quality:<finding>" (e.g. "quality:dark",
"quality:duplicate") on each frame with that finding, so annotators see it on the frame and
can filter the job by it. The tag labels must exist in the task (or its project): labelpilot
adds the missing ones (tag-type labels named quality:<finding>) before the scan; a CVAT that
refuses that makes the scan stop at once with the labels to add by hand. Tags labelpilot
placed before are not placed twice; a finding that has gone (a re-scan after a fix) leaves its
old tag for a person to remove."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import redis

from labelpilot.adapters.cvat.annotations import SCAN_TAG_PREFIX
from labelpilot.adapters.cvat.client import json_pages
from labelpilot.adapters.cvat.training import store_key
from labelpilot.backends.quality import FINDINGS
from labelpilot.trainers import queue
from labelpilot.trainers.scan import FetchError, ScanItem, Scanned, scan_key

log = logging.getLogger(__name__)
TAG_PREFIX = SCAN_TAG_PREFIX


def tag_names() -> list[str]:
    return [f"{TAG_PREFIX}{finding}" for finding in FINDINGS]


class CvatScan:
    """The frames of one CVAT task and the `ScanSink` that tags them."""

    def __init__(self, client: Any, task_id: int):
        self.client = client  # a cvat-sdk Client
        self.task_id = int(task_id)
        self.key = store_key("task", self.task_id)
        self.task = client.tasks.retrieve(self.task_id)
        meta = self.task.get_meta()
        deleted = set(getattr(meta, "deleted_frames", None) or [])
        size = int(getattr(meta, "size", 0) or len(list(meta.frames)))
        self.frames = [i for i in range(size) if i not in deleted]
        self.total = len(self.frames)
        self.labels = self._tag_labels()
        annotations = self.task.get_annotations()
        self._placed = {(int(t.frame), int(t.label_id)) for t in annotations.tags or []}
        self.tagged = 0

    def _labels(self) -> dict[str, int]:
        return {
            str(label["name"]): int(label["id"])
            for label in json_pages(self.client.api_client.labels_api.list, task_id=self.task_id)
        }

    def _tag_labels(self) -> dict[str, int]:
        """finding → label id, adding the missing "quality:*" tag labels to the task (or to
        its project, which owns a project task's labels)."""
        known = self._labels()
        missing = [name for name in tag_names() if name not in known]
        if missing:
            from cvat_sdk import models

            request = [models.PatchedLabelRequest(name=name, type="tag") for name in missing]
            try:
                project = getattr(self.task, "project_id", None)
                if project:
                    self.client.api_client.projects_api.partial_update(
                        project,
                        patched_project_write_request=models.PatchedProjectWriteRequest(
                            labels=request
                        ),
                    )
                else:
                    self.client.api_client.tasks_api.partial_update(
                        self.task_id,
                        patched_task_write_request=models.PatchedTaskWriteRequest(labels=request),
                    )
                known = self._labels()
            except Exception as exc:  # cvat-sdk's ApiException, or an older CVAT's answer
                log.warning("could not add the quality tag labels: %s", exc)
            missing = [name for name in tag_names() if name not in known]
            if missing:
                raise ValueError(
                    f"CVAT task {self.task_id} has no tag labels {', '.join(missing)} and "
                    "labelpilot could not add them: add them (type 'tag') to the task or its "
                    "project in CVAT, then scan again"
                )
        return {name[len(TAG_PREFIX) :]: known[name] for name in tag_names()}

    def items(self) -> Iterator[ScanItem]:
        for index in self.frames:
            yield ScanItem(str(index), self._fetcher(index))

    def _fetcher(self, index: int) -> Any:
        def fetch() -> bytes:
            try:
                return bytes(self.task.get_frame(index, quality="original").read())
            except Exception as exc:  # the SDK's ApiException, urllib3's errors
                raise FetchError(f"CVAT did not give frame {index}: {exc}") from exc

        return fetch

    def publish(self, scanned: Sequence[Scanned]) -> dict[str, Any]:
        from cvat_sdk import models

        tags = []
        for s in scanned:
            for finding in s.report.findings if s.report else ():
                place = (int(s.item), self.labels[finding])
                if place in self._placed:
                    continue
                self._placed.add(place)
                tags.append(
                    models.LabeledImageRequest(
                        frame=place[0], label_id=place[1], source="auto", group=0, attributes=[]
                    )
                )
        if tags:
            self.client.api_client.tasks_api.partial_update_annotations(
                "create",
                self.task_id,
                patched_labeled_data_request=models.PatchedLabeledDataRequest(
                    tags=tags, shapes=[], tracks=[]
                ),
            )
            self.tagged += len(tags)
        return {"tagged": len(tags)}

    def finish(self) -> dict[str, Any]:
        return {"tagged": self.tagged, "cvat_task": self.task_id}


def request_cvat_scan(
    connection: redis.Redis, job_func: str, task_id: int | None, trigger: dict[str, Any]
) -> queue.Enqueued:
    """Queue (or join) a quality scan of a CVAT task on the workers."""
    return queue.request_training(
        connection,
        scan_key(store_key("task", int(task_id or 0))),
        job_func,
        {"task_id": int(task_id or 0), "trigger": trigger},
        trigger,
    )
