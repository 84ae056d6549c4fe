"""Label errors marked in CVAT: an issue on the frame and region of each likely mistake, in
the annotation job that holds the frame, so reviewers find them in CVAT's issue list and on
the frame itself. Issues labelpilot opened before are not opened twice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from labelpilot.adapters.cvat.client import json_pages
from labelpilot.adapters.cvat.training import store_key
from labelpilot.backends.shapes import BBox
from labelpilot.trainers import queue
from labelpilot.trainers.label_error_job import describe_finding, errors_key
from labelpilot.trainers.label_errors import Finding, LabelErrorReport
from labelpilot.trainers.samples import Sample

ISSUE_PREFIX = "labelpilot: "
MAX_ISSUES_PER_FRAME = 3


def issue_box(finding: Finding, sample: Sample) -> BBox:
    """Where the issue points: the annotated box it is about, or the missing object's."""
    if finding.instance_index is not None:
        box = sample.instances[finding.instance_index].box
        if box is not None:
            return box
    return finding.evidence.predicted_box


class CvatReview:
    """`ReviewSink` for CVAT tasks (samples name `provenance['task']` and `['frame']`)."""

    def __init__(self, client: Any):
        self.client = client  # a cvat-sdk Client
        self._jobs: dict[int, list[dict[str, Any]]] = {}

    def job_for(self, task: int, frame: int) -> int:
        if task not in self._jobs:
            jobs = json_pages(self.client.api_client.jobs_api.list, task_id=task)
            self._jobs[task] = [j for j in jobs if j.get("type", "annotation") == "annotation"]
        for job in self._jobs[task]:
            if int(job["start_frame"]) <= frame <= int(job["stop_frame"]):
                return int(job["id"])
        raise ValueError(f"CVAT task {task} has no annotation job with frame {frame}")

    def existing(self, job: int) -> set[tuple[int, str]]:
        issues = json_pages(self.client.api_client.issues_api.list, job_id=job)
        return {(int(i["frame"]), str(i.get("message") or "")) for i in issues}

    def publish(self, samples: Sequence[Sample], report: LabelErrorReport,
                threshold: float) -> dict[str, Any]:
        from cvat_sdk.api_client import models

        by_id = {s.sample_id: s for s in samples}
        opened = kept = 0
        frames: list[str] = []
        seen: dict[int, set[tuple[int, str]]] = {}
        for checked in report.flagged(threshold):
            sample = by_id[checked.sample_id]
            task, frame = int(sample.provenance["task"]), int(sample.provenance["frame"])
            job = self.job_for(task, frame)
            if job not in seen:
                seen[job] = self.existing(job)
            frames.append(f"task {task} frame {frame}")
            for finding in [f for f in checked.findings
                            if f.score >= threshold][:MAX_ISSUES_PER_FRAME]:
                message = (f"{ISSUE_PREFIX}{describe_finding(finding, sample)} "
                           f"(score {finding.score:.2f})")
                if (frame, message) in seen[job]:
                    kept += 1
                    continue
                box = issue_box(finding, sample)
                self.client.api_client.issues_api.create(models.IssueWriteRequest(
                    frame=frame, job=job, message=message,
                    position=[float(box.x1), float(box.y1), float(box.x2), float(box.y2)]),
                    _parse_response=False)
                seen[job].add((frame, message))
                opened += 1
        return {"issues_opened": opened, "issues_already_open": kept, "review_frames": frames}


def request_cvat_label_errors(connection: redis.Redis, job_func: str, kind: str, ident: int,
                              trigger: dict[str, Any], options: dict[str, Any]
                              ) -> queue.Enqueued:
    """Queue (or join) a label-error check of a CVAT task or project on the workers."""
    return queue.request_training(
        connection, errors_key(store_key(kind, ident)), job_func,
        {"kind": kind, "ident": int(ident), "trigger": trigger, "options": options}, trigger)
