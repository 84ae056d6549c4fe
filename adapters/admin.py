"""Admin HTTP endpoints (vetting, promotion, rollback, settings) and job progress.

Admin calls need ``Authorization: Bearer $LABELPILOT_ADMIN_TOKEN``; without that variable
they are refused, so nothing is exposed by default. Job progress is readable like /predict.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

from flask import Blueprint, request
from labelpilot.adapters.http_errors import ApiError
from labelpilot.backends.model_store import ModelStore
from labelpilot.trainers import queue
from labelpilot.trainers.settings import load_params, save_params

from labelpilot.redis_conn import get_redis


def _require_admin() -> None:
    token = os.environ.get("LABELPILOT_ADMIN_TOKEN", "")
    if not token:
        raise ApiError(403, "admin endpoints are off: set LABELPILOT_ADMIN_TOKEN on the server")
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given, token):
        raise ApiError(401, "admin token missing or wrong: send 'Authorization: Bearer <token>'")


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


def admin_blueprint(store: ModelStore) -> Blueprint:
    bp = Blueprint("admin", __name__)

    @bp.get("/jobs")
    def list_jobs() -> Any:
        key = request.args.get("key") or (f"ls-{request.args['project']}"
                                          if request.args.get("project") else None)
        return {"jobs": queue.jobs(get_redis(), key)}

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
        connection = get_redis()
        if request.method == "GET":
            return vars(load_params(connection, project))
        try:
            params = save_params(connection, project, **(request.get_json(silent=True) or {}))
        except (TypeError, ValueError) as exc:
            raise ApiError(400, f"bad settings: {exc}") from exc
        return vars(params)

    return bp
