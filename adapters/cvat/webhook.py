"""CVAT webhooks: check the HMAC signature, train when a job or task is completed.

CVAT signs each delivery with the webhook's secret: header ``X-Signature-256: sha256=<hex
HMAC-SHA256 of the body>``; ours is LABELPILOT_CVAT_WEBHOOK_SECRET. Events that start a
training (of the job's project when it has one, else of its task), coalesced per model key:

- ``update:job`` whose ``state`` became ``completed`` or whose ``stage`` became ``acceptance``;
- ``update:task`` whose ``status`` became ``completed``.

``ping`` is answered; every other event is acknowledged and ignored.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

import redis
from flask import jsonify, request
from pydantic import BaseModel, ConfigDict, ValidationError
from redis.exceptions import LockError

from labelpilot.adapters.http_errors import ApiError, validation_message

SECRET_ENV = "LABELPILOT_CVAT_WEBHOOK_SECRET"
TrainingRequest = Callable[[str, int, dict[str, Any]], Any]
"""Queue (or join) the training of a CVAT ("task" | "project", id) with a trigger; returns
something with `job_id` and `outcome` (trainers.queue.Enqueued)."""


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class JobInfo(_Loose):
    id: int
    task_id: int | None = None
    project_id: int | None = None
    state: str | None = None
    stage: str | None = None


class TaskInfo(_Loose):
    id: int
    project_id: int | None = None
    status: str | None = None


class WebhookEvent(_Loose):
    event: str
    job: JobInfo | None = None
    task: TaskInfo | None = None
    before_update: dict[str, Any] | None = None
    sender: dict[str, Any] | None = None
    webhook_id: int | None = None

    def training_target(self) -> tuple[str, int] | None:
        """("project"|"task", id) when this event should start a training, else None."""
        before = self.before_update or {}
        if self.event == "update:job" and self.job is not None:
            done = (self.job.state == "completed" and before.get("state", "") != "completed") \
                or (self.job.stage == "acceptance" and before.get("stage", "") != "acceptance")
            if not done:
                return None
            if self.job.project_id:
                return "project", self.job.project_id
            if self.job.task_id:
                return "task", self.job.task_id
            raise ValueError("update:job payload has neither job.project_id nor job.task_id")
        if self.event == "update:task" and self.task is not None:
            if self.task.status != "completed" or before.get("status", "") == "completed":
                return None
            if self.task.project_id:
                return "project", self.task.project_id
            return "task", self.task.id
        return None


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def check_signature(secret: str | None, body: bytes, given: str | None) -> None:
    if not secret:
        raise ApiError(403, f"CVAT webhooks are off: set {SECRET_ENV} on the server and the "
                            "same secret on the CVAT webhook")
    if not given:
        raise ApiError(401, "header X-Signature-256 is missing: give the CVAT webhook a secret")
    if not hmac.compare_digest(signature(secret, body), given.strip()):
        raise ApiError(401, "X-Signature-256 does not match: the webhook's secret differs "
                            f"from {SECRET_ENV}")


def handle_webhook(secret: str | None, request_training: TrainingRequest,
                   notice: Callable[[str], dict[str, Any]] | None = None,
                   on_job_done: Callable[[JobInfo], str | None] | None = None) -> Any:
    """`notice(what)`: extra reply fields about the queued job (e.g. that no worker is alive);
    `on_job_done(job)`: queues the acceptance comparison of a job that became completed."""
    body = request.get_data()
    check_signature(secret, body, request.headers.get("X-Signature-256"))
    try:
        event = WebhookEvent.model_validate_json(body or b"{}")
    except ValidationError as exc:
        raise ApiError(400, validation_message(exc)) from exc
    if event.event == "ping":
        return {"status": "ok", "event": "ping"}
    try:
        target = event.training_target()
    except ValueError as exc:
        raise ApiError(400, str(exc)) from exc
    if target is None:
        return {"status": "ignored", "event": event.event}
    kind, ident = target
    trigger = {"event": event.event, "at": time.time(), "webhook": event.webhook_id,
               "job": event.job.id if event.job else None,
               "user": (event.sender or {}).get("username")}
    try:
        queued = request_training(kind, ident, trigger)
    except (redis.RedisError, LockError) as exc:
        raise ApiError(503, f"training not queued: Redis is unavailable ({exc}); "
                            f"run 'labelpilot train --cvat-{kind} {ident}' later") from exc
    extra = notice(f"CVAT {kind} {ident}: training job {queued.job_id} {queued.outcome}") \
        if notice else {}
    if on_job_done is not None and event.event == "update:job" and event.job is not None:
        accepting = on_job_done(event.job)  # acceptance rate of what the detector predicted
        extra = {**extra, **({"acceptance": accepting} if accepting else {})}
    return jsonify({"status": "ok", "event": event.event, "train": f"{kind} {ident}",
                    "job": queued.job_id, "queue": queued.outcome, **extra}), 202
