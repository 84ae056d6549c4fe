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
from labelpilot.adapters.label_studio.acceptance import AnnotationHook, on_annotation_event
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
from labelpilot.adapters.label_studio.propagation import (
    PropagationRequest,
    already_written,
    propagating_controls,
    result_digest,
)
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
PropagationHook = Callable[[PropagationRequest, str], str]
"""Queue the filling of an annotation's video keyframes (request, result digest) → job id."""


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
                           on_long_video: LongVideoHook | None = None,
                           on_propagate: PropagationHook | None = None,
                           on_annotation: AnnotationHook | None = None) -> Blueprint:
    """The LS endpoints. `connection`: the Redis the webhook events are recorded in;
    `defaults`: the model and threshold of controls whose tags do not name them; `monitor`:
    the training queue's state for /health and the webhook replies; `on_long_video`: queues
    the tracking of clips too long to track inside /predict; `on_propagate`: queues the
    filling of annotators' video keyframes (VideoRectangle with model_propagate="true")."""
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
                                      connections.image_source(pid), version,
                                      bands=predictor.band_mapping(pid))
            except ApiError as exc:  # LS shows the annotator only the status: log the why
                log.warning("interactive click on task %s refused (%d): %s", req.tasks[0].id,
                            exc.status, exc.message)
                raise
            return _click_response(answer)
        if setups:
            sam.prewarm_tasks(req.tasks, setups, connections.image_source(pid),
                              bands=predictor.band_mapping(pid))
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
        filling = _propagation(event)
        accepting = on_annotation_event(connection, event, on_annotation)  # acceptance rate
        return jsonify({"status": "ok", "action": event.action, "project": event.project_id,
                        "event_id": entry, "job": queued.job_id if queued else None,
                        "queue": queued.outcome if queued else "counted", **notice,
                        **({"propagation": filling} if filling else {}),
                        **({"acceptance": accepting} if accepting else {})}), 201

    def _propagation(event: WebhookEvent) -> str | None:
        """Queue the filling of a submitted video annotation's keyframes, when its project
        asks for it and the annotation is not labelpilot's own last write."""
        annotation = event.annotation or {}
        pid, aid = event.project_id, annotation.get("id")
        if (on_propagate is None or pid is None or not isinstance(aid, int)
                or event.action not in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")):
            return None
        try:
            plan = parse_label_config(connections.get(pid).label_config or "", defaults)
        except ConfigError:
            return None
        controls = propagating_controls(plan)
        names = {c.name for c in controls}
        result = annotation.get("result") or []
        if not any(r.get("from_name") in names and r.get("type") == "videorectangle"
                   for r in result if isinstance(r, dict)):
            return None
        digest = result_digest(result, controls)
        if already_written(connection, aid, digest):
            return None
        choice = predictor.choice(controls[0], pid)
        if choice.weights is None:
            return None
        return on_propagate(PropagationRequest(pid, aid, choice.weights), digest)

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
