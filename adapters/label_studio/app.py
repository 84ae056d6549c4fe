"""Label Studio ML-backend HTTP protocol: /health /setup /predict /webhook /versions /metrics."""

from __future__ import annotations

import hmac
import logging
import os
import time
from typing import Any

import redis
from flask import Flask, Response, g, jsonify, request
from labelpilot.adapters.admin import admin_blueprint
from labelpilot.adapters.cvat.facade import cvat_blueprint, is_cvat_request
from labelpilot.adapters.http_errors import ApiError, install_error_handlers, json_body
from labelpilot.adapters.label_studio.config import (
    ConfigError,
    ControlSpec,
    ServingPlan,
    parse_label_config,
)
from labelpilot.adapters.label_studio.connections import Connections, ProjectConnection
from labelpilot.adapters.label_studio.interactive import (
    ClickAnswer,
    answer_click,
    preload_sam,
    prewarm_tasks,
    sam_health,
    sam_version,
)
from labelpilot.adapters.label_studio.payloads import (
    TRAINING_ACTIONS,
    PredictRequest,
    SetupRequest,
    WebhookEvent,
    project_id,
)
from labelpilot.adapters.label_studio.predictor import ModelChoice, Predictor
from labelpilot.adapters.label_studio.sam_config import SamSetup, batch_plan, sam_setups
from labelpilot.adapters.label_studio.training import on_training_event
from labelpilot.adapters.label_studio.webhook import record_training_event
from labelpilot.adapters.metrics import LATENCY, REQUESTS, WEBHOOK_EVENTS, exposition
from labelpilot.backends.errors import BackendError, ModelLoadError
from redis.exceptions import LockError

log = logging.getLogger(__name__)


def _plan(config: str | None) -> ServingPlan:
    try:
        return parse_label_config(config or "")
    except ConfigError as exc:
        raise ApiError(422, str(exc)) from exc


def warm_config_parser() -> None:
    """Import label-studio-sdk's config parser (~0.6 s) before the first /setup needs it."""
    from label_studio_sdk.label_interface import LabelInterface  # noqa: F401


def models_to_preload() -> list[str]:
    """LABELPILOT_PRELOAD (comma list), else every LABELPILOT_MODEL_<TASK> that is set."""
    listed = os.environ.get("LABELPILOT_PRELOAD")
    if listed is not None:
        return [ref.strip() for ref in listed.split(",") if ref.strip()]
    return [value for name, value in sorted(os.environ.items())
            if name.startswith("LABELPILOT_MODEL_") and value]


def _click_response(answer: ClickAnswer) -> Response:
    response = jsonify(answer.body)
    response.headers["X-Labelpilot-Sam-Embedding"] = answer.embedding_source
    response.headers["X-Labelpilot-Sam-Seconds"] = f"{answer.seconds_segment:.4f}"
    return response


def create_app(predictor: Predictor | None = None) -> Flask:
    app = Flask("labelpilot")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    install_error_handlers(app)
    predictor = predictor or Predictor()
    predictor.current.start()
    predictor.preload(models_to_preload(), first=warm_config_parser)
    preload_sam()
    connections = Connections()
    auth_user, auth_pass = os.environ.get("BASIC_AUTH_USER"), os.environ.get("BASIC_AUTH_PASS")

    @app.before_request
    def _start() -> Response | None:
        g.started = time.perf_counter()
        if auth_user and auth_pass and not is_cvat_request(request):  # CVAT: no basic auth
            given = request.authorization
            ok = given is not None and hmac.compare_digest(given.username or "", auth_user) \
                and hmac.compare_digest(given.password or "", auth_pass)
            if not ok:
                response = jsonify({"status": "error", "error": "HTTP basic auth required: set "
                                    "the backend's user/password in the LS model settings"})
                response.status_code = 401
                response.headers["WWW-Authenticate"] = 'Basic realm="labelpilot"'
                return response
        return None

    @app.after_request
    def _measure(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unknown"
        REQUESTS.labels(endpoint, request.method, str(response.status_code)).inc()
        started = g.get("started", time.perf_counter())
        LATENCY.labels(endpoint).observe(time.perf_counter() - started)
        return response

    @app.get("/")
    @app.get("/health")
    def health() -> Any:
        return {"status": "UP", "model_class": "labelpilot", "v2": True,
                "models_loaded": predictor.models.loaded(), "sam": sam_health()}

    def _serving(config: str | None, pid: int | None
                 ) -> tuple[ServingPlan, dict[str, SamSetup], str, dict[ControlSpec, ModelChoice]]:
        """What batch /predict serves, the SAM setups, the project's model_version and the
        models picked for it (picked once per request)."""
        setups = sam_setups(config or "")
        plan = _plan(config)
        if setups:
            plan = batch_plan(plan, setups)
        choices = predictor.choices(plan, pid)
        parts = {choice.version for choice in choices.values()}
        parts |= {sam_version(s) for s in setups.values()}
        return plan, setups, "+".join(sorted(parts)), choices

    @app.post("/setup")
    def setup() -> Any:
        req = SetupRequest.model_validate(json_body())
        _, _, version, _ = _serving(req.schema_, req.project_id)
        connections.remember(req.project_id, ProjectConnection(req.hostname, req.access_token,
                                                               req.schema_))
        return {"model_version": version}

    @app.post("/predict")
    def predict() -> Any:
        req = PredictRequest.model_validate(json_body())
        pid = req.project_id
        config = req.label_config or connections.get(pid).label_config
        plan, setups, version, choices = _serving(config, pid)
        context = req.params.context.result if req.params and req.params.context else []
        if context:
            if not setups:
                raise ApiError(422, "this project's label config has no interactive (SAM) "
                               "setup; turn Auto-Annotation off or add a SAM control "
                               "(label_config/sam_*.xml)")
            try:
                answer = answer_click(req.tasks[0], context, setups,
                                      connections.image_source(pid), version)
            except ApiError as exc:  # LS shows the annotator only the status: log the why
                log.warning("interactive click on task %s refused (%d): %s", req.tasks[0].id,
                            exc.status, exc.message)
                raise
            return _click_response(answer)
        if setups:
            prewarm_tasks(req.tasks, setups, connections.image_source(pid))
            if not plan.controls:  # entries without "result" store nothing in LS
                return {"results": [{"model_version": version} for _ in req.tasks]}
        try:
            results = predictor.predict(req.tasks, plan, connections.image_source(pid), pid,
                                        choices)
            for result in results:
                result["model_version"] = version
        except ModelLoadError as exc:
            raise ApiError(503, str(exc)) from exc
        except BackendError as exc:
            raise ApiError(422, str(exc)) from exc
        errors = [{"task": t.id, "error": r["error"]} for t, r in zip(req.tasks, results,
                                                                      strict=True) if "error" in r]
        body: dict[str, Any] = {"results": results}
        if errors:
            body["errors"] = errors
        return body

    @app.post("/webhook")
    def webhook() -> Any:
        event = WebhookEvent.model_validate(json_body())
        if event.action not in TRAINING_ACTIONS:
            WEBHOOK_EVENTS.labels(event.action, "ignored").inc()
            return {"status": "Unknown event", "action": event.action}
        try:
            event.check_for_training()
        except ValueError as exc:
            WEBHOOK_EVENTS.labels(event.action, "invalid").inc()
            raise ApiError(400, str(exc)) from exc
        try:
            entry = record_training_event(event)
        except redis.RedisError as exc:
            WEBHOOK_EVENTS.labels(event.action, "redis_down").inc()
            raise ApiError(503, f"event not recorded: Redis is unavailable ({exc}); "
                                "Label Studio will not resend it, retrain with 'Start training'"
                           ) from exc
        try:
            queued = on_training_event(event)
        except (redis.RedisError, LockError) as exc:
            WEBHOOK_EVENTS.labels(event.action, "redis_down").inc()
            raise ApiError(503, f"event recorded but training not queued: {exc}") from exc
        WEBHOOK_EVENTS.labels(event.action, queued.outcome if queued else "recorded").inc()
        return jsonify({"status": "ok", "action": event.action, "project": event.project_id,
                        "event_id": entry, "job": queued.job_id if queued else None,
                        "queue": queued.outcome if queued else "counted"}), 201

    @app.route("/versions", methods=["GET", "POST"])
    def versions() -> Any:
        body = request.get_json(silent=True) or {}
        pid = project_id(request.args.get("project") or body.get("project"))
        config = connections.get(pid).label_config
        if not config:
            return {"versions": []}
        return {"versions": [_serving(config, pid)[2]]}

    app.register_blueprint(admin_blueprint(predictor.current.store))
    app.register_blueprint(cvat_blueprint(predictor.models, predictor.current))

    @app.get("/metrics")
    def metrics() -> Response:
        payload, content_type = exposition()
        return Response(payload, content_type=content_type)

    return app
