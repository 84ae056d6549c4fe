"""The server, composed in one place: the Label Studio, CVAT and admin blueprints over one model
cache, model store and Redis connection. Each blueprint checks its own credentials."""

from __future__ import annotations

import time

import redis
from flask import Flask, Response, g, request

from labelpilot.adapters.admin import admin_blueprint
from labelpilot.adapters.cvat.config import ConfigError, CvatConfig
from labelpilot.adapters.cvat.facade import cvat_blueprint
from labelpilot.adapters.dashboard import dashboard
from labelpilot.adapters.http_auth import BearerToken, basic_auth
from labelpilot.adapters.http_errors import install_error_handlers
from labelpilot.adapters.http_ports import PortRouting
from labelpilot.adapters.label_studio.blueprint import label_studio_blueprint, warm_config_parser
from labelpilot.adapters.label_studio.connections import Connections
from labelpilot.adapters.label_studio.predictor import Predictor
from labelpilot.adapters.metrics import LATENCY, REQUESTS
from labelpilot.backends.sam import SamModels
from labelpilot.runtime import (
    build_interactive,
    build_predictor,
    build_sam,
    control_defaults,
    model_locator,
    model_store,
    source_policy,
)
from labelpilot.settings import Settings, SettingsError, secret
from labelpilot.trainers.queue_status import QueueMonitor


def cvat_config(settings: Settings) -> CvatConfig:
    """The CVAT facade's configuration; SettingsError when a CVAT value is malformed."""
    try:
        return CvatConfig.parse(
            functions=settings.cvat_functions, task_models=settings.task_models_set(),
            store_keys=settings.cvat_store_keys, sam=settings.cvat_sam or settings.sam_model,
            tracker=settings.cvat_tracker, direct_ports=settings.cvat_direct_ports,
            webhook_secret=secret(settings.cvat_webhook_secret))
    except ConfigError as exc:
        raise SettingsError(f"invalid configuration: {exc}") from None


def port_routing(settings: Settings, cvat: CvatConfig) -> PortRouting:
    """The CVAT facade on LABELPILOT_CVAT_PORT and the direct-mode ports only (also on PORT
    when LABELPILOT_CVAT_PORT is 0); Label Studio and admin endpoints never there."""
    ports = set(range(cvat.direct_ports[0], cvat.direct_ports[1] + 1)) \
        if cvat.direct_ports else set()
    if not settings.cvat_port_shared:
        ports.add(settings.cvat_port)
    return PortRouting("cvat", frozenset(ports), settings.cvat_port_shared, settings.port)


def create_app(settings: Settings, connection: redis.Redis, *,
               predictor: Predictor | None = None, sam: SamModels | None = None) -> Flask:
    """The WSGI app of `labelpilot serve`. `connection`: the Redis for webhooks, jobs, the
    model pointers and the shared SAM embeddings. `predictor`, `sam`: built from the settings
    unless given (tests inject their own)."""
    from labelpilot import jobs

    cvat = cvat_config(settings)
    store = model_store(settings, connection)
    predictor = predictor or build_predictor(settings, store)
    predictor.current.start()
    predictor.preload(settings.models_to_preload(), first=warm_config_parser)
    sam = sam or build_sam(settings, connection)
    interactive = build_interactive(settings, sam)
    interactive.preload()
    auth = basic_auth(settings.basic_auth_user, secret(settings.basic_auth_pass))
    admin_token = secret(settings.admin_token)
    monitor = QueueMonitor(connection)

    app = Flask("labelpilot")
    app.extensions["labelpilot.predictor"] = predictor  # e.g. `predictor.close()` in tests
    app.json.sort_keys = False  # type: ignore[attr-defined]
    install_error_handlers(app)
    _measure_requests(app)
    routing = port_routing(settings, cvat)
    app.before_request(lambda: routing.check(request))  # before each blueprint's own auth
    app.register_blueprint(label_studio_blueprint(
        predictor, Connections(connection, source_policy(settings)), connection,
        jobs.label_studio_hook(connection), auth, sam=interactive,
        defaults=control_defaults(settings), monitor=monitor,
        on_long_video=jobs.video_hook(connection),
        on_propagate=jobs.propagation_hook(connection),
        on_annotation=jobs.acceptance_hook(connection)))
    app.register_blueprint(cvat_blueprint(
        predictor.models, predictor.current, connection, cvat, jobs.cvat_hook(connection),
        locator=model_locator(settings), sam=sam, max_pixels=settings.max_image_pixels,
        monitor=monitor, auth=auth if settings.cvat_port_shared else None))
    app.register_blueprint(admin_blueprint(
        store, connection, BearerToken(admin_token) if admin_token else None, auth,
        monitor=monitor))
    app.register_blueprint(dashboard(store, connection, admin_token, auth))
    return app


def _measure_requests(app: Flask) -> None:
    """Request counts and latency per endpoint, for /metrics."""

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _measure(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unknown"
        REQUESTS.labels(endpoint, request.method, str(response.status_code)).inc()
        LATENCY.labels(endpoint).observe(time.perf_counter() - g.get("started",
                                                                     time.perf_counter()))
        return response
