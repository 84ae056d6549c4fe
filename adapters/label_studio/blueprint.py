"""Label Studio's ML-backend protocol as a Flask blueprint: /health /setup /predict /webhook
/versions, behind the backend's basic auth (BASIC_AUTH_USER / BASIC_AUTH_PASS) when it is set.
`labelpilot.app.create_app` composes it with the CVAT facade and the admin endpoints."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
from flask import Blueprint, Response, jsonify, request
from redis.exceptions import LockError

from labelpilot.adapters.http_auth import BasicAuth
from labelpilot.adapters.http_errors import ApiError, json_body
from labelpilot.adapters.label_studio.config import (
    ConfigError,
    ControlDefaults,
    ControlSpec,
    ServingPlan,
    parse_label_config,
)
from labelpilot.adapters.label_studio.connections import Connections, ProjectConnection
from labelpilot.adapters.label_studio.interactive import ClickAnswer, InteractiveSam
from labelpilot.adapters.label_studio.payloads import (
    TRAINING_ACTIONS,
    PredictRequest,
    SetupRequest,
    WebhookEvent,
    project_id,
)
from labelpilot.adapters.label_studio.predictor import ModelChoice, Predictor
from labelpilot.adapters.label_studio.sam_config import SamSetup, batch_plan, sam_setups
from labelpilot.adapters.label_studio.video import LongVideoHook
from labelpilot.adapters.label_studio.webhook import record_training_event
from labelpilot.adapters.metrics import WEBHOOK_EVENTS
from labelpilot.adapters.worker_notice import worker_notice
from labelpilot.backends.errors import BackendError, ModelLoadError, ModelRefRefused
from labelpilot.trainers.queue import Enqueued
from labelpilot.trainers.queue_status import QueueMonitor

log = logging.getLogger(__name__)
TrainingHook = Callable[[WebhookEvent], Enqueued | None]
"""What a training webhook starts: queue (or count towards) a training job for the project."""


def _plan(config: str | None, defaults: ControlDefaults) -> ServingPlan:
    try:
        return parse_label_config(config or "", defaults)
    except ConfigError as exc:
        raise ApiError(422, str(exc)) from exc


def warm_config_parser() -> None:
    """Import label-studio-sdk's config parser (~0.6 s) before the first /setup needs it."""
    from label_studio_sdk.label_interface import LabelInterface  # noqa: F401


def _click_response(answer: ClickAnswer) -> Response:
    response = jsonify(answer.body)
    response.headers["X-Labelpilot-Sam-Embedding"] = answer.embedding_source
    response.headers["X-Labelpilot-Sam-Seconds"] = f"{answer.seconds_segment:.4f}"
    return response


def label_studio_blueprint(predictor: Predictor, connections: Connections,
                           connection: redis.Redis, on_training: TrainingHook,
                           auth: BasicAuth | None = None, *, sam: InteractiveSam,
                           defaults: ControlDefaults | None = None,
                           monitor: QueueMonitor | None = None,
                           on_long_video: LongVideoHook | None = None) -> Blueprint:
    """The LS endpoints. `connection`: the Redis the webhook events are recorded in;
    `defaults`: the model and threshold of controls whose tags do not name them; `monitor`:
    the training queue's state for /health and the webhook replies; `on_long_video`: queues
    the tracking of clips too long to track inside /predict."""
    defaults = defaults or ControlDefaults()
    bp = Blueprint("label_studio", __name__)

    if auth is not None:
        @bp.before_request
        def _authenticate() -> None:
            auth.check(request)

    @bp.get("/")
    @bp.get("/health")
    def health() -> Any:
        body: dict[str, Any] = {"status": "UP", "model_class": "labelpilot", "v2": True,
                                "models_loaded": predictor.models.loaded(), "sam": sam.health()}
        if monitor is None:
            return body
        status = monitor.status()
        body["training"] = status.as_dict()
        if not status.redis_ok:  # webhooks and model pointers need it: out of rotation
            body["status"] = "DEGRADED"
            return body, 503
        return body  # no worker is a warning: predictions still work, jobs wait

    def _serving(config: str | None, pid: int | None
                 ) -> tuple[ServingPlan, dict[str, SamSetup], str, dict[ControlSpec, ModelChoice]]:
        """What batch /predict serves, the SAM setups, the project's model_version and the
        models picked for it (picked once per request)."""
        setups = sam_setups(config or "")
        plan = _plan(config, defaults)
        if setups:
            plan = batch_plan(plan, setups)
        try:
            choices = predictor.choices(plan, pid)
        except ModelRefRefused as exc:  # a model_path out of MODEL_DIR
            raise ApiError(422, str(exc)) from exc
        parts = {choice.version for choice in choices.values()}
        parts |= {sam.version(s) for s in setups.values()}
        return plan, setups, "+".join(sorted(parts)), choices

    @bp.post("/setup")
    def setup() -> Any:
        req = SetupRequest.model_validate(json_body())
        _, _, version, _ = _serving(req.schema_, req.project_id)
        connections.remember(req.project_id, ProjectConnection(req.hostname, req.access_token,
                                                               req.schema_))
        return {"model_version": version}

    @bp.post("/predict")
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
                answer = sam.answer_click(req.tasks[0], context, setups,
                                      connections.image_source(pid), version)
            except ApiError as exc:  # LS shows the annotator only the status: log the why
                log.warning("interactive click on task %s refused (%d): %s", req.tasks[0].id,
                            exc.status, exc.message)
                raise
            return _click_response(answer)
        if setups:
            sam.prewarm_tasks(req.tasks, setups, connections.image_source(pid))
            if not plan.controls:  # entries without "result" store nothing in LS
                return {"results": [{"model_version": version} for _ in req.tasks]}
        try:
            results = predictor.predict(req.tasks, plan, connections.image_source(pid), pid,
                                        choices, long_video=on_long_video)
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
        queued = [{"task": t.id, "job": r.pop("job")} for t, r in zip(req.tasks, results,
                                                                     strict=True) if "job" in r]
        if queued:  # LS stores nothing for these now: the jobs post the predictions
            body["jobs"] = queued
        return body

    @bp.post("/webhook")
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
            entry = record_training_event(connection, event)
        except redis.RedisError as exc:
            WEBHOOK_EVENTS.labels(event.action, "redis_down").inc()
            raise ApiError(503, f"event not recorded: Redis is unavailable ({exc}); "
                                "Label Studio will not resend it, retrain with 'Start training'"
                           ) from exc
        try:
            queued = on_training(event)
        except (redis.RedisError, LockError) as exc:
            WEBHOOK_EVENTS.labels(event.action, "redis_down").inc()
            raise ApiError(503, f"event recorded but training not queued: {exc}") from exc
        WEBHOOK_EVENTS.labels(event.action, queued.outcome if queued else "recorded").inc()
        notice = worker_notice(monitor, f"project {event.project_id}: training job "
                               f"{queued.job_id} {queued.outcome}") if queued else {}
        return jsonify({"status": "ok", "action": event.action, "project": event.project_id,
                        "event_id": entry, "job": queued.job_id if queued else None,
                        "queue": queued.outcome if queued else "counted", **notice}), 201

    @bp.route("/versions", methods=["GET", "POST"])
    def versions() -> Any:
        body = request.get_json(silent=True)
        body = body if isinstance(body, dict) else {}
        pid = project_id(request.args.get("project") or body.get("project"))
        config = connections.get(pid).label_config
        if not config:
            return {"versions": []}
        return {"versions": [_serving(config, pid)[2]]}

    return bp
