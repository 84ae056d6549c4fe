"""Label errors marked in Label Studio: every checked task gets `labelpilot_review` (0..1, how
likely its annotation is wrong) and `labelpilot_review_reason` (what looks wrong, in words) in
its data, both Data Manager columns; the tab "labelpilot: review" lists the tasks at or above
the threshold, most likely wrong first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from labelpilot.adapters.label_studio.client import LabelStudioClient
from labelpilot.adapters.label_studio.connections import hold_token
from labelpilot.adapters.label_studio.task_marks import (
    REVIEW_FIELD,
    REVIEW_REASON_FIELD,
    REVIEW_VIEW,
    mark_tasks,
    save_ranked_view,
)
from labelpilot.adapters.label_studio.training import TOKEN_HOLD_S, queue_key
from labelpilot.trainers import queue
from labelpilot.trainers.label_error_job import errors_key, reason
from labelpilot.trainers.label_errors import LabelErrorReport
from labelpilot.trainers.samples import Sample


class LabelStudioReview:
    """`ReviewSink` for one LS project (samples name their task in `provenance['task']`)."""

    def __init__(self, api: LabelStudioClient, project_id: int):
        self.api = api
        self.project_id = project_id

    def publish(self, samples: Sequence[Sample], report: LabelErrorReport,
                threshold: float) -> dict[str, Any]:
        by_id = {s.sample_id: s for s in samples}
        values: dict[int, dict[str, Any]] = {}
        for checked in report.samples:
            sample = by_id[checked.sample_id]
            values[int(sample.provenance["task"])] = {
                REVIEW_FIELD: round(checked.score, 3),
                REVIEW_REASON_FIELD: reason(checked.findings, sample)
                if checked.score >= threshold else ""}
        counts = mark_tasks(self.api, self.api.iter_tasks(self.project_id), values,
                            (REVIEW_FIELD, REVIEW_REASON_FIELD))
        view = save_ranked_view(self.api, self.project_id, REVIEW_VIEW, REVIEW_FIELD,
                                minimum=threshold, descending=True,
                                shown=(REVIEW_REASON_FIELD,))
        flagged = [t for t, v in values.items() if v[REVIEW_FIELD] >= threshold]
        flagged.sort(key=lambda t: -values[t][REVIEW_FIELD])
        return {"project": self.project_id, "view": view, "review_tasks": flagged,
                "marked": counts.marked}


def request_label_errors(connection: redis.Redis, job_func: str, project_id: int,
                         trigger: dict[str, Any], options: dict[str, Any]) -> queue.Enqueued:
    """Queue (or join) a label-error check of an LS project on the training workers; like a
    training, the job reads the LS token /setup left, held for it until it ends."""
    queued = queue.request_training(
        connection, errors_key(queue_key(project_id)), job_func,
        {"project_id": project_id, "trigger": trigger, "options": options}, trigger)
    hold_token(connection, project_id, TOKEN_HOLD_S)
    return queued
