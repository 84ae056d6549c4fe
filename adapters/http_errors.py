"""JSON error answers shared by the HTTP adapters: always say what to fix."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify, request
from flask.json.provider import DefaultJSONProvider
from pydantic import ValidationError
from werkzeug.exceptions import BadRequest, HTTPException


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None,
                 **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra


def error_response(status: int, message: str, **extra: Any) -> tuple[Response, int]:
    return jsonify({"status": "error", "error": message, **extra}), status


class SafeJSONProvider(DefaultJSONProvider):
    """Flask's JSON, except that a document nested too deeply for Python's parser is invalid
    JSON (a ValueError: 400 from `get_json`, None from `get_json(silent=True)`), not a
    RecursionError (a 500)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError as exc:
            raise ValueError("JSON nested too deeply") from exc


def json_body() -> Any:
    """The request's JSON, or ApiError(400) saying why it is not usable."""
    if not request.data:
        raise ApiError(400, "the request body is empty; send JSON")
    try:
        return request.get_json(force=True)
    except BadRequest as exc:  # outside debug mode Flask hides the parser's reason in __cause__
        reason = getattr(exc.__cause__, "description", None) or exc.description
        raise ApiError(400, f"the request body is not valid JSON: {reason}") from exc
    except RecursionError as exc:  # an app without SafeJSONProvider
        raise ApiError(400, "the request body is not valid JSON: nested too deeply") from exc


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        parts.append(f"{where}: {err.get('msg')}")
    return "invalid request: " + "; ".join(parts)


def install_error_handlers(app: Flask) -> None:
    """JSON answers for every error, and request JSON parsed by `SafeJSONProvider`."""
    provider = SafeJSONProvider(app)
    provider.sort_keys = app.json.sort_keys  # type: ignore[attr-defined]
    app.json = provider

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        response, status = error_response(exc.status, exc.message, **exc.extra)
        response.headers.update(exc.headers)
        return response, status

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError):
        return error_response(400, validation_message(exc))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        return error_response(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")
