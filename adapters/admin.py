"""Admin HTTP endpoints (vetting, promotion, rollback, settings), job progress and metrics.

Admin calls need ``Authorization: Bearer $LABELPILOT_ADMIN_TOKEN``; without that variable
they are refused, so nothing is exposed by default. Job progress and /metrics are readable
like /predict (behind the backend's basic auth when it is set).
"""

from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint, Response, request

from labelpilot.adapters.http_auth import BasicAuth, BearerToken
from labelpilot.adapters.http_errors import ApiError
from labelpilot.adapters.metrics import exposition
from labelpilot.backends.model_store import ModelStore
from labelpilot.trainers import queue
from labelpilot.trainers.settings import load_params, save_params


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
                    auth: BasicAuth | None = None) -> Blueprint:
    """`admin`: the token the /admin endpoints need (None: they are off); `auth`: the
    backend's basic auth, which /jobs and /metrics need like /predict."""
    bp = Blueprint("admin", __name__)

    if auth is not None:
        @bp.before_request
        def _authenticate() -> None:
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
        version = (request.get_json(silent=True) or {}).get("version")
        if not version:
            raise ApiError(400, "send {\"version\": \"vN\"}")
        try:
            store.promote(key, version, by="admin")
        except KeyError as exc:
            raise ApiError(404, str(exc.args[0])) from exc
        return describe(store, key)

    @bp.post("/admin/models/<key>/rollback")
    def rollback(key: str) -> Any:
        _require_admin()
        try:
            store.rollback(key, by="admin")
        except KeyError as exc:
            raise ApiError(409, str(exc.args[0])) from exc
        return describe(store, key)

    @bp.route("/admin/projects/<project>/settings", methods=["GET", "PUT"])
    def settings(project: str) -> Any:
        _require_admin()
        if request.method == "GET":
            return vars(load_params(connection, project))
        try:
            params = save_params(connection, project, **(request.get_json(silent=True) or {}))
        except (TypeError, ValueError) as exc:
            raise ApiError(400, f"bad settings: {exc}") from exc
        return vars(params)

    @bp.get("/metrics")
    def metrics() -> Response:
        payload, content_type = exposition()
        return Response(payload, content_type=content_type)

    return bp
