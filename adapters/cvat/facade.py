"""The nuclio dashboard endpoints CVAT's lambda manager calls, as a Flask blueprint.

- ``GET /api/functions``: ``{name: nuclio function config}``, rebuilt on every call;
- ``GET /api/functions/<name>``: one config;
- ``POST /api/function_invocations`` with header ``x-nuclio-function-name`` (CVAT's
  ``CVAT_NUCLIO_INVOKE_METHOD=dashboard``);
- ``POST /`` on a function's own port (``direct`` mode; see `labelpilot.adapters.cvat.ports`);
- ``POST /cvat/webhook``: CVAT webhooks (see `labelpilot.adapters.cvat.webhook`).

Nuclio's dashboard has no authentication and CVAT sends none, so on its own port
(LABELPILOT_CVAT_PORT, default 8070; `labelpilot.adapters.http_ports` keeps it off the main
port) this blueprint has none of the backend's basic auth: expose that port only to CVAT's
network. When it shares the main port (LABELPILOT_CVAT_PORT=0) it needs the same basic auth as
the Label Studio endpoints (`auth`). The webhook is authenticated by its HMAC signature too.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Blueprint, jsonify, request

from labelpilot.adapters.cvat import config, ports, tracker
from labelpilot.adapters.cvat.acceptance import on_job_completed, remember_detection
from labelpilot.adapters.cvat.catalog import (
    Catalog,
    CvatFunction,
    DetectorFunction,
    InteractorFunction,
    nuclio_config,
)
from labelpilot.adapters.cvat.detector import Roi, detect, nuclio_shapes
from labelpilot.adapters.cvat.interactor import load_interactor, mask_shape, prompt_from
from labelpilot.adapters.cvat.payloads import (
    DetectorRequest,
    InteractorRequest,
    PayloadError,
    TrackerRequest,
)
from labelpilot.adapters.cvat.webhook import TrainingRequest, handle_webhook
from labelpilot.adapters.http_auth import BasicAuth
from labelpilot.adapters.http_errors import ApiError, json_body
from labelpilot.adapters.worker_notice import worker_notice
from labelpilot.backends.errors import BackendError, ModelLoadError, ModelNotFoundError
from labelpilot.backends.hot_swap import CurrentModels
from labelpilot.backends.images import DEFAULT_MAX_PIXELS
from labelpilot.backends.model_cache import ModelCache
from labelpilot.backends.model_ref import ModelLocator
from labelpilot.backends.sam import PromptError, SamModels
from labelpilot.backends.yolo import YoloModel
from labelpilot.trainers.queue_status import QueueMonitor
from labelpilot.trainers.slice_settings import ProjectSlicing

log = logging.getLogger(__name__)


def cvat_blueprint(models: ModelCache[YoloModel], current: CurrentModels,
                   connection: redis.Redis, settings: config.CvatConfig,
                   request_training: TrainingRequest, *, locator: ModelLocator,
                   sam: SamModels, max_pixels: int = DEFAULT_MAX_PIXELS,
                   monitor: QueueMonitor | None = None,
                   auth: BasicAuth | None = None) -> Blueprint:
    """The nuclio endpoints and CVAT's webhook. `connection`: the Redis that hands out
    direct-mode ports; `request_training` queues a training when CVAT says labels are done;
    `locator` resolves configured model files, `sam` serves the interactor; frames over
    `max_pixels` are refused; `monitor`: the training queue's state for the webhook replies;
    `auth`: the basic auth every call needs (when the facade shares the main port)."""
    bp = Blueprint("cvat", __name__)
    catalog = Catalog(models, current, settings, locator)
    project_slicing = ProjectSlicing(connection)  # `labelpilot settings KEY --slice 640`

    if auth is not None:
        @bp.before_request
        def _authenticate() -> None:
            auth.check(request)

    def listing() -> list[CvatFunction]:
        try:
            return catalog.functions()
        except config.ConfigError as exc:
            raise ApiError(500, str(exc)) from exc

    def port(name: str) -> int | None:
        span = settings.direct_ports
        return ports.port_for(connection, name, span) if span else None

    @bp.get("/api/functions")
    def list_functions() -> Any:
        return {f.name: nuclio_config(f, port(f.name)) for f in listing()}

    def find(name: str) -> CvatFunction | None:
        try:
            return catalog.get(name)
        except config.ConfigError as exc:
            raise ApiError(500, str(exc)) from exc

    @bp.get("/api/functions/<name>")
    def get_function(name: str) -> Any:
        function = find(name)
        if function is None:
            raise ApiError(404, f"no function '{name}' (GET /api/functions lists them)")
        return nuclio_config(function, port(name))

    @bp.post("/api/function_invocations")
    def invoke_via_dashboard() -> Any:
        name = request.headers.get("x-nuclio-function-name", "").strip()
        if not name:
            raise ApiError(400, "header x-nuclio-function-name is missing: it names the "
                                "function to invoke")
        return invoke(name)

    @bp.post("/")
    def invoke_directly() -> Any:
        server_port = int(request.environ.get("SERVER_PORT") or 0)
        name = ports.function_on_port(connection, server_port) if settings.direct_ports \
            else None
        if name is None:
            raise ApiError(404, f"port {server_port} belongs to no CVAT function: use POST "
                                "/api/function_invocations with x-nuclio-function-name, or "
                                "the httpPort that GET /api/functions gives")
        return invoke(name)

    def invoke(name: str) -> Any:
        function = find(name)
        if function is None:
            raise ApiError(404, f"no function '{name}' (GET /api/functions lists them)")
        body = json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        try:
            if isinstance(function, DetectorFunction):
                return jsonify(run_detector(function, DetectorRequest.model_validate(body)))
            if isinstance(function, InteractorFunction):
                return run_interactor(function, InteractorRequest.model_validate(body))
            return run_tracker(TrackerRequest.model_validate(body))
        except (PayloadError, tracker.TrackingError, PromptError) as exc:
            raise ApiError(400, str(exc)) from exc
        except (ModelLoadError, ModelNotFoundError) as exc:
            raise ApiError(503, str(exc)) from exc
        except BackendError as exc:
            raise ApiError(422, str(exc)) from exc

    def run_detector(function: DetectorFunction, req: DetectorRequest) -> list[dict[str, Any]]:
        image = req.decoded_image(max_pixels)
        roi = None
        if req.roi is not None:
            try:
                roi = Roi.clipped(req.roi, image.shape[1], image.shape[0])
            except ValueError as exc:
                raise PayloadError(str(exc)) from exc
        slicing = project_slicing.get(function.settings_key) if function.settings_key else None
        shapes = nuclio_shapes(detect(models.get(function.weights), image, req.threshold, roi,
                                      slicing), function.labels)
        if roi is None:  # a whole frame: kept for its acceptance rate when the job completes
            remember_detection(connection, image, function.version, shapes)
        return shapes

    def run_interactor(function: InteractorFunction, req: InteractorRequest) -> dict[str, Any]:
        try:
            prompt = prompt_from(req.pos_points, req.neg_points, req.obj_bbox)
        except ValueError as exc:
            raise PayloadError(str(exc)) from exc
        image = req.decoded_image(max_pixels)
        result = load_interactor(function.ref, sam).segment(image, prompt)
        shape = mask_shape(result)
        return {"shapes": [shape] if shape else []}

    def run_tracker(req: TrackerRequest) -> dict[str, Any]:
        pairs = req.pairs()
        image = req.decoded_image(max_pixels)
        shapes: list[dict[str, Any] | None] = []
        states: list[dict[str, Any]] = []
        for shape_in, state in pairs:
            shape = tracker.TrackedShape(shape_in.type, list(shape_in.points)) \
                if shape_in else None
            if state is None:  # start: this image shows the shape where CVAT put it
                assert shape is not None
                states.append(tracker.init_state(image, shape))
                shapes.append({"type": shape.type, "points": shape.points})
                continue
            found, new_state = tracker.track(image, state, shape, max_pixels=max_pixels)
            states.append(new_state)
            shapes.append({"type": found.type, "points": found.points} if found else None)
        return {"shapes": shapes, "states": states}

    @bp.post("/cvat/webhook")
    def webhook() -> Any:
        secret = settings.webhook_secret
        return handle_webhook(secret, request_training,
                              lambda what: worker_notice(monitor, what),
                              on_job_done=lambda job: on_job_completed(connection, job))

    return bp
