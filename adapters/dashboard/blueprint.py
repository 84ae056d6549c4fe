"""The KPI dashboard: `/dashboard` (HTML for people) and `/dashboard/api/...` (the same figures
as JSON).

Who sees what: HTTP basic auth whose password is LABELPILOT_ADMIN_TOKEN (any user name), or the
token as on /admin (`Authorization: Bearer`, `X-Labelpilot-Admin-Token`), is an admin, who may
approve or reject retraining requests; the backend's BASIC_AUTH_USER / BASIC_AUTH_PASS give a
read-only view. With neither configured the dashboard is off (403 saying what to set), so
nothing is exposed by default. Approving or rejecting also needs the `X-Labelpilot-Dashboard`
header, which a cross-site form cannot send (the browser's cached basic auth alone is not
enough: no CSRF).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from flask import Blueprint, Request, Response, render_template, request

from labelpilot.adapters.dashboard import data, plots
from labelpilot.adapters.http_auth import ADMIN_TOKEN_HEADER, BasicAuth
from labelpilot.adapters.http_errors import ApiError, error_response
from labelpilot.backends.quality import FINDINGS

ACTION_HEADER = "X-Labelpilot-Dashboard"
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="labelpilot dashboard", charset="UTF-8"'}


@dataclass(frozen=True)
class Viewer:
    role: str  # "admin" | "viewer"
    name: str  # who, for the audit trail of an approval

    @property
    def admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class DashboardAuth:
    """`admin_token`: LABELPILOT_ADMIN_TOKEN; `basic`: the backend's basic auth."""

    admin_token: str | None
    basic: BasicAuth | None

    def viewer(self, req: Request) -> Viewer:
        if self.admin_token is None and self.basic is None:
            raise ApiError(
                403,
                "the dashboard is off: set LABELPILOT_ADMIN_TOKEN on the server "
                "(then log in with any user name and the token as password)",
            )
        given = req.authorization
        password = (given.password or "") if given is not None and given.type == "basic" else None
        user = (given.username or "") if given is not None else ""
        if self.admin_token is not None:
            token = password if password is not None else _token(req)
            if token and hmac.compare_digest(token.encode(), self.admin_token.encode()):
                return Viewer("admin", user or "admin")
        if (
            self.basic is not None
            and password is not None
            and hmac.compare_digest(user.encode(), self.basic.user.encode())
            and hmac.compare_digest(password.encode(), self.basic.password.encode())
        ):
            return Viewer("viewer", user)
        raise ApiError(
            401,
            "log in: user name any, password LABELPILOT_ADMIN_TOKEN (admin), or "
            "the backend's BASIC_AUTH_USER / BASIC_AUTH_PASS (read-only)",
            headers=_CHALLENGE,
        )


def _token(req: Request) -> str:
    given = req.headers.get(ADMIN_TOKEN_HEADER, "").strip()
    header = req.headers.get("Authorization", "")
    return given or (header[len("Bearer ") :].strip() if header.startswith("Bearer ") else "")


def dashboard_blueprint(
    sources: data.Sources | Callable[[], data.Sources], auth: DashboardAuth, *, poll_ms: int = 2000
) -> Blueprint:
    """`sources`: where the figures come from, or a function that builds them on the first
    dashboard request (`data.Sources.build`: a server whose dashboard nobody opens never loads
    the ledgers); `poll_ms`: how often the page refreshes the job table."""
    bp = Blueprint("dashboard", __name__, template_folder="templates")
    built: list[data.Sources] = [sources] if isinstance(sources, data.Sources) else []

    def _sources() -> data.Sources:
        if not built:
            built.append(sources() if callable(sources) else sources)
        return built[0]

    bp.add_app_template_filter(_when, "dashboard_when")
    bp.add_app_template_filter(_duration, "dashboard_duration")
    bp.add_app_template_filter(_percent, "dashboard_percent")
    bp.add_app_template_filter(_number, "dashboard_number")

    def _viewer() -> Viewer:
        return auth.viewer(request)

    @bp.errorhandler(ApiError)
    def _error(exc: ApiError) -> Any:
        if request.path.startswith("/dashboard/api/"):
            response, status = error_response(exc.status, exc.message, **exc.extra)
        else:
            response = Response(
                render_template("dashboard_error.html", status=exc.status, message=exc.message),
                mimetype="text/html",
            )
            status = exc.status
        response.headers.update(exc.headers)
        return response, status

    @bp.errorhandler(redis.RedisError)
    def _redis_down(exc: redis.RedisError) -> Any:
        return _error(
            ApiError(
                503,
                f"Redis is unreachable ({type(exc).__name__}: {exc}): the "
                "figures live there; check REDIS_URL and that Redis runs",
            )
        )

    @bp.errorhandler(data.NotFound)
    def _not_found(exc: data.NotFound) -> Any:
        return _error(ApiError(404, str(exc.args[0])))

    @bp.get("/dashboard")
    @bp.get("/dashboard/")
    def index() -> Any:
        viewer = _viewer()
        return render_template(
            "dashboard_index.html",
            viewer=viewer,
            overview=data.overview(_sources()),
            jobs=data.jobs(_sources()),
            poll_ms=poll_ms,
            project=None,
            now=_now(),
            metric_names=plots.METRIC_NAMES,
        )

    @bp.get("/dashboard/projects/<project>")
    def project_page(project: str) -> Any:
        viewer = _viewer()
        detail = data.project_detail(_sources(), project)
        figures = {
            "versions": plots.versions_plot(detail["models"]),
            "predictions": plots.predictions_plot(detail["predictions_per_day"]),
            "acceptance": plots.acceptance_plot(detail["acceptance"]),
            "quality": plots.quality_plot(detail["quality"]),
        }
        return render_template(
            "dashboard_project.html",
            viewer=viewer,
            detail=detail,
            summary=data.project_summary(detail),
            figures=figures,
            jobs=detail["jobs"],
            poll_ms=poll_ms,
            project=project,
            findings=FINDINGS,
            now=_now(),
            metric_names=plots.METRIC_NAMES,
        )

    @bp.get("/dashboard/api/projects")
    def api_projects() -> Any:
        viewer = _viewer()
        return {"role": viewer.role, **data.overview(_sources())}

    @bp.get("/dashboard/api/projects/<project>")
    def api_project(project: str) -> Any:
        viewer = _viewer()
        days = request.args.get("days", "30")
        if not days.isdigit() or not 1 <= int(days) <= 90:
            raise ApiError(400, f"days must be a whole number from 1 to 90, not '{days[:20]}'")
        return {"role": viewer.role, **data.project_detail(_sources(), project, days=int(days))}

    @bp.get("/dashboard/api/models/<key>/<version>")
    def api_version(key: str, version: str) -> Any:
        _viewer()
        return data.version_detail(_sources(), key, version)

    @bp.get("/dashboard/api/jobs")
    def api_jobs() -> Any:
        _viewer()
        project = request.args.get("project") or None
        return {"project": project, "jobs": data.jobs(_sources(), project)}

    @bp.post("/dashboard/api/retraining/<request_id>/<action>")
    def decide(request_id: str, action: str) -> Any:
        viewer = _viewer()
        if action not in ("approve", "reject"):
            raise ApiError(404, f"unknown action '{action[:40]}': approve or reject")
        if not viewer.admin:
            raise ApiError(
                403,
                "read-only view: log in with LABELPILOT_ADMIN_TOKEN as password "
                f"to {action} retraining requests",
            )
        if request.headers.get(ACTION_HEADER) != "1":
            raise ApiError(
                403,
                f"send the header '{ACTION_HEADER}: 1' (the dashboard's buttons "
                "do; a form on another site cannot)",
            )
        found = _sources()
        by = f"{viewer.name} (dashboard)"
        try:
            if action == "approve":
                decided = found.retraining.approve(request_id, found.store, by)
            else:
                decided = found.retraining.reject(request_id, by)
        except KeyError as exc:
            raise ApiError(404, str(exc.args[0] if exc.args else exc)) from exc
        except ValueError as exc:
            raise ApiError(409, str(exc)) from exc
        return {"request": decided}

    return bp


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _when(at: Any) -> str:
    """A time for people: "2026-11-29 12:16 UTC" (epoch seconds or ISO text)."""
    if isinstance(at, int | float):
        return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    if isinstance(at, str) and at:
        try:
            parsed = datetime.fromisoformat(at)
        except ValueError:
            return at
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "—"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    return f"{minutes // 60} h {minutes % 60} min"


def _percent(rate: Any) -> str:
    return f"{100 * float(rate):.0f}%" if isinstance(rate, int | float) else "—"


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    if value is None:
        return "—"
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return "; ".join(_number(v) for v in value) or "—"
    if isinstance(value, dict) and all(isinstance(v, str | int | float) for v in value.values()):
        return "; ".join(f"{k}: {_number(v)}" for k, v in value.items()) or "—"
    return value if isinstance(value, str) else json.dumps(value)
