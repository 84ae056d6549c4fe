"""Admin HTTP endpoints (vetting, promotion, rollback, settings), job progress and metrics.

Admin calls need ``Authorization: Bearer $LABELPILOT_ADMIN_TOKEN`` (or the token in an
``X-Labelpilot-Admin-Token`` header) and nothing else: the token is their own credential, so
they work alongside the backend's basic auth. Without that variable they are refused, so
nothing is exposed by default (and with basic auth on, a caller without it gets the same 401 as
everywhere). Job progress and /metrics are readable like /predict (behind the backend's basic
auth when it is set).
"""

from __future__ import annotations

import re
from typing import Any

import redis
from flask import Blueprint, Response, request
from pydantic import BaseModel, Field

from labelpilot.adapters.http_auth import BasicAuth, BearerToken
from labelpilot.adapters.http_errors import ApiError, json_body
from labelpilot.adapters.metrics import QueueCollector, WatchCollector, exposition
from labelpilot.backends.acceptance import AcceptanceLedger
from labelpilot.backends.model_store import ModelStore
from labelpilot.backends.quality_ledger import QualityLedger
from labelpilot.trainers import queue
from labelpilot.trainers.queue_status import QueueMonitor
from labelpilot.trainers.retraining import RetrainingRequests
from labelpilot.trainers.settings import load_params, save_params

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # model-store and settings keys


class PromoteRequest(BaseModel):
    version: str = Field(max_length=12, pattern=r"^v\d{1,9}$",
                         description="a version of the key, e.g. v3 (GET /admin/models)")


def _check_name(name: str, what: str) -> None:
    if not _NAME.fullmatch(name) or ".." in name:
        raise ApiError(400, f"'{name[:80]}' is not a {what}: letters, digits, '_', '.' and '-', "
                            "at most 128 (e.g. ls-3-label, cvat-task-7)")


def describe(store: ModelStore, key: str) -> dict[str, Any]:
    current = store.current(key)
    versions = []
    for version in store.versions(key):
        info = version.info()
        versions.append({"version": version.version, "model_version": version.model_version,
                         "metrics": info.get("metrics"), "decision": info.get("decision"),
                         "trigger": info.get("trigger"), "written_at": info.get("written_at"),
                         "current": current is not None and current.version == version.version})
    return {"key": key, "current": current.version if current else None, "versions": versions}


def admin_blueprint(store: ModelStore, connection: redis.Redis, admin: BearerToken | None,
                    auth: BasicAuth | None = None, monitor: QueueMonitor | None = None
                    ) -> Blueprint:
    """`admin`: the token the /admin endpoints need (None: they are off); `auth`: the
    backend's basic auth, which /jobs and /metrics need like /predict; `monitor`: the
    training queue's state, reported in /metrics."""
    bp = Blueprint("admin", __name__)
    watched = WatchCollector(QualityLedger(connection), AcceptanceLedger(connection),
                             RetrainingRequests(connection), store.model_keys)

    @bp.before_request
    def _authenticate() -> None:
        if admin is not None and request.path.startswith("/admin/"):
            admin.check(request)  # the admin token alone: no basic auth on top
        elif auth is not None:
            auth.check(request)

    def _require_admin() -> None:
        if admin is None:
            raise ApiError(403, "admin endpoints are off: set LABELPILOT_ADMIN_TOKEN on the "
                                "server")
        admin.check(request)

    @bp.get("/jobs")
    def list_jobs() -> Any:
        key = request.args.get("key") or (f"ls-{request.args['project']}"
                                          if request.args.get("project") else None)
        return {"jobs": queue.jobs(connection, key)}

    @bp.get("/admin/models")
    def models() -> Any:
        _require_admin()
        return {"models": [describe(store, key) for key in store.model_keys()]}

    @bp.post("/admin/models/<key>/promote")
    def promote(key: str) -> Any:
        _require_admin()
        _check_name(key, "model key")
        body = json_body()
        if not isinstance(body, dict) or "version" not in body:
            raise ApiError(400, "send {\"version\": \"vN\"}")
        version = PromoteRequest.model_validate(body).version
        try:
            store.promote(key, version, by="admin")
        except KeyError as exc:
            raise ApiError(404, str(exc.args[0])) from exc
        return describe(store, key)

    @bp.post("/admin/models/<key>/rollback")
    def rollback(key: str) -> Any:
        _require_admin()
        _check_name(key, "model key")
        try:
            store.rollback(key, by="admin")
        except KeyError as exc:
            raise ApiError(409, str(exc.args[0])) from exc
        return describe(store, key)

    retraining = RetrainingRequests(connection)

    @bp.get("/admin/retraining")
    def retraining_requests() -> Any:
        _require_admin()
        project = request.args.get("project")
        if project is not None:
            _check_name(project, "project key")
        return {"requests": retraining.list(project)}

    @bp.post("/admin/retraining/<request_id>/<decision>")
    def decide_retraining(request_id: str, decision: str) -> Any:
        _require_admin()
        _check_name(request_id, "retraining request id")
        if decision not in ("approve", "reject"):
            raise ApiError(404, f"no action '{decision[:40]}': approve or reject")
        body = json_body() if request.data else {}
        by = body.get("by", "admin") if isinstance(body, dict) else None
        if not isinstance(by, str) or not _NAME.fullmatch(by):
            raise ApiError(400, "\"by\" names who decides: letters, digits, '_', '.', '-'")
        try:
            if decision == "approve":
                return retraining.approve(request_id, store, by=by)
            return retraining.reject(request_id, by=by)
        except KeyError as exc:
            raise ApiError(404, str(exc.args[0])) from exc
        except ValueError as exc:
            raise ApiError(409, str(exc)) from exc

    @bp.route("/admin/projects/<project>/settings", methods=["GET", "PUT"])
    def settings(project: str) -> Any:
        _require_admin()
        _check_name(project, "project key")
        if request.method == "GET":
            return vars(load_params(connection, project))
        body = json_body() if request.data else {}  # empty: nothing changes
        if not isinstance(body, dict):
            raise ApiError(400, "send the settings as a JSON object, e.g. {\"epochs\": 30}")
        try:
            params = save_params(connection, project, **body)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ApiError(400, f"bad settings: {exc}") from exc
        return vars(params)

    @bp.get("/metrics")
    def metrics() -> Response:
        payload, content_type = exposition(*([QueueCollector(monitor)] if monitor else []),
                                           watched)
        return Response(payload, content_type=content_type)

    return bp
