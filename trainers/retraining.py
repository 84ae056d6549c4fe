"""Retraining requests: a detected drift asks for a new version, an admin decides if it serves.

Life cycle: ``training`` (raised; a training job is queued with a trigger that holds the new
version for vetting) → ``ready`` (the job wrote candidate version vN) → ``approved`` (promoted
through the model store, by the admin) or ``rejected`` (the served version stays). At most one
request per model key is open (training or ready) at a time; the history is bounded.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import redis

from labelpilot.backends.model_store import ModelStore

log = logging.getLogger(__name__)
_REQUESTS = "labelpilot:retraining:requests"  # hash id → request JSON
_ORDER = "labelpilot:retraining:order"  # list of ids, newest first (bounded)
_OPEN = "labelpilot:retraining:open:{}"  # model key → id of its open request
HISTORY = 200  # requests kept
OPEN_TTL_S = 7 * 86400  # a backstop: an open request stops blocking new ones after a week
OPEN_STATES = ("training", "ready")
# (project, model_key, trigger) → the queued job's id; composed by the lead per platform
QueueTraining = Callable[[str, str, dict[str, Any]], str | None]


class RetrainingRequests:
    """The requests in `connection`; `queue_training` starts the training a request needs
    (None: requests are recorded but nothing is queued, e.g. in a read-only process)."""

    def __init__(self, connection: redis.Redis, queue_training: QueueTraining | None = None):
        self.connection = connection
        self.queue_training = queue_training

    def raise_request(
        self,
        project: str,
        model_key: str,
        model_version: str,
        reason: str,
        evidence: Mapping[str, Any],
    ) -> dict[str, Any] | None:
        """Open a request and queue its training, unless `model_key` has an open one
        (then None). The queued job must not promote: its trigger says so."""
        request_id = f"rr-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
        if not self.connection.set(_OPEN.format(model_key), request_id, nx=True, ex=OPEN_TTL_S):
            return None
        body: dict[str, Any] = {
            "id": request_id,
            "project": project,
            "model_key": model_key,
            "model_version": model_version,
            "status": "training",
            "reason": reason,
            "evidence": dict(evidence),
            "candidate": None,
            "raised_at": time.time(),
            "decided_by": None,
            "decided_at": None,
            "job": None,
        }
        self._save(body)
        self.connection.lpush(_ORDER, request_id)
        self._trim()
        log.warning(
            "retraining request %s raised for %s (%s): %s", request_id, model_key, project, reason
        )
        if self.queue_training is not None:
            trigger = {"reason": reason, "request": request_id, "vetting": "manual"}
            try:
                body["job"] = self.queue_training(project, model_key, trigger)
            except Exception:
                log.exception("could not queue the training of request %s", request_id)
                self._forget(body)
                return None
            self._save(body)
        return body

    def get(self, request_id: str) -> dict[str, Any]:
        raw = self.connection.hget(_REQUESTS, request_id)
        if raw is None:
            raise KeyError(
                f"no retraining request '{request_id}' (GET /admin/retraining lists them)"
            )
        return dict(json.loads(raw))

    def list(self, project: str | None = None) -> list[dict[str, Any]]:
        """Newest first; `project`: only that project's ("ls-3")."""
        ids = [
            i.decode() if isinstance(i, bytes) else i
            for i in self.connection.lrange(_ORDER, 0, HISTORY - 1)
        ]
        raw = self.connection.hmget(_REQUESTS, ids) if ids else []
        found = [json.loads(r) for r in raw if r is not None]
        return [r for r in found if project is None or r["project"] == project]

    def open_request(self, model_key: str) -> dict[str, Any] | None:
        raw = self.connection.get(_OPEN.format(model_key))
        if raw is None:
            return None
        try:
            return self.get(raw.decode() if isinstance(raw, bytes) else raw)
        except KeyError:
            return None

    def attach_candidate(self, request_id: str, version: str) -> dict[str, Any] | None:
        """The training of `request_id` wrote `version`: it is ready for an admin."""
        try:
            body = self.get(request_id)
        except KeyError:
            log.warning(
                "version %s names retraining request %s, which is gone", version, request_id
            )
            return None
        if body["status"] not in OPEN_STATES:
            return None
        body.update(status="ready", candidate=version, ready_at=time.time())
        self._save(body)
        log.warning(
            "retraining request %s: candidate %s of %s is ready for an admin "
            "(labelpilot models approve %s)",
            request_id,
            version,
            body["model_key"],
            request_id,
        )
        return body

    def approve(self, request_id: str, store: ModelStore, by: str) -> dict[str, Any]:
        """Promote the request's candidate (the manual gate). ValueError unless ready."""
        body = self.get(request_id)
        if body["status"] != "ready" or not body["candidate"]:
            raise ValueError(
                f"request {request_id} is {body['status']}, not ready: only a "
                "request whose candidate version is written can be approved"
            )
        store.promote(body["model_key"], body["candidate"], by=by)
        return self._decide(body, "approved", by)

    def fail(self, request_id: str, reason: str) -> dict[str, Any] | None:
        """The request's training failed: close it ("failed", with the reason), so the next
        drift of the model can raise a new one. None when it is unknown or no longer training."""
        try:
            body = self.get(request_id)
        except KeyError:
            return None
        if body["status"] != "training":
            return None
        body["error"] = reason[:500]
        return self._decide(body, "failed", "training job")

    def reject(self, request_id: str, by: str) -> dict[str, Any]:
        """Close the request; the served version stays. ValueError if already decided."""
        body = self.get(request_id)
        if body["status"] not in OPEN_STATES:
            raise ValueError(f"request {request_id} is already {body['status']}")
        return self._decide(body, "rejected", by)

    def _decide(self, body: dict[str, Any], status: str, by: str) -> dict[str, Any]:
        body.update(status=status, decided_by=by, decided_at=time.time())
        self._save(body)
        self._release(body)
        log.warning(
            "retraining request %s %s by %s (%s, candidate %s)",
            body["id"],
            status,
            by,
            body["model_key"],
            body["candidate"],
        )
        return body

    def _save(self, body: Mapping[str, Any]) -> None:
        self.connection.hset(_REQUESTS, body["id"], json.dumps(body, default=str))

    def _release(self, body: Mapping[str, Any]) -> None:
        key = _OPEN.format(body["model_key"])
        raw = self.connection.get(key)
        if raw is not None and (raw.decode() if isinstance(raw, bytes) else raw) == body["id"]:
            self.connection.delete(key)

    def _forget(self, body: Mapping[str, Any]) -> None:
        self._release(body)
        self.connection.hdel(_REQUESTS, body["id"])
        self.connection.lrem(_ORDER, 0, body["id"])

    def _trim(self) -> None:
        old = self.connection.lrange(_ORDER, HISTORY, -1)
        if old:
            self.connection.ltrim(_ORDER, 0, HISTORY - 1)
            self.connection.hdel(_REQUESTS, *old)


def vetting_request(
    connection: redis.Redis, model_key: str, trigger: Mapping[str, Any]
) -> str | None:
    """The retraining request a training of `model_key` answers, if any: its version waits
    for an admin instead of the automatic gate. The trigger names it; a training that joined
    an open request's job (coalesced) is held for the same request."""
    if trigger.get("vetting") == "manual" and trigger.get("request"):
        return str(trigger["request"])
    open_one = RetrainingRequests(connection).open_request(model_key)
    return str(open_one["id"]) if open_one and open_one["status"] == "training" else None
